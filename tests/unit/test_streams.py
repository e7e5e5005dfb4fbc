"""arproxy.streams: line ends and EOF as SMTP needs them, and the private hooks of
aiosmtpd and asyncio it relies on (a test fails here if an upgrade removes one)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import ssl
from asyncio import sslproto
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import pytest

from arproxy.pipeline import has_line_over
from arproxy.streams import ClientReader, HalfCloseSSLProtocol, adopt_reader, ends_in_crlf


class Stop(Exception):
    pass


class Owner:
    def __init__(self, *, reject: bool = True) -> None:
        self.reject_bare_newline = reject
        self.reading_over = False
        self.reading_auth_data = False
        self.events: list[tuple[str, bytes]] = []
        self.held: list[bytes] = []

    @property
    def replies_held(self) -> bool:
        return bool(self.held)

    def flush_replies(self) -> None:
        self.events.append(("flush", b"".join(self.held)))
        self.held.clear()

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        self.events.append(("eof", partial))
        raise Stop

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        self.events.append(("bare", line))
        raise Stop


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def reader_with(data: bytes, owner: Owner, *, eof: bool = True, limit: int = 64) -> ClientReader:
    reader = adopt_reader(asyncio.StreamReader(limit=limit), owner)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


@run
async def test_command_lines_ending_in_crlf_pass() -> None:
    owner = Owner()
    reader = reader_with(b"EHLO a.example\r\nQUIT\r\n", owner)
    assert await reader.readuntil() == b"EHLO a.example\r\n"
    assert await reader.readline() == b"QUIT\r\n"  # AUTH continuation lines
    with pytest.raises(Stop):
        await reader.readuntil()
    assert owner.events == [("eof", b"")]


@pytest.mark.parametrize("read", ["readuntil", "readline"])
@run
async def test_bare_lf_is_reported_before_the_line_is_used(read: str) -> None:
    # RFC 5321 section 2.3.8: the injected "X-Injected" line is never read.
    owner = Owner()
    reader = reader_with(b"EHLO evil.example\nX-Injected: yes\r\n", owner)
    with pytest.raises(Stop):
        await getattr(reader, read)()
    assert owner.events == [("bare", b"EHLO evil.example\n")]


@run
async def test_bare_lf_tolerated_with_normalize() -> None:
    owner = Owner(reject=False)
    reader = reader_with(b"EHLO a\nNOOP\r\n", owner)
    assert await reader.readuntil() == b"EHLO a\n"
    assert owner.events == []


@run
async def test_data_lines_are_not_judged_here() -> None:
    # Bare LF inside DATA is the intake's business (limits.bare_newline there).
    owner = Owner()
    reader = reader_with(b"a\nb\r\n", owner)
    assert await reader.readuntil(b"\r\n") == b"a\nb\r\n"
    assert owner.events == []


@run
async def test_unfinished_last_line_at_eof_is_reported() -> None:
    owner = Owner()
    reader = reader_with(b"QUI", owner)
    with pytest.raises(Stop):
        await reader.readuntil()
    assert owner.events == [("eof", b"QUI")]


@run
async def test_eof_in_the_proxy_header_is_reported() -> None:
    owner = Owner()
    reader = reader_with(b"PRO", owner)
    with pytest.raises(Stop):
        await reader.readexactly(5)
    assert owner.events == [("eof", b"PRO")]


@run
async def test_overlong_line_split_between_cr_and_lf_is_not_a_bare_lf() -> None:
    # aiosmtpd's recovery from an over-long command: read(consumed), then the tail.
    owner = Owner()
    reader = reader_with(b"NOOP " + b"x" * 100 + b"\r\nNOOP\r\n", owner, limit=16)
    with pytest.raises(asyncio.LimitOverrunError):
        await reader.readuntil()
    await reader.read(106)  # "NOOP ", 100 octets and the CR: the line is cut before its LF
    assert await reader.readuntil() == b"\n"
    assert await reader.readuntil() == b"NOOP\r\n"
    assert owner.events == []


def test_ends_in_crlf() -> None:
    assert ends_in_crlf(b"a\r\n")
    assert not ends_in_crlf(b"a\n")
    assert ends_in_crlf(b"\n", b"\r")
    assert not ends_in_crlf(b"\n", b"x")


# --- the private hooks of asyncio arproxy.streams overrides (aiosmtpd: test_smtpd.py) ---


def test_asyncio_ssl_hooks_are_still_there() -> None:
    for name in ("_start_shutdown", "_do_read", "_call_eof_received", "eof_received"):
        assert callable(getattr(sslproto.SSLProtocol, name)), name
    assert sslproto.SSLProtocolState.WRAPPED
    transport_close = inspect.getsource(sslproto._SSLProtocolTransport.close)
    assert "self._closed = True" in transport_close
    assert "_start_shutdown()" in transport_close
    read = inspect.getsource(sslproto.SSLProtocol._do_read__copied)
    assert "self._call_eof_received()\n            self._start_shutdown()" in read
    assert issubclass(HalfCloseSSLProtocol, sslproto.SSLProtocol)


def test_line_length_counts_the_text_of_a_line() -> None:
    # RFC 5321 section 4.5.3.1.6: 998 octets, CRLF (and a transparency dot, which
    # aiosmtpd has removed by now) not counted.
    assert not has_line_over(b"x" * 998 + b"\r\n" + b"." + b"x" * 997 + b"\r\n", 998)
    assert has_line_over(b"a\r\n" + b"x" * 999 + b"\r\n", 998)
    # Bare LF ends a line too: in "normalize" mode it becomes CRLF.
    assert not has_line_over((b"x" * 600 + b"\n") * 3, 998)
    assert not has_line_over(b"", 998)


@run
async def test_nothing_is_read_once_the_session_is_closing() -> None:
    # RFC 5321 section 4.1.1.10: after the 221 to QUIT the server reads no more;
    # a bare-LF line pipelined after QUIT is neither refused nor logged.
    owner = Owner()
    reader = reader_with(b"QUIT\r\nNOOP\n", owner)
    assert await reader.readuntil() == b"QUIT\r\n"
    owner.reading_over = True
    with pytest.raises(Stop):
        await reader.readuntil()
    assert owner.events == [("eof", b"")]


def test_abort_accepts_the_error_argument_of_either_asyncio() -> None:
    # 3.11's _SSLProtocolTransport._force_close(exc) calls _abort(exc), its
    # SSLProtocol._abort() takes none; 3.12+ takes exc. Ours takes both.
    calls: list[tuple[Any, ...]] = []

    class Transport:
        def abort(self) -> None:
            calls.append(("abort",))

    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_future()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        protocol = HalfCloseSSLProtocol(loop, asyncio.Protocol(), context, waiter, server_side=True)
        protocol._transport = Transport()  # type: ignore[attr-defined]
        protocol._abort(ConnectionResetError("peer"))
        protocol._transport = Transport()  # type: ignore[attr-defined]
        protocol._abort()
    finally:
        loop.close()
    assert calls == [("abort",), ("abort",)]


@run
async def test_held_replies_go_out_before_waiting_for_the_client() -> None:
    """RFC 2920 section 3.2: replies to a pipelined group may be held while its next
    command is buffered, never while the server waits for input."""
    owner = Owner()
    pipelined = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDA"
    reader = reader_with(pipelined, owner, eof=False)
    assert reader.has_line()
    owner.held.append(b"250 ok\r\n")
    assert await reader.readuntil() == b"MAIL FROM:<a@b.example>\r\n"
    assert owner.events == []  # RCPT is buffered: nothing written yet
    owner.held.append(b"250 ok\r\n")
    assert await reader.readuntil() == b"RCPT TO:<c@d.example>\r\n"
    assert owner.events == []
    assert not reader.has_line()  # "DA": half a line
    owner.held.append(b"250 rcpt ok\r\n")
    read = asyncio.ensure_future(reader.readuntil())
    await asyncio.sleep(0)
    assert owner.events == [("flush", b"250 ok\r\n250 ok\r\n250 rcpt ok\r\n")]
    reader.feed_data(b"TA\r\n")
    assert await read == b"DATA\r\n"


def test_stream_reader_buffer_is_what_has_line_reads() -> None:
    """ClientReader.has_line reads asyncio.StreamReader's private buffer."""
    assert "self._buffer = bytearray()" in inspect.getsource(asyncio.StreamReader.__init__)


@run
async def test_data_pieces_flush_held_replies_and_stop_when_closing() -> None:
    # DATA is read in pieces (arproxy.smtpd): the replies owed go out before waiting
    # for the client (RFC 2920 section 3.2), EOF is b"" for the caller to report, and
    # nothing is acted on once the session is closing.
    owner = Owner()
    reader = reader_with(b"", owner, eof=False)
    owner.held.append(b"354 go ahead\r\n")
    piece = asyncio.ensure_future(reader.read_piece(1024))
    await asyncio.sleep(0)
    assert owner.events == [("flush", b"354 go ahead\r\n")]
    reader.feed_data(b"line\r\n.\r\nQUIT\r\n")
    assert await piece == b"line\r\n.\r\nQUIT\r\n"
    reader.unread(b"QUIT\r\n")
    assert await reader.readuntil() == b"QUIT\r\n"
    reader.feed_eof()
    assert await reader.read_piece(1024) == b""
    closing = reader_with(b"data\r\n", owner)
    owner.reading_over = True
    with pytest.raises(Stop):
        await closing.read_piece(1024)
    assert owner.events[-1] == ("eof", b"")
