"""A minimal LMTP client (RFC 2033): LHLO, MAIL, RCPT, DATA and one reply per recipient.

aiosmtplib has no LMTP, and its reader drops replies that arrive unasked, which is
exactly what LMTP's per-recipient DATA replies are (Dovecot sends each as it
delivers). So the LMTP dialogue is this small line client on asyncio streams.
"""

from __future__ import annotations

import asyncio
import re

from arproxy.replies import Reply

MAX_REPLY_LINE = 2048
MAX_REPLY_LINES = 100
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")


class LmtpProtocolError(Exception):
    """The server said something that is not an LMTP reply (or not in its place)."""


class LmtpArgumentError(ValueError):
    """A command argument (an address) that would break the command line."""


class LmtpClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        # After any failure mid-exchange the next bytes may be the answer to an
        # earlier command: such a connection is never used again.
        self.broken = False

    @classmethod
    async def connect(
        cls, host: str, port: int, *, connect_timeout: float, timeout: float
    ) -> tuple[LmtpClient, Reply]:
        """Connect and read the greeting. Raises OSError, TimeoutError."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_REPLY_LINE), connect_timeout
        )
        client = cls(reader, writer, timeout)
        try:
            greeting = await asyncio.wait_for(client.read_reply(), connect_timeout)
        except BaseException:
            client.close()
            raise
        return client, greeting

    async def read_reply(self) -> Reply:
        """One whole (possibly multi-line) reply. Raises ConnectionError, TimeoutError,
        LmtpProtocolError; after any of them the client is broken and closed."""
        if self.broken:
            raise ConnectionError("connection abandoned after an earlier failure")
        try:
            return await self._read_reply()
        except BaseException:
            self._break()
            raise

    async def _read_reply(self) -> Reply:
        lines: list[bytes] = []
        while len(lines) < MAX_REPLY_LINES:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except ValueError as exc:  # StreamReader's "chunk exceed the limit"
                raise LmtpProtocolError(f"reply line longer than {MAX_REPLY_LINE}") from exc
            if not raw.endswith(b"\n"):
                raise ConnectionError("downstream closed the connection")
            code, separator = raw[:3], raw[3:4]
            if code[:1] not in (b"2", b"3", b"4", b"5") or not code.isdigit():
                raise LmtpProtocolError(f"not a reply line: {raw[:80]!r}")
            if separator not in (b" ", b"-", b"\r", b"\n"):
                raise LmtpProtocolError(f"not a reply line: {raw[:80]!r}")
            lines.append(raw[4:].rstrip(b"\r\n"))
            if separator != b"-":
                text = b"\n".join(lines).decode("utf-8", "replace")
                return Reply.from_downstream(int(code), text)
        raise LmtpProtocolError("reply of more than 100 lines")

    def _break(self) -> None:
        self.broken = True
        self.writer.close()

    async def command(self, verb: str, argument: str = "") -> Reply:
        """Send one command line; ValueError if the argument could break the line."""
        if _UNSENDABLE.search(argument):
            raise LmtpArgumentError("a control character in the command argument")
        if self.broken:
            raise ConnectionError("connection abandoned after an earlier failure")
        line = f"{verb} {argument}" if argument else verb
        try:
            self.writer.write(line.encode("utf-8") + b"\r\n")
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except BaseException:
            self._break()
            raise
        return await self.read_reply()

    async def data(self, message: bytes, recipients: int) -> tuple[Reply, list[Reply]]:
        """DATA: (the reply to the DATA command, and, if it was 354, one reply per
        accepted recipient in RCPT order, RFC 2033 section 4.2)."""
        start = await self.command("DATA")
        if start.code != 354:
            if start.code < 400:
                self._break()
                raise LmtpProtocolError(f"DATA answered {start}")
            return start, []
        body = _LINE_END.sub(b"\r\n", message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            self.writer.write(_LEADING_DOT.sub(b"..", body) + b".\r\n")
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except BaseException:
            self._break()
            raise
        replies = [await self.read_reply() for _ in range(recipients)]
        if any(reply.code < 200 or 300 <= reply.code < 400 for reply in replies):
            self._break()
            raise LmtpProtocolError("a per-recipient reply that is neither 2xx, 4xx nor 5xx")
        return start, replies

    def close(self) -> None:
        self.writer.close()
