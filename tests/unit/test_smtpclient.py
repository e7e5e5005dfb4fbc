"""The downstream SMTP/LMTP client (arproxy.smtpclient): its reply reader against a
scripted peer on loopback, and DATA dot-stuffing against a plain RFC 5321 reference."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import struct

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import example, given
from hypothesis import strategies as st

from arproxy.replies import Reply
from arproxy.smtpclient import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    SmtpArgumentError,
    SmtpClient,
    SmtpProtocolError,
    command_line,
    dot_stuffed,
    parse_extensions,
)

# --- the reply reader -------------------------------------------------------


async def greeted(greeting: bytes, then: bytes = b"") -> tuple[SmtpClient, Reply]:
    """Connect to a peer that sends `greeting`, answers the first command with `then`
    and closes."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        if then:
            await reader.readline()
            writer.write(then)
            await writer.drain()
        await reader.read()  # until our client closes
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await SmtpClient.connect("127.0.0.1", port, connect_timeout=2.0, timeout=2.0)
    finally:
        server.close()


def greeting_of(raw: bytes) -> Reply:
    async def go() -> Reply:
        client, reply = await greeted(raw)
        client.close()
        return reply

    return asyncio.run(go())


def test_multi_line_reply_is_one_reply_with_a_line_each() -> None:
    """RFC 5321 section 4.2.1: `code-text` lines, then `code SP text`; the text as
    Reply.from_downstream takes it (lines "\\n"-joined, enhanced code stripped)."""
    reply = greeting_of(b"220-mx.test 4.0.0 first\r\n220-second\r\n220 last words\r\n")
    assert reply.code == 220
    assert reply.lines == ("mx.test 4.0.0 first", "second", "last words")
    assert greeting_of(b"220\r\n") == Reply.from_downstream(220, "")
    assert greeting_of(b"220 2.0.0 ok\n") == Reply(220, "2.0.0", ("ok",))  # bare LF ends too


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"220 " + b"x" * MAX_REPLY_LINE + b"\r\n", SmtpProtocolError),  # over-long line
        (b"220-x\r\n" * MAX_REPLY_LINES + b"220 x\r\n", SmtpProtocolError),  # too many lines
        (b"hello there\r\n", SmtpProtocolError),  # not a reply line
        (b"120 not a code\r\n", SmtpProtocolError),  # RFC 5321 4.2: 2yz to 5yz only
        (b"22O ok\r\n", SmtpProtocolError),
        (b"220+ok\r\n", SmtpProtocolError),  # neither SP nor "-" after the code
        (b"220-first\r\n250 other code\r\n", SmtpProtocolError),  # RFC 5321 4.2.1
        (b"220-first line\r\n", ConnectionError),  # EOF mid-reply
        (b"220 no line end", ConnectionError),
        (b"", ConnectionError),
    ],
    ids=[
        "long-line",
        "too-many-lines",
        "garbage",
        "1yz",
        "letter-in-code",
        "bad-separator",
        "mixed-codes",
        "eof-mid-reply",
        "eof-mid-line",
        "eof",
    ],
)
def test_what_is_not_a_whole_reply_breaks_the_client(raw: bytes, error: type[Exception]) -> None:
    async def go() -> None:
        server_done = asyncio.Event()

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(raw)
            await writer.drain()
            writer.close()
            server_done.set()

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(error):
            await SmtpClient.connect("127.0.0.1", port, connect_timeout=2.0, timeout=2.0)
        server.close()

    asyncio.run(go())


def test_the_longest_reply_accepted() -> None:
    line = b"x" * (MAX_REPLY_LINE - len(b"220 \r\n"))
    reply = greeting_of(b"220-x\r\n" * (MAX_REPLY_LINES - 1) + b"220 " + line + b"\r\n")
    assert len(reply.lines) == MAX_REPLY_LINES and reply.lines[-1] == line.decode()


def test_a_broken_client_sends_nothing_more() -> None:
    async def go() -> None:
        client, _ = await greeted(b"220 mx.test\r\n", b"garbage\r\n")
        with pytest.raises(SmtpProtocolError):
            await client.command("NOOP")
        assert client.broken and not client.is_connected
        with pytest.raises(ConnectionError):
            await client.command("NOOP")

    asyncio.run(go())


def test_a_421_ends_the_dialogue() -> None:
    """RFC 5321 section 3.8: after 421 the server closes; the client is done with it
    and a pipelined group gets no more replies than up to the 421."""

    async def go() -> None:
        client, _ = await greeted(b"220 mx.test\r\n", b"421 4.3.2 going down\r\n")
        replies = await client.pipeline([b"XFORWARD ADDR=192.0.2.1\r\n", b"MAIL FROM:<>\r\n"])
        assert [reply.code for reply in replies] == [421]
        assert not client.is_connected

    asyncio.run(go())


def test_a_reply_later_than_the_timeout_is_never_read_as_the_next_one() -> None:
    async def go() -> None:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 mx.test\r\n")
            await reader.readline()
            await asyncio.sleep(0.4)
            writer.write(b"250 late\r\n")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await SmtpClient.connect("127.0.0.1", port, connect_timeout=2.0, timeout=0.1)
        with pytest.raises(TimeoutError):
            await client.command("NOOP")
        await asyncio.sleep(0.5)
        with pytest.raises(ConnectionError):
            await client.command("NOOP")
        server.close()

    asyncio.run(go())


# --- command lines and EHLO -------------------------------------------------


@pytest.mark.parametrize("argument", ["TO:<a\r\nRSET@x>", "TO:<a\x00@x>", "TO:<a\x7f@x>"])
def test_control_characters_never_reach_the_wire(argument: str) -> None:
    """RFC 5321 section 4.1.2: no control characters in a path; a CR LF would start
    another command."""
    with pytest.raises(SmtpArgumentError):
        command_line("RCPT", argument)


def test_non_ascii_goes_out_only_in_utf8() -> None:
    """RFC 6531 section 3.3: UTF-8 addresses only in an SMTPUTF8 transaction."""
    assert command_line("RCPT", "TO:<ü@x>", "utf-8") == "RCPT TO:<ü@x>\r\n".encode()
    with pytest.raises(SmtpArgumentError):
        command_line("RCPT", "TO:<ü@x>", "ascii")
    with pytest.raises(SmtpArgumentError):
        command_line("RCPT", "TO:<\udcff@x>", "utf-8")
    assert command_line("DATA") == b"DATA\r\n"


def test_ehlo_extensions_as_the_relay_needs_them() -> None:
    """RFC 5321 section 4.1.1.1: keyword then parameters; keywords are case-insensitive
    (upper-cased here, as extensions.plan_downstream compares them)."""
    lines = [
        "mx.test greets you",
        "pipelining",
        "SIZE 10240000",
        "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
        "8bitmime",
        "SmtpUtf8",
        "AUTH=PLAIN LOGIN",
        "",
    ]
    assert parse_extensions(lines) == {
        "PIPELINING": "",
        "SIZE": "10240000",
        "XFORWARD": "NAME ADDR PROTO HELO SOURCE PORT IDENT",
        "8BITMIME": "",
        "SMTPUTF8": "",
        "AUTH": "PLAIN LOGIN",
    }
    assert parse_extensions(["mx.test"]) == {}


# --- DATA -------------------------------------------------------------------


def unstuffed(data: bytes) -> bytes:
    """A plain RFC 5321 section 4.5.2 receiver: lines up to the line "." alone, each
    starting with "." losing that first dot. Also checks the framing: CRLF only, and
    the "." line only at the very end."""
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"), "bare CR or LF"
    lines = data.split(b"\r\n")
    assert lines[-2:] == [b".", b""], "ends with CRLF . CRLF"
    assert b"." not in lines[:-2], "an end of data before the end"
    return b"".join((line[1:] if line[:1] == b"." else line) + b"\r\n" for line in lines[:-2])


def crlf_lines(pieces: list[bytes]) -> bytes:
    return b"".join(piece.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n" for piece in pieces)


LINE = st.binary(max_size=12) | st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r.", b"\n."])


@given(st.lists(LINE, max_size=20))
@example([b"."])
@example([b".", b"."])
@example([b"", b"."])
def test_stuffed_then_unstuffed_is_the_message(pieces: list[bytes]) -> None:
    message = crlf_lines(pieces)  # as intake hands it on: CRLF line ends only
    assert unstuffed(dot_stuffed(message)) == message


def normalised(message: bytes) -> bytes:
    """What a message with bare CR or LF is sent as: each of them a line end, and a
    last line end added (a different regex from the client's, on purpose)."""
    message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return message if not message or message.endswith(b"\r\n") else message + b"\r\n"


@given(st.lists(st.binary(max_size=6) | st.sampled_from([b"\r", b"\n", b".", b"\r\n"])))
@example([b"\r", b"\n"])  # CR then LF: one line end once joined
@example([b"\n", b".", b"\r"])
def test_bare_line_ends_still_become_crlf(pieces: list[bytes]) -> None:
    """The guard for a message intake did not normalise (RFC 5321 section 2.3.8)."""
    message = b"".join(pieces)
    assert unstuffed(dot_stuffed(message)) == normalised(message)


@given(st.binary(min_size=1) | st.lists(LINE, min_size=1).map(crlf_lines))
def test_the_same_bytes_as_the_general_path_it_replaces(message: bytes) -> None:
    """aiosmtplib's DATA path (normalise line ends, stuff with a regex, ".\\r\\n"):
    the bytes operations give exactly what it gave, on every non-empty message."""
    general = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert dot_stuffed(message) == general


def test_empty_content_is_the_end_of_data_alone() -> None:
    """RFC 5321 section 4.1.1.4: with no mail data the DATA command's CRLF is the
    first of the terminating sequence."""
    assert dot_stuffed(b"") == b".\r\n"
    assert dot_stuffed(b".") == b"..\r\n.\r\n"


# --- a connection the downstream resets -----------------------------------------


def test_a_reset_connection_leaves_no_unretrieved_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A downstream that resets the connection (TCP RST) while we wait for a reply: the
    command fails with ConnectionError, and asyncio's record of the connection's error
    (the future `wait_closed()` reads) is read too, so it is never reported as "Future
    exception was never retrieved" with a traceback (seen at exit after an LMTP peer
    reset the connection on QUIT). asyncio's protocol reads it in its own __del__ only
    when the protocol happens to be collected before its future; the test takes that
    chance away, as a garbage cycle's order at exit does."""
    monkeypatch.delattr(asyncio.StreamReaderProtocol, "__del__")
    reported: list[str] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.readline()
        sock = writer.get_extra_info("socket")
        # SO_LINGER with a zero timeout: the close sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await SmtpClient.connect("127.0.0.1", port, connect_timeout=2.0, timeout=2.0)
        with pytest.raises(ConnectionError):
            await client.command("QUIT")
        client.close()
        del client
        for _ in range(3):
            await asyncio.sleep(0.01)
            gc.collect()
        server.close()
        await server.wait_closed()

    asyncio.run(go())
    gc.collect()
    assert not [m for m in reported if "never retrieved" in m], reported
