"""What asyncio and aiosmtpd do with a client's byte stream that SMTP needs otherwise.

Two faults of one kind live here: a client's end of input (a TCP half-close, or
a TLS close_notify) must end *reading* only, never the replies still owed for
the commands already received (RFC 5321 section 3.8 and 4.1.1.10: a client may
send QUIT and wait for the replies with its own side closed). aiosmtpd cancels
the session on EOF, and asyncio's TLS layer shuts the connection down on the
peer's close: both are overridden here.

And a command line must end in CRLF (RFC 5321 section 2.3.8): a line ending in
a bare LF is where an injected second command would start.

These override private parts of asyncio (3.11 `sslproto.SSLProtocol`) and
aiosmtpd (`SMTP._reader` reads, installed by `arproxy.smtpd`, whose list of aiosmtpd
hooks `tests/unit/test_smtpd.py` checks); `tests/unit/test_streams.py` fails if an
asyncio hook they rely on disappears, and pyproject pins aiosmtpd below 1.5.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from asyncio import sslproto
from typing import Any, NoReturn, Protocol

log = logging.getLogger("arproxy.server")


class LineOwner(Protocol):
    """The session a `ClientReader` reports to."""

    reject_bare_newline: bool

    @property
    def reading_over(self) -> bool:
        """The session is closing: no further line is to be read or acted on."""

    @property
    def reading_auth_data(self) -> bool:
        """The next line answers an AUTH challenge (a credential)."""

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        """The client sent nothing more; `partial` is an unfinished last line."""

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        """A command or AUTH line ended in LF without CR."""

    @property
    def replies_held(self) -> bool:
        """Replies are held back to go out in one write (RFC 2920 pipelining)."""

    def flush_replies(self) -> None:
        """Write the replies held back."""


class ClientReader(asyncio.StreamReader):
    """aiosmtpd's StreamReader with SMTP's view of line ends and of EOF.

    aiosmtpd reads command lines and AUTH continuation lines with `readuntil()`
    (separator LF) and the PROXY header with `readexactly()`; arproxy.smtpd reads
    DATA with `read_piece()` (and `unread()`); all pass here.
    At EOF the owner is told and this read never returns (the session is closed,
    which cancels the read): what the client sent before its EOF has been read
    and answered by then, since commands are read in order.
    """

    owner: LineOwner
    # An over-long line is read in pieces: aiosmtpd catches the LimitOverrunError,
    # discards with read() and reads the tail with readuntil(). Whether that line
    # ended in CRLF may depend on the last octet discarded.
    _overrun: bool = False
    _last_octet: bytes = b""

    def has_line(self) -> bool:
        """Whether a whole line (up to LF) is buffered: a pipelined command that is
        read without waiting (RFC 2920)."""
        return b"\n" in self._buffered()

    def _buffered(self) -> bytearray:
        # StreamReader's buffer (private; the stubs do not list it, test_streams does).
        me: Any = self
        buffer: bytearray = me._buffer
        return buffer

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if self.owner.replies_held and separator not in self._buffered():
            # About to wait for the client: what it is owed goes out first, in one
            # write (RFC 2920 section 3.2: no reply held while waiting for input).
            self.owner.flush_replies()
        try:
            line = await super().readuntil(separator)
        except asyncio.IncompleteReadError as eof:
            await self.owner.on_client_eof(eof.partial)
        except asyncio.LimitOverrunError:
            self._overrun = True
            raise
        tail, self._overrun = self._overrun, False
        if self.owner.reading_over:
            # After 221 (or a reply that closes): what the client pipelined after
            # it is neither read nor logged (RFC 5321 section 4.1.1.10).
            await self.owner.on_client_eof(b"")
        if (
            separator == b"\n"
            and self.owner.reject_bare_newline
            and not ends_in_crlf(line, self._last_octet if tail else b"")
        ):
            await self.owner.on_bare_newline(line)
        return line

    async def readexactly(self, n: int) -> bytes:
        # aiosmtpd reads the PROXY header with it (no reply is owed before it).
        try:
            return await super().readexactly(n)
        except asyncio.IncompleteReadError as eof:
            await self.owner.on_client_eof(eof.partial)

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        if data:
            self._last_octet = data[-1:]
        return data

    async def read_piece(self, n: int) -> bytes:
        """Up to `n` octets: what is buffered, or else the next that arrive; b"" at
        the client's EOF (the caller knows the unfinished line to report). DATA is
        read so, in pieces rather than lines (arproxy.smtpd)."""
        if self.owner.replies_held and not self._buffered():
            # About to wait for the client: what it is owed goes out first (RFC 2920).
            self.owner.flush_replies()
        piece = await super().read(n)
        if piece and self.owner.reading_over:
            # The session is closing (a 421 was sent): nothing more is acted on.
            await self.owner.on_client_eof(b"")
        return piece

    def unread(self, data: bytes) -> None:
        """Put back `data`, the octets last read past the end of DATA: the client's
        next command, read as a line again."""
        if data:
            self._buffered()[:0] = data


def ends_in_crlf(line: bytes, before: bytes = b"") -> bool:
    """Whether `line` (read up to its LF) ends in CRLF; `before` is the octet read
    just before it when the line was read in pieces."""
    return line.endswith(b"\r\n") or (line == b"\n" and before == b"\r")


def adopt_reader(reader: asyncio.StreamReader, owner: LineOwner) -> ClientReader:
    """Make aiosmtpd's own reader (created in its constructor, fed by asyncio's
    StreamReaderProtocol) a `ClientReader`: same object, same buffer, our reads."""
    reader.__class__ = ClientReader
    assert isinstance(reader, ClientReader)
    reader.owner = owner
    return reader


class HalfCloseSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer, except that the peer's close ends reading only.

    Stock asyncio (3.11) starts its own shutdown as soon as the peer sends
    close_notify or half-closes TCP, and drops every later write ("SSL
    connection is closed"): the replies to pipelined commands sent just before
    are lost. Here the peer's EOF is delivered to the application, which answers
    what it has and then closes; only the application's close shuts TLS down.
    TLS 1.3 (RFC 8446 section 6.1) allows writing after the peer's close_notify;
    so does OpenSSL for TLS 1.2.
    """

    # asyncio's typeshed stubs describe the pre-3.11 SSLProtocol: the private
    # members used here are reached through `Any`.

    def _start_shutdown(self) -> None:
        me: Any = self
        app_transport = me._app_transport
        if app_transport is not None and not app_transport.is_closing():
            # Called from the read path on the peer's close_notify, not by the
            # application's close(): wait for the application to close.
            return
        super()._start_shutdown()

    def _abort(self, exc: BaseException | None = None) -> None:
        # asyncio 3.11's _SSLProtocolTransport._force_close calls _abort(exc) on a
        # fatal error while its SSLProtocol._abort takes no argument (a TypeError
        # that drops the connection); 3.12+ takes `exc`. Accept both, call either.
        parent: Any = super()._abort
        if _abort_takes_exc():
            parent(exc)
        else:
            parent()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        me: Any = self
        if me._state != sslproto.SSLProtocolState.WRAPPED:
            super().eof_received()
            return None
        # TCP half-close: deliver what is decrypted and buffered, tell the
        # application, and keep the socket open for its replies.
        me._eof_received = True
        me._do_read()
        me._call_eof_received()
        return True


def _abort_takes_exc() -> bool:
    """Whether this asyncio's SSLProtocol._abort takes the error (3.12+)."""
    return len(inspect.signature(sslproto.SSLProtocol._abort).parameters) > 1


def serve_tls(
    loop: asyncio.AbstractEventLoop,
    app_protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    handshake_timeout: float,
) -> HalfCloseSSLProtocol:
    """The protocol for one implicit-TLS connection: TLS first, then `app_protocol`."""
    waiter: asyncio.Future[None] = loop.create_future()
    # A failed handshake is the client's problem, and asyncio closes the socket
    # itself; observe the outcome so no exception goes unretrieved.
    waiter.add_done_callback(_handshake_done)
    protocol_class: Any = HalfCloseSSLProtocol  # the stubs type the timeout as int
    protocol: HalfCloseSSLProtocol = protocol_class(
        loop,
        app_protocol,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=handshake_timeout,
    )
    return protocol


def adopt_tls_protocol(protocol: sslproto.SSLProtocol) -> None:
    """Give the TLS layer aiosmtpd's STARTTLS built (stock asyncio) our EOF handling;
    the subclass adds no state, so the object is switched in place."""
    protocol.__class__ = HalfCloseSSLProtocol


def _handshake_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled() and (error := waiter.exception()) is not None:
        log.info("TLS handshake failed: %s", error)
