"""The downstream dialogue: one small SMTP (RFC 5321) and LMTP (RFC 2033) client.

One reply reader, one command writer and one DATA writer on asyncio streams, shared
by both protocols: LMTP differs only by LHLO and by one DATA reply per accepted
recipient (RFC 2033 section 4.2), which is why it could never go through aiosmtplib
(its reader drops replies that arrive unasked). SMTP goes through it too because the
relay is arproxy's hot path: under the bench load aiosmtplib cost about 0.5 ms per
message (a regex normalising line ends over a message our intake had already made
CRLF, another for dot-stuffing, e-mail address parsing, a lock and a future per
command); here the message is stuffed with two `bytes` operations, and XFORWARD and
MAIL share one write to a downstream that offers PIPELINING (RFC 2920).

A client is broken, and its connection closed, by anything that leaves the dialogue
out of step (a timeout, a lost connection, a reply that is not one, a 421): the next
bytes might be the answer to an earlier command, so it is never used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence

from arproxy.replies import Reply

MAX_REPLY_LINE = 2048  # octets of one reply line, CRLF included (RFC 5321 4.5.3.1.5: 512)
MAX_REPLY_LINES = 100  # lines of one reply (an EHLO reply has a dozen)
SERVICE_CLOSING = 421  # RFC 5321 section 3.8: the server closes the channel after it

_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
# Control characters would end a command line early or smuggle another command.
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")
_REPLY_CODE_FIRST = frozenset(b"2345")
_SEPARATORS = (b" ", b"-", b"\r", b"\n")


class SmtpProtocolError(Exception):
    """The server said something that is not an SMTP reply (or not in its place)."""


class SmtpArgumentError(ValueError):
    """A command argument (an address) that cannot go on a command line: a control
    character, or a character the transaction's encoding cannot carry."""


def command_line(verb: str, argument: str = "", encoding: str = "utf-8") -> bytes:
    """`verb SP argument CRLF` as bytes. Raises SmtpArgumentError for an argument with
    a control character, or one `encoding` cannot encode (non-ASCII without
    SMTPUTF8, RFC 6531 section 3.3; a lone surrogate)."""
    if not argument:
        return verb.encode("ascii") + b"\r\n"
    if _UNSENDABLE.search(argument):
        raise SmtpArgumentError("a control character in the command argument")
    try:
        return f"{verb} {argument}\r\n".encode(encoding)
    except UnicodeEncodeError as exc:
        raise SmtpArgumentError(f"not encodable as {encoding}") from exc


def dot_stuffed(message: bytes) -> bytes:
    """`message` as DATA content, end of data included (RFC 5321 section 4.5.2).

    Lines end in CRLF (a bare CR or LF becomes CRLF: intake has normalised them
    already, so this is three `count`s, not a regex pass), a line starting with "."
    gets one more, the last line gets its CRLF, then "." CRLF. Empty content is
    "." CRLF alone (RFC 5321 section 4.1.1.4: the DATA command's CRLF is the first
    of the terminating sequence).
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = _LINE_END.sub(b"\r\n", message)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed[:1] == b".":
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def parse_extensions(lines: Sequence[str]) -> dict[str, str]:
    """An EHLO or LHLO reply's service extensions: upper-cased keyword -> its
    parameters as sent (RFC 5321 section 4.1.1.1: the lines after the first are
    `ehlo-keyword *(SP ehlo-param)`), e.g. {"SIZE": "10240000", "PIPELINING": "",
    "XFORWARD": "NAME ADDR PROTO HELO"}. The old `AUTH=` form counts as AUTH."""
    offered: dict[str, str] = {}
    for line in lines[1:]:
        text = line.strip()
        if text[:5].upper() == "AUTH=":
            text = "AUTH " + text[5:]
        keyword, _, parameters = text.partition(" ")
        if keyword:
            offered[keyword.upper()] = parameters.strip()
    return offered


class SmtpClient:
    """One connection to an SMTP or LMTP server.

    Every exchange runs under `timeout` seconds (writing and reading its replies);
    ConnectionError (the server closed), TimeoutError and SmtpProtocolError break the
    client, as does cancellation mid-exchange.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.broken = False
        # The EHLO/LHLO reply's extensions (parse_extensions), once `hello` succeeded.
        self.extensions: dict[str, str] = {}

    @classmethod
    async def connect(
        cls, host: str, port: int, *, connect_timeout: float, timeout: float
    ) -> tuple[SmtpClient, Reply]:
        """Connect and read the greeting, within `connect_timeout` seconds. Raises
        OSError (ConnectionError), TimeoutError, SmtpProtocolError."""
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_LINE)
        client = cls(reader, writer, timeout)
        try:
            async with asyncio.timeout(connect_timeout):
                code, lines = await client._read_reply()
        except BaseException:
            client._break()
            raise
        return client, client._reply(code, lines)

    @property
    def is_connected(self) -> bool:
        """Not broken, and the server has not closed its side (as far as we know yet)."""
        return not self.broken and not self.writer.is_closing() and not self.reader.at_eof()

    async def hello(self, verb: str, name: str) -> Reply:
        """EHLO (SMTP) or LHLO (LMTP); on 250 `extensions` holds what it offered."""
        (code, lines), *_ = await self._exchange(command_line(verb, name), 1)
        if code == 250:
            self.extensions = parse_extensions(lines)
        return self._reply(code, lines)

    async def command(
        self,
        verb: str,
        argument: str = "",
        encoding: str = "utf-8",
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Send one command line and read its reply, within `timeout` seconds (default:
        the client's). Raises SmtpArgumentError (nothing sent), ConnectionError,
        TimeoutError, SmtpProtocolError."""
        line = command_line(verb, argument, encoding)
        (code, lines), *_ = await self._exchange(line, 1, timeout)
        return self._reply(code, lines)

    async def pipeline(self, lines: Sequence[bytes]) -> list[Reply]:
        """Send `lines` (each a whole command line, from `command_line`) in one write
        and read their replies in order (RFC 2920 section 3.1; with one line, plain
        SMTP). Fewer replies than lines only when the dialogue ended after the last
        of them: a 421 (the server closes, RFC 5321 section 3.8), or the server closed
        the connection (the client is then broken); a reply read is never dropped
        because a later one did not come. ConnectionError when not even the first
        reply came. Only for a server that offered PIPELINING when there is more than
        one line."""
        read = await self._exchange(b"".join(lines), len(lines), keep_partial=True)
        return [self._reply(code, text) for code, text in read]

    async def data(self, message: bytes, replies: int = 1) -> tuple[Reply, list[Reply]]:
        """DATA, then (if the server said 354) `message` stuffed in one write, and the
        `replies` replies to its end: 1 for SMTP, one per accepted recipient in RCPT
        order for LMTP (RFC 2033 section 4.2). Returns (DATA's reply, those replies);
        none of the latter when DATA was not answered 354."""
        start = await self.command("DATA")
        if start.code != 354:
            return start, []
        # The whole content in one write: one send, not one per line.
        read = await self._exchange(dot_stuffed(message), replies)
        return start, [self._reply(code, text) for code, text in read]

    def close(self) -> None:
        """Close the connection without a word (QUIT is the caller's)."""
        self._break()

    # --- the one writer and the one reader ---

    async def _exchange(
        self,
        data: bytes,
        replies: int,
        timeout: float | None = None,
        *,
        keep_partial: bool = False,
    ) -> list[tuple[int, list[str]]]:
        """Write `data`, read up to `replies` replies (stopping after a 421), all within
        `timeout` seconds (default: the client's). Any failure breaks the client.
        `keep_partial`: the server closing the connection after at least one reply
        returns the replies read instead of raising ConnectionError."""
        if self.broken:
            raise ConnectionError("connection abandoned after an earlier failure")
        read: list[tuple[int, list[str]]] = []
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                self.writer.write(data)
                await self.writer.drain()
                while len(read) < replies:
                    reply = await self._read_reply()
                    read.append(reply)
                    if reply[0] == SERVICE_CLOSING:
                        self._break()
                        break
        except ConnectionError:
            self._break()
            if keep_partial and read:
                return read
            raise
        except BaseException:
            self._break()
            raise
        return read

    async def _read_reply(self) -> tuple[int, list[str]]:
        """One whole reply: its code and the text of each line (RFC 5321 section 4.2:
        `code "-" text` lines, then `code SP text`, all with the same code). Raises
        ConnectionError at EOF, SmtpProtocolError for anything that is not a reply
        or is longer than MAX_REPLY_LINE octets a line / MAX_REPLY_LINES lines."""
        readline = self.reader.readline
        code = b""
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            try:
                raw = await readline()
            except ValueError as exc:  # StreamReader's "chunk exceed the limit"
                raise SmtpProtocolError(f"reply line longer than {MAX_REPLY_LINE}") from exc
            if not raw.endswith(b"\n"):
                raise ConnectionError("downstream closed the connection")
            head, separator = raw[:3], raw[3:4]
            if (
                separator not in _SEPARATORS
                or raw[0] not in _REPLY_CODE_FIRST
                or not head.isdigit()
                or (code and head != code)
            ):
                raise SmtpProtocolError(f"not a reply line: {raw[:80]!r}")
            code = head
            lines.append(raw[4:].strip(b" \t\r\n").decode("utf-8", "replace"))
            if separator != b"-":
                return int(code), lines
        raise SmtpProtocolError(f"reply of more than {MAX_REPLY_LINES} lines")

    @staticmethod
    def _reply(code: int, lines: list[str]) -> Reply:
        # Reply.from_downstream takes the "\n"-joined text (aiosmtplib's form).
        return Reply.from_downstream(code, "\n".join(lines))

    def _break(self) -> None:
        if self.broken:
            return
        self.broken = True
        self.writer.close()
        _observe_close(self.writer)


# The closing watches still running (a task nobody references may be collected early).
_CLOSING: set[asyncio.Task[None]] = set()


def _observe_close(writer: asyncio.StreamWriter) -> None:
    """Read the error, if any, with which the connection ended (a reset by the
    downstream). asyncio keeps it in a future that only `wait_closed()` reads; left
    unread, it is reported as "Future exception was never retrieved" with a traceback
    when the connection is garbage-collected (at the latest at exit)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop (a test's synchronous clean-up): nothing can be awaited
    task = loop.create_task(_closed(writer))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def _closed(writer: asyncio.StreamWriter) -> None:
    # An OSError here is the downstream's reset: already reported where it mattered.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
