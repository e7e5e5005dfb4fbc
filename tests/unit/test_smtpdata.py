"""DATA read in pieces (arproxy.smtpdata through arproxy.streams.ClientReader and
SMTPAdapter._read_data) gives what a plain line-by-line reading of RFC 5321 section
4.5.2 gives, with aiosmtpd 1.4.6's two refusals (552 too much data, 500 line too long,
told after the end), however the client's octets are cut into pieces."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, NoReturn

from aiosmtpd.smtp import MISSING, SMTP, Envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from arproxy.smtpd import SMTPAdapter
from arproxy.smtpdata import DataScanner, Verdict
from arproxy.streams import ClientReader, adopt_reader

END = b"\r\n.\r\n"


def reference(
    stream: bytes, size_limit: int, line_limit: int
) -> tuple[Verdict, bytes, bytes] | None:
    """(verdict, content, what follows the end) read one CRLF line at a time, as
    aiosmtpd does; None when the stream has no end of data."""
    verdict = Verdict.NOMINAL
    kept: list[bytes] = []
    size = position = 0
    while True:
        crlf = stream.find(b"\r\n", position)
        if crlf < 0:
            return None
        line, position = stream[position : crlf + 2], crlf + 2
        if line == b".\r\n":  # RFC 5321 section 4.5.2: the end of the data
            break
        if verdict is not Verdict.NOMINAL:
            continue
        if len(line) - 2 > line_limit:
            verdict = Verdict.TOO_LONG  # aiosmtpd's reader overruns on the text alone
            continue
        # RFC 1870 section 4: the size counts CRLFs, not the doubled quoting dots.
        size += len(line) - line.startswith(b".")
        if size_limit and size > size_limit:
            verdict = Verdict.TOO_MUCH
        elif len(line) > line_limit:
            verdict = Verdict.TOO_LONG
        else:
            kept.append(line[1:] if line.startswith(b".") else line)  # transparency
    content = b"".join(kept) if verdict is Verdict.NOMINAL else b""
    return verdict, content, stream[position:]


class ClientGone(Exception):
    pass


class Session:
    """The owner of the reader and the `self` of SMTPAdapter._read_data."""

    reject_bare_newline = True
    reading_over = False
    reading_auth_data = False
    replies_held = False

    def __init__(self) -> None:
        self.eof: bytes | None = None

    def flush_replies(self) -> None:
        pass

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        self.eof = partial
        raise ClientGone

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        raise AssertionError("DATA lines are not command lines")


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(stream) + 1) for p in points}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


async def read_through_a_stream_reader(
    pieces: list[bytes], size_limit: int, line_limit: int
) -> tuple[Session, DataScanner, bytes]:
    session = Session()
    owner: Any = session
    reader = adopt_reader(asyncio.StreamReader(limit=line_limit), owner)
    scanner = DataScanner(size_limit=size_limit, line_limit=line_limit)

    async def client() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)  # the server reads what has come so far
        reader.feed_eof()

    sending = asyncio.ensure_future(client())
    with contextlib.suppress(ClientGone):
        await SMTPAdapter._read_data(owner, reader, scanner)
    await sending
    return session, scanner, await reader.read(-1)


_TOKENS = st.sampled_from(
    [
        b"a",
        b"xyz",
        b"x" * 9,
        b".",
        b"..",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\r",
        b" ",
        b".\r\n",
        b"\r\n.a",
        b"\r\n..\r\n",
        b"\r\n.\r",
        b"\r\n.\n",
        END,
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    tokens=st.lists(_TOKENS, max_size=40),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    size_limit=st.integers(min_value=0, max_value=60),
    line_limit=st.integers(min_value=3, max_value=16),
    end=st.sampled_from([b"", END]),
    after=st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\nRCPT"]),
)
def test_pieces_give_what_lines_give(
    tokens: list[bytes],
    points: list[int],
    size_limit: int,
    line_limit: int,
    end: bytes,
    after: bytes,
) -> None:
    stream = b"".join(tokens) + end + after
    expected = reference(stream, size_limit, line_limit)
    pieces = cut(stream, points)
    session, scanner, rest = asyncio.run(
        read_through_a_stream_reader(pieces, size_limit, line_limit)
    )
    if expected is None:
        # No end of data: the client's EOF is reported with its unfinished line.
        assert not scanner.done
        assert session.eof is not None
        unfinished = stream[stream.rfind(b"\r\n") + 2 :] if b"\r\n" in stream else stream
        if len(unfinished) <= line_limit:
            assert session.eof == unfinished
        else:  # a long line is not kept whole
            assert session.eof and unfinished.endswith(session.eof)
        return
    verdict, content, following = expected
    assert session.eof is None
    assert scanner.done
    assert scanner.verdict is verdict
    if verdict is Verdict.NOMINAL:
        assert scanner.content() == content
    assert rest == following  # the next command is still there to read


def test_the_end_split_at_every_point_of_crlf_dot_crlf() -> None:
    stream = b"a\r\n..b\r\nc" + END + b"QUIT\r\n"
    for first in range(1, len(stream)):
        for second in range(first, len(stream)):
            pieces = cut(stream, [first, second])
            _session, scanner, rest = asyncio.run(read_through_a_stream_reader(pieces, 0, 20))
            assert scanner.verdict is Verdict.NOMINAL
            assert scanner.content() == b"a\r\n.b\r\nc\r\n"
            assert rest == b"QUIT\r\n"


def test_rfc_5321_transparency_and_bare_line_ends() -> None:
    # Section 4.5.2: one leading dot removed per line; a line that is "." ends the data.
    # A bare LF or CR ends no line (section 2.3.8): "x\n.\r\n" is one line, not the end.
    stream = b".\r\n"
    assert reference(stream, 0, 100) == (Verdict.NOMINAL, b"", b"")
    scanner = DataScanner(size_limit=0, line_limit=100)
    assert scanner.feed(b"..a\r\nx\n.\r\n...\r\n.\r\nNOOP\r\n") == 18
    assert scanner.done
    assert scanner.content() == b".a\r\nx\n.\r\n..\r\n"


def test_first_line_dot_ends_the_data_at_once() -> None:
    scanner = DataScanner(size_limit=0, line_limit=100)
    assert scanner.feed(b".") == 1
    assert not scanner.done
    assert scanner.feed(b"\r\nQUIT\r\n") == 2
    assert scanner.done and scanner.content() == b""


def test_refusals_in_aiosmtpd_order() -> None:
    # line_length_limit 10: a 9-octet text passes only without its CRLF; it is
    # counted first, so with a 5-octet size limit the verdict is TOO_MUCH.
    scanner = DataScanner(size_limit=5, line_limit=10)
    scanner.feed(b"x" * 9 + END)
    assert scanner.verdict is Verdict.TOO_MUCH
    # An 11-octet text overruns the reader before it is counted: TOO_LONG.
    scanner = DataScanner(size_limit=5, line_limit=10)
    scanner.feed(b"x" * 11 + END)
    assert scanner.verdict is Verdict.TOO_LONG
    # The first refusal in the stream stays.
    scanner = DataScanner(size_limit=5, line_limit=10)
    scanner.feed(b"abcdef\r\n" + b"x" * 20 + END)
    assert scanner.verdict is Verdict.TOO_MUCH


def test_memory_stays_bounded_over_the_limits() -> None:
    scanner = DataScanner(size_limit=1000, line_limit=1001)
    for _ in range(100):
        scanner.feed(b"y" * 70 + b"\r\n" + b"z" * 5000)
        assert len(scanner._kept) <= 1000
        assert len(scanner.unfinished_line) <= 1001 + 5
    scanner.feed(END)
    assert scanner.done and scanner.verdict is Verdict.TOO_LONG


def test_reader_hands_back_what_follows_the_data() -> None:
    async def go() -> tuple[bytes, bytes]:
        owner: Any = Session()
        reader: ClientReader = adopt_reader(asyncio.StreamReader(limit=64), owner)
        reader.feed_data(b"body\r\n.\r\nQUIT\r\n")
        piece = await reader.read_piece(1 << 18)
        reader.unread(piece[9:])
        return piece, await reader.readuntil()

    piece, line = asyncio.run(go())
    assert piece == b"body\r\n.\r\nQUIT\r\n"
    assert line == b"QUIT\r\n"


class OpenTransport:
    def is_closing(self) -> bool:
        return False


class DataOnly(SMTPAdapter):
    """Just enough of an SMTP session to run a DATA command: aiosmtpd's own
    (SMTP.smtp_DATA) or ours, on the same octets."""

    def __init__(self, reader: asyncio.StreamReader, size_limit: int, line_limit: int) -> None:
        # Not SMTP.__init__: no connection, only what smtp_DATA reads.
        self._reader = reader
        self.transport: Any = OpenTransport()
        self.data_size_limit = size_limit
        self.line_length_limit = line_limit
        self._decode_data = False
        self._handle_hooks = {"DATA": None}
        self.envelope = Envelope()
        self.envelope.rcpt_tos.append("b@example.com")
        self._held = []  # replies held back: none (push is replaced)
        self.reading_auth_data = False
        self.replies: list[str] = []
        self.delivered: list[bytes] = []

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        return False

    async def check_auth_needed(self, caller_method: str) -> bool:
        return False

    async def push(self, status: Any) -> None:
        self.replies.append(status)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        envelope = self.envelope
        assert envelope is not None and envelope.content is envelope.original_content
        assert isinstance(envelope.content, bytes)
        self.delivered.append(envelope.content)
        return MISSING

    def _set_post_data_state(self) -> None:
        self.envelope = Envelope()

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        raise AssertionError("complete data only")

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        raise AssertionError("DATA lines are not command lines")


async def run_data(
    ours: bool, pieces: list[bytes], size_limit: int, line_limit: int
) -> tuple[list[str], list[bytes], bytes]:
    reader = asyncio.StreamReader(limit=line_limit)  # as SMTP.__init__ makes it
    session = DataOnly(reader, size_limit, line_limit)
    owner: Any = session
    if ours:
        adopt_reader(reader, owner)
    for piece in pieces[:-1]:
        reader.feed_data(piece)
    command = asyncio.ensure_future(
        SMTPAdapter.smtp_DATA(session, "") if ours else SMTP.smtp_DATA(session, "")
    )
    await asyncio.sleep(0)
    reader.feed_data(pieces[-1])
    reader.feed_eof()
    await command
    return session.replies, session.delivered, await reader.read(-1)


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(_TOKENS, max_size=40),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    size_limit=st.integers(min_value=0, max_value=60),
    line_limit=st.integers(min_value=3, max_value=16),
)
def test_ours_answers_as_aiosmtpd_does(
    tokens: list[bytes], points: list[int], size_limit: int, line_limit: int
) -> None:
    stream = b"".join(tokens) + END + b"QUIT\r\n"
    pieces = cut(stream, points)
    theirs = asyncio.run(run_data(False, pieces, size_limit, line_limit))
    ours = asyncio.run(run_data(True, pieces, size_limit, line_limit))
    assert theirs[0][0] == "354 End data with <CR><LF>.<CR><LF>"
    if size_limit and b"\r\n." in b"\r\n" + stream[: stream.find(END) + 2]:
        # A dot-stuffed line under a size limit: aiosmtpd counts the quoting dot,
        # RFC 1870 does not (test_size_counts_no_quoting_dot); the reference reads
        # the RFC's way.
        expected = reference(stream, size_limit, line_limit)
        assert expected is not None
        verdict, content, following = expected
        assert ours[1] == ([content] if verdict is Verdict.NOMINAL else [])
        assert ours[2] == following
        return
    assert ours == theirs


def test_size_counts_no_quoting_dot() -> None:
    """RFC 1870 section 4: a message's size counts its CRLFs but "not the SMTP DATA
    command's terminating dot or doubled quoting dots"; a message of exactly the
    SIZE offered is accepted whatever its lines start with (aiosmtpd refused it)."""
    message = b".ab\r\n..\r\nc\r\n"  # 12 octets; on the wire "..ab", "...": 14
    wire = b"." + message.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
    for pieces in ([wire], [bytes([octet]) for octet in wire]):
        replies, delivered, rest = asyncio.run(run_data(True, pieces, len(message), 16))
        assert replies[1:] == ["250 OK"] and delivered == [message] and rest == b"QUIT\r\n"
        replies, delivered, _ = asyncio.run(run_data(True, pieces, len(message) - 1, 16))
        assert replies[1:] == ["552 Error: Too much mail data"] and delivered == []
