"""pipeline.Session with an in-memory relay: nothing acknowledged that was not handed on.

The fake relay implements relay.py's `Relay` and `Delivery` protocols and records what
it was asked; checks are fakes (`checks.base.Check`) returning fixed results, so no
socket and no DNS is involved. Every path must close the delivery exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from arproxy import logcontext
from arproxy.authres import ResInfo
from arproxy.checks.base import Check, CheckContext, MethodResult, Stage, Value
from arproxy.config import HostPort, parse_config
from arproxy.dns import Resolver
from arproxy.outcome import ClientFacts, Decider, Outcome
from arproxy.pipeline import Pipeline, Session
from arproxy.relay import Opened
from arproxy.replies import (
    DOWNSTREAM_UNAVAILABLE,
    INVALID_HELO,
    IPREV_REJECTED,
    LINE_TOO_LONG_IN_DATA,
    LOCAL_ERROR,
    NUL_REFUSED,
    RELAY_DENIED,
    SENDER_OK,
    TOO_MANY_RECIPIENTS,
    Reply,
)

CONFIG = """
[domains]
local = ["example.com"]
[policy]
reject_iprev_fail = true
[limits]
max_recipients = 2
"""
MESSAGE = b"From: a@sender.example\r\nSubject: hi\r\n\r\nbody\r\n"
QUEUED = Reply.of(250, "2.0.0", "Ok: queued as FAKE")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Recipient OK")


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class Boom(Exception):
    pass


@dataclass
class FakeRelay:
    """relay.Relay in memory: replies (or exceptions) chosen per command."""

    mail: Reply | Exception = SENDER_OK
    rcpt: Reply | Exception = RECIPIENT_OK
    data: Reply | Exception | None = QUEUED
    deliveries: list[FakeDelivery] = field(default_factory=list)
    data_started: asyncio.Event = field(default_factory=asyncio.Event)

    def prepare(self) -> None:
        pass

    async def shutdown(self, timeout: float) -> None:
        pass

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        reply = _answer(self.mail)
        if not reply.is_success:
            return Opened(None, reply)
        delivery = FakeDelivery(self)
        self.deliveries.append(delivery)
        return Opened(delivery, reply)


@dataclass
class FakeDelivery:
    relay: FakeRelay
    recipients: list[str] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    closed: int = 0

    async def add_recipient(self, recipient: str) -> Reply:
        reply = _answer(self.relay.rcpt)
        if reply.is_success:
            self.recipients.append(recipient)
        return reply

    async def send(self, message: bytes) -> Reply:
        logging.getLogger("arproxy.relay").info("fake downstream got %d octets", len(message))
        self.relay.data_started.set()
        if self.relay.data is None:
            await asyncio.get_running_loop().create_future()  # never answers
        reply = _answer(self.relay.data)  # type: ignore[arg-type]
        self.sent.append(message)
        return reply

    async def close(self) -> None:
        self.closed += 1


def _answer(what: Reply | Exception) -> Reply:
    if isinstance(what, Exception):
        raise what
    return what


@dataclass(frozen=True)
class FakeResult:
    method: str
    value: Value
    reason: str = ""

    def to_resinfo(self) -> ResInfo:
        return ResInfo(self.method, self.value.value)


def fake_check(method: str, stage: Stage, value: Value, reason: str = "") -> Check:
    async def run_check(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        logging.getLogger("arproxy.checks").info("fake %s check ran", method)
        return (FakeResult(method, value, reason),)

    return Check(method, stage, run_check, lambda ctx: (FakeResult(method, Value.TEMPERROR),))


async def make_session(
    relay: FakeRelay, checks: Sequence[Check] = (), config: str = CONFIG
) -> tuple[Pipeline, Session]:
    resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
    pipeline = Pipeline(parse_config(config, "t"), relay=relay, resolver=resolver)
    session = Session(pipeline, ClientFacts(ip="192.0.2.1", port=40000), checks=checks)
    assert await session.helo("client.example.net", esmtp=True) is None
    return pipeline, session


async def settle(pipeline: Pipeline) -> None:
    """Let the background clean-up (delivery.close) run."""
    await pipeline.finish_background(timeout=1.0)


async def open_transaction(session: Session, *recipients: str) -> None:
    assert await session.mail("a@sender.example", []) == SENDER_OK
    for recipient in recipients or ("bob@example.com",):
        await session.rcpt(recipient)


@run
async def test_data_is_acknowledged_only_with_the_downstreams_250() -> None:
    relay = FakeRelay()
    pipeline, session = await make_session(relay)
    seen: list[Outcome] = []
    pipeline.observers.append(seen.append)
    await open_transaction(session)
    outcome = await session.data(MESSAGE)
    await settle(pipeline)
    assert [type(o).__name__ for o in seen] == ["RecipientOutcome", "TransactionOutcome"]
    assert seen[-1] is outcome
    assert outcome.reply == QUEUED  # the downstream's own words
    assert outcome.decided_by is Decider.DOWNSTREAM
    (delivery,) = relay.deliveries
    assert delivery.recipients == ["bob@example.com"]
    (sent,) = delivery.sent
    assert sent.startswith(b"Authentication-Results: ")
    assert b"\r\nReceived: from client.example.net ([192.0.2.1])" in sent
    assert sent.endswith(MESSAGE)
    assert delivery.closed == 1
    assert session.transaction is None


@pytest.mark.parametrize(
    "downstream",
    [
        Reply.of(554, "5.6.0", "Content refused"),
        Reply.of(452, "4.3.1", "Insufficient system storage"),
        DOWNSTREAM_UNAVAILABLE,
    ],
)
@run
async def test_a_refusal_at_data_is_passed_on(downstream: Reply) -> None:
    relay = FakeRelay(data=downstream)
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    outcome = await session.data(MESSAGE)
    await settle(pipeline)
    assert outcome.reply == downstream
    assert relay.deliveries[0].closed == 1


@run
async def test_an_exception_at_data_becomes_451_and_closes_once() -> None:
    relay = FakeRelay(data=Boom("bug"))
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    outcome = await session.data(MESSAGE)
    await settle(pipeline)
    assert outcome.reply == LOCAL_ERROR  # 451 4.3.0: the client keeps the message
    assert outcome.decided_by is Decider.LOCAL
    assert relay.deliveries[0].closed == 1
    assert session.transaction is None


@run
async def test_downstream_refusing_the_sender_is_passed_on_at_rcpt() -> None:
    refusal = Reply.of(550, "5.7.1", "Sender blocked")
    relay = FakeRelay(mail=refusal)
    _, session = await make_session(relay)
    assert await session.mail("a@sender.example", []) == SENDER_OK
    outcome = await session.rcpt("bob@example.com")
    assert outcome.reply == refusal
    assert (outcome.decided_by, outcome.step) == (Decider.DOWNSTREAM, "sender")
    assert relay.deliveries == []


@pytest.mark.parametrize(
    "downstream", [Reply.of(550, "5.1.1", "No such user"), Reply.of(451, "4.4.1", "Try later")]
)
@run
async def test_downstream_refusing_a_recipient_is_passed_on(downstream: Reply) -> None:
    relay = FakeRelay(rcpt=downstream)
    _, session = await make_session(relay)
    assert await session.mail("a@sender.example", []) == SENDER_OK
    outcome = await session.rcpt("bob@example.com")
    assert outcome.reply == downstream
    assert session.transaction is not None and session.transaction.recipients == []
    await session.reset()
    assert relay.deliveries[0].closed == 1


@run
async def test_an_exception_at_rcpt_becomes_451_and_the_delivery_still_closes_once() -> None:
    relay = FakeRelay(rcpt=Boom("bug"))
    pipeline, session = await make_session(relay)
    assert await session.mail("a@sender.example", []) == SENDER_OK
    outcome = await session.rcpt("bob@example.com")
    assert (outcome.reply, outcome.decided_by) == (LOCAL_ERROR, Decider.LOCAL)
    session.close()
    await settle(pipeline)
    assert relay.deliveries[0].closed == 1


@run
async def test_relay_control_and_recipient_limit_are_decided_before_the_downstream() -> None:
    relay = FakeRelay()
    _, session = await make_session(relay)
    assert await session.mail("a@sender.example", []) == SENDER_OK
    denied = await session.rcpt("x@elsewhere.example")
    assert (denied.reply, denied.decided_by) == (RELAY_DENIED, Decider.POLICY)
    assert relay.deliveries == []  # never opened for a refused recipient
    await session.rcpt("a@example.com")
    await session.rcpt("b@example.com")
    over = await session.rcpt("c@example.com")  # limits.max_recipients = 2
    assert (over.reply, over.decided_by) == (TOO_MANY_RECIPIENTS, Decider.POLICY)
    assert relay.deliveries[0].recipients == ["a@example.com", "b@example.com"]


@run
async def test_intake_refusal_never_reaches_the_downstream() -> None:
    relay = FakeRelay()
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    outcome = await session.data(b"Subject: x\r\n\r\nNUL \x00 here\r\n")
    await settle(pipeline)
    assert (outcome.reply, outcome.decided_by) == (NUL_REFUSED, Decider.INTAKE)
    assert relay.deliveries[0].sent == []
    assert relay.deliveries[0].closed == 1


@run
async def test_line_over_the_limit_is_refused_at_intake() -> None:
    relay = FakeRelay()
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    outcome = await session.data(b"Subject: x\r\n\r\n" + b"x" * 999 + b"\r\n")
    await settle(pipeline)
    assert (outcome.reply, outcome.decided_by) == (LINE_TOO_LONG_IN_DATA, Decider.INTAKE)
    assert relay.deliveries[0].sent == []
    assert relay.deliveries[0].closed == 1


@run
async def test_policy_refusal_never_reaches_the_downstream() -> None:
    relay = FakeRelay()
    iprev = fake_check("iprev", Stage.CONNECT, Value.FAIL, "no PTR for 192.0.2.1")
    pipeline, session = await make_session(relay, [iprev])
    await open_transaction(session)
    outcome = await session.data(MESSAGE)
    await settle(pipeline)
    assert (outcome.reply, outcome.decided_by) == (IPREV_REJECTED, Decider.POLICY)
    assert outcome.reason == "iprev=fail"
    assert [(r.method, r.value) for r in outcome.results] == [("iprev", Value.FAIL)]
    assert relay.deliveries[0].sent == []
    assert relay.deliveries[0].closed == 1


@pytest.mark.parametrize("event", ["close", "reset", "mail", "helo", "starttls"])
@run
async def test_every_way_out_of_a_transaction_closes_the_delivery_once(event: str) -> None:
    relay = FakeRelay()
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    first = session.transaction
    assert first is not None
    if event == "close":
        session.close()
    elif event == "reset":
        await session.reset()
    elif event == "mail":
        assert await session.mail("other@sender.example", []) == SENDER_OK
        assert session.transaction is not None
        assert session.transaction.queue_id != first.queue_id
    elif event == "helo":
        assert await session.helo("again.example.net", esmtp=True) is None
    else:
        session.starttls()
        assert session.facts == ClientFacts(ip="192.0.2.1", port=40000, tls=True)
    await session.reset()  # a second ending changes nothing
    session.close()
    await settle(pipeline)
    assert relay.deliveries[0].closed == 1
    assert relay.deliveries[0].sent == []
    if event != "mail":
        assert session.transaction is None


@run
async def test_client_gone_mid_delivery_closes_once_and_acknowledges_nothing() -> None:
    relay = FakeRelay(data=None)  # the downstream never answers DATA
    pipeline, session = await make_session(relay)
    await open_transaction(session)
    data = asyncio.ensure_future(session.data(MESSAGE))
    await relay.data_started.wait()
    data.cancel()  # aiosmtpd cancels the session task when the connection is lost
    with pytest.raises(asyncio.CancelledError):
        await data
    session.close()
    await settle(pipeline)
    assert relay.deliveries[0].closed == 1
    assert session.transaction is None


@run
async def test_invalid_helo_is_refused_and_changes_no_fact() -> None:
    _, session = await make_session(FakeRelay())
    assert await session.helo("bad name", esmtp=False) == INVALID_HELO
    assert session.facts.helo == "client.example.net"


@run
async def test_client_facts_and_the_check_context_stay_in_step() -> None:
    _, session = await make_session(FakeRelay())

    def in_step() -> bool:
        ctx, facts = session.checks.ctx, session.facts
        return (ctx.client_ip, ctx.helo, ctx.auth_identity, ctx.auth_failed_identity) == (
            facts.ip,
            facts.helo,
            facts.auth_identity,
            facts.auth_failed_identity,
        )

    assert in_step()
    session.auth_failed("mallory")
    assert in_step() and session.facts.auth_failed_identity == "mallory"
    session.authenticated("alice")
    assert in_step() and session.facts.auth_identity == "alice"
    session.starttls()
    assert in_step() and session.facts.helo is None
    assert await session.helo("after.example.net", esmtp=True) is None
    assert in_step()


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@run
async def test_check_and_relay_lines_carry_the_queue_id() -> None:
    capture = Capture()
    logcontext.install([capture])
    logger = logging.getLogger("arproxy")
    logger.addHandler(capture)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        relay = FakeRelay()
        dkim = fake_check("dkim", Stage.DATA, Value.PASS)
        pipeline, session = await make_session(relay, [dkim])
        await open_transaction(session)
        assert session.transaction is not None
        queue_id = session.transaction.queue_id
        await session.data(MESSAGE)
        await settle(pipeline)
        assert await session.helo("next.example.net", esmtp=True) is None
        logging.getLogger("arproxy.server").info("after the transaction")
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    relay_line = next(line for line in capture.lines if "fake downstream got" in line)
    check_line = next(line for line in capture.lines if "fake dkim check ran" in line)
    assert relay_line.startswith(f"arproxy.relay: id={queue_id} ")
    assert check_line.startswith(f"arproxy.checks: id={queue_id} ")
    summary = next(line for line in capture.lines if " relayed: " in line)
    assert summary.count(f"id={queue_id}") == 1  # not written twice
    assert capture.lines[-1] == "arproxy.server: after the transaction"
