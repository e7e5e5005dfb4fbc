"""One reader, one answer: every part that reads the header sees the same fields.

Intake (its field count), the rewrite (the Authentication-Results fields it examines), the
trusted-results reader, DMARC's From reader and the fields DKIM hands dkimpy, on each of the
inputs on which they used to disagree, and on random header blocks. The expected fields come
from RFC 5322 (section 2.1: the header ends at the first empty line; 2.2.3: a line starting
with WSP continues a field; 4.5: ``Name :`` is a field) read with CRLF, bare LF and bare CR
as line ends (arproxy.header's one documented reading).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy import header as header_module
from arproxy.checks.arc.verify import CHECK as ARC_CHECK
from arproxy.checks.arc.verify import check as arc_check
from arproxy.checks.base import CheckContext, Value
from arproxy.checks.dkim import dkimpy_message
from arproxy.checks.dkim.dkimpy import Verifier
from arproxy.checks.dkim.verify import CHECK as DKIM_CHECK
from arproxy.checks.dkim.verify import check as dkim_check
from arproxy.checks.dmarc import AuthorError, author_domains
from arproxy.checks.dmarc.evaluate import CHECK as DMARC_CHECK
from arproxy.client import trusted_results
from arproxy.config import HostPort, parse_config
from arproxy.dns import Resolver
from arproxy.header import Header, Message, header_of, read_header
from arproxy.intake import (
    LEADING_CONTINUATION_REFUSED,
    TOO_MANY_FIELDS,
    IntakeLimits,
    take_in,
)
from arproxy.outcome import ClientFacts
from arproxy.pipeline import Pipeline, Session
from arproxy.relay import Opened
from arproxy.replies import Reply
from arproxy.rewrite import ForgeryPolicy, rewrite_header

OURS = "mx.example.com"
AR = f"Authentication-Results: {OURS}; dkim=pass header.d=good.test\r\n".encode()
POLICY = ForgeryPolicy(own_ids=(OURS,))
PREPEND = [b"Received: by mx.example.com; Tue, 1 Oct 2024 10:00:00 +0000\r\n"]


def intake_count(message: bytes) -> int | None:
    """The field count intake applies its limit to, found by moving the limit; None if
    intake refuses the message for its leading continuation line."""
    for limit in range(200):
        limits = IntakeLimits("normalize", "accept", 1 << 20, limit)
        refusal = take_in(message, limits).refusal
        if refusal == LEADING_CONTINUATION_REFUSED:
            return None
        if refusal != TOO_MANY_FIELDS:
            return limit
    raise AssertionError("more than 200 fields")


def from_count(message: bytes) -> int:
    """How many From fields DMARC's author reader found."""
    try:
        author_domains(message)
    except AuthorError as exc:
        if "no From field" in str(exc):
            return 0
        if str(exc).endswith(" From fields"):
            return int(str(exc).split()[0])
    return 1  # one From field, usable or not


def dkim_names(message: bytes) -> list[bytes]:
    fields, _ = dkimpy_message(message, read_header(message))
    return [bytes(name).rstrip(b" \t") for name, _ in fields]


# (message, the RFC 5322 field names, the From fields, the Authentication-Results fields)
CASES = {
    "white space before the colon": (
        b"Subject : hello\r\nFrom : a@good.test\r\n" + AR + b"\r\nbody\r\n",
        [b"Subject", b"From", b"Authentication-Results"],
    ),
    "header starting with white space": (
        b" (authenticated sender)\r\nFrom: a@good.test\r\n" + AR + b"\r\nbody\r\n",
        [b"From", b"Authentication-Results"],
    ),
    "empty first line": (
        b"\r\n" + b"X-A: 1\r\n" * 20 + b"From: a@good.test\r\n" + AR + b"\r\nbody\r\n",
        [],
    ),
    "bare CR between two fields": (
        b"Subject: x\rFrom: a@evil.test\r\nFrom: b@good.test\r\n" + AR + b"\r\nbody\r\n",
        [b"Subject", b"From", b"From", b"Authentication-Results"],
    ),
    "bare LF message": (
        b"From: a@good.test\n" + AR.replace(b"\r\n", b"\n") + b"\nbody\n",
        [b"From", b"Authentication-Results"],
    ),
    "stray line in the middle": (
        b"From: a@good.test\r\nnot a field\r\n" + AR + b"\r\nbody\r\n",
        [b"From", b"Authentication-Results"],
    ),
    "bare LF then CR: an empty line": (
        b"From: a@good.test\n\r" + AR + b"\r\nbody\r\n",
        [b"From"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_part_reads_the_same_fields(case: str) -> None:
    message, expected = CASES[case]
    header = read_header(message)
    assert [field.name for field in header.fields] == expected
    assert intake_count(message) == _expected_intake_count(header)
    assert dkim_names(message) == expected
    assert from_count(message) == expected.count(b"From")
    ar_count = expected.count(b"Authentication-Results")
    assert len(trusted_results(message, OURS)) == ar_count
    outcome = rewrite_header(message, PREPEND, POLICY)
    assert len(outcome.removed) == ar_count


def test_the_empty_first_line_message_is_one_answer() -> None:
    """The issue's example: intake used to refuse "too many fields" (it looked past the
    empty line) while the rewrite and DMARC saw an empty header. RFC 5322 section 2.1: the
    header is empty and the rest is body, so intake accepts it, DMARC finds no From field
    and the fields we prepend are the whole header."""
    message = b"\r\n" + b"X-A: 1\r\n" * 20 + b"\r\nbody\r\n"
    limits = IntakeLimits("reject", "reject", 4096, 10)
    assert take_in(message, limits).refusal is None
    with pytest.raises(AuthorError, match="no From field"):
        author_domains(message)
    rewritten = rewrite_header(message, PREPEND, POLICY).message
    assert rewritten == PREPEND[0] + message
    assert [f.raw for f in read_header(rewritten).fields] == PREPEND


def test_a_bare_cr_does_not_hide_a_from_field() -> None:
    """The issue's example, as `arproxy check` and `arproxy results` read it (no intake):
    every part sees two From fields (RFC 7489 section 6.6.1: outside DMARC's scope)."""
    message = b"Subject: x\rFrom: a@evil.test\r\nFrom: b@good.test\r\n\r\nbody\r\n"
    with pytest.raises(AuthorError, match="2 From fields"):
        author_domains(message)
    assert dkim_names(message) == [b"Subject", b"From", b"From"]


def _expected_intake_count(header: Header) -> int | None:
    """Every field and stray line counts; a leading continuation is refused first."""
    if any(stray.kind == "leading-continuation" for stray in header.strays):
        return None
    return len(header.items)


_LINE = st.sampled_from(
    [
        b"From: a@good.test",
        b"From : b@good.test",
        b"Subject : hi",
        AR.rstrip(b"\r\n"),
        b"Authentication-Results : " + OURS.encode() + b"; none",
        b" folded",
        b"\tfolded " + OURS.encode(),
        b"not a field",
        b"",
        b"X: a\rFrom: c@evil.test",
    ]
)
_END = st.sampled_from([b"\r\n", b"\n", b"\r"])


@given(st.lists(st.tuples(_LINE, _END), max_size=10))
def test_random_headers_are_read_alike_by_every_part(lines: list[tuple[bytes, bytes]]) -> None:
    message = b"".join(line + end for line, end in lines) + b"\r\nbody\r\n"
    header = read_header(message)
    names = [field.name for field in header.fields]
    assert dkim_names(message) == names
    assert intake_count(message) == _expected_intake_count(header)
    assert from_count(message) == names.count(b"From")
    removed = rewrite_header(message, PREPEND, POLICY).removed
    assert len(removed) == names.count(b"Authentication-Results")


# --- One reading per message: intake's, handed to every consumer -----------------------------

SIGNED_LOOKING = (
    b"From: Alice <alice@good.test>\r\n"
    b"Subject : hello\r\n" + AR + b"To: bob@example.com\r\n\r\nbody\r\n"
)


def _readers_replaced(monkeypatch: pytest.MonkeyPatch, replacement: object) -> None:
    """Every module's ``read_header`` (the function itself and each name imported from it)."""
    original = header_module.read_header
    for module in list(sys.modules.values()):
        if getattr(module, "read_header", None) is original:
            monkeypatch.setattr(module, "read_header", replacement)


def _no_second_read(message: bytes) -> Header:
    raise AssertionError("the header was read again")


def test_every_consumer_gets_intakes_one_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9: intake reads the header once; the rewrite, DKIM, DMARC and ARC use that
    reading (arproxy.header.Message), none reads the header again."""
    message = take_in(SIGNED_LOOKING, IntakeLimits("reject", "accept", 4096, 50)).message
    assert isinstance(message, Message)
    assert message.header == read_header(SIGNED_LOOKING)
    _readers_replaced(monkeypatch, _no_second_read)
    ctx = CheckContext(client_ip="192.0.2.1", message=message)
    assert ctx.header is message.header
    assert header_of(message) is message.header
    assert len(rewrite_header(message, PREPEND, POLICY).removed) == 1
    assert author_domains(message) == ("good.test",)
    fields, body = dkimpy_message(message, message.header)
    assert [bytes(name) for name, _ in fields] == [
        b"From",
        b"Subject ",
        b"Authentication-Results",
        b"To",
    ]
    assert body == b"body\r\n"
    assert Verifier(message).signatures() == []
    dkim_value, arc_value = asyncio.run(_dkim_and_arc(ctx))
    assert dkim_value is Value.NONE  # no DKIM-Signature field: no DNS either
    assert arc_value is Value.NONE


async def _dkim_and_arc(ctx: CheckContext) -> tuple[Value, Value]:
    resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
    (dkim_result,) = await dkim_check(ctx, resolver)
    (arc_result,) = await arc_check(ctx, resolver)
    return dkim_result.value, arc_result.value


def _header_reads_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every reader of the header replaced by one that records the message's length."""
    calls: list[int] = []
    original = header_module.read_header

    def counting(message: bytes) -> Header:
        calls.append(len(message))
        return original(message)

    _readers_replaced(monkeypatch, counting)
    return calls


def test_the_smtp_path_reads_the_header_once_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through pipeline.Session with the real DKIM, ARC and DMARC checks (no DNS answers:
    DMARC ends temperror, which changes nothing here): one read_header call per message."""
    calls = _header_reads_counted(monkeypatch)
    sent = asyncio.run(_one_message_through_a_session())
    assert calls == [len(SIGNED_LOOKING)]
    assert sent.endswith(SIGNED_LOOKING.replace(AR, b""))  # the forged field went


def test_arproxy_check_reads_the_header_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`arproxy check` (offline.py) starts from a file, through Session.evaluate: it reads
    the header once there, and the checks share that reading as in the SMTP path."""
    calls = _header_reads_counted(monkeypatch)
    methods = asyncio.run(_evaluate_offline())
    assert calls == [len(SIGNED_LOOKING)]
    assert sorted(methods) == ["arc", "dkim", "dmarc"]


async def _evaluate_offline() -> list[str]:
    config = parse_config('[domains]\nlocal = ["example.com"]\n', "t")
    resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
    pipeline = Pipeline(config, relay=MemoryRelay(), resolver=resolver)
    checks = (DKIM_CHECK, ARC_CHECK, DMARC_CHECK)
    session = Session(pipeline, ClientFacts(ip="0.0.0.0"), checks=checks)
    try:
        results = await session.evaluate(SIGNED_LOOKING, sender="alice@good.test")
    finally:
        session.close()
        await pipeline.resources.close()
    return [result.method for result in results]


async def _one_message_through_a_session() -> bytes:
    config = parse_config(
        '[server]\nauthserv_id = "mx.example.com"\n[domains]\nlocal = ["example.com"]\n', "t"
    )
    relay = MemoryRelay()
    resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
    pipeline = Pipeline(config, relay=relay, resolver=resolver)
    checks = (DKIM_CHECK, ARC_CHECK, DMARC_CHECK)
    session = Session(pipeline, ClientFacts(ip="192.0.2.1", port=40000), checks=checks)
    try:
        assert await session.helo("client.example.net", esmtp=True) is None
        await session.mail("alice@good.test", [])
        await session.rcpt("bob@example.com")
        outcome = await session.data(SIGNED_LOOKING)
        assert outcome.reply.is_success, outcome
    finally:
        session.close()
        await pipeline.finish_background(timeout=1.0)
        await pipeline.resources.close()
    (sent,) = relay.sent
    return sent


class MemoryRelay:
    """relay.Relay and relay.Delivery in memory: accepts everything, keeps what it got."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def prepare(self) -> None:
        pass

    async def shutdown(self, timeout: float) -> None:
        pass

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        return Opened(self, Reply.of(250, "2.1.0", "Ok"))

    async def add_recipient(self, recipient: str) -> Reply:
        return Reply.of(250, "2.1.5", "Ok")

    async def send(self, message: bytes) -> Reply:
        self.sent.append(message)
        return Reply.of(250, "2.0.0", "Ok: queued")

    async def close(self) -> None:
        pass
