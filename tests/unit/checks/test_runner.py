"""The runner's scheduling, with in-memory checks (pure logic: no DNS needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from arproxy.authres import ResInfo
from arproxy.checks import spf
from arproxy.checks.base import Check, CheckContext, MethodResult, Stage, Value
from arproxy.checks.runner import SessionChecks, ordered
from arproxy.config import HostPort
from arproxy.dns import Resolver


@dataclass(frozen=True)
class Fake:
    method: str
    value: Value
    seen: str = ""

    def to_resinfo(self) -> ResInfo:
        return ResInfo(self.method, self.value.value)


def fake_check(method: str, stage: Stage, delay: float, events: list[str]) -> Check:
    """A check that waits `delay` seconds; `events` gets "<method> started" and, if it
    ran to its end, "<method> done"."""

    async def run(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        events.append(f"{method} started")
        await asyncio.sleep(delay)
        events.append(f"{method} done")
        prior = ",".join(r.method for r in ctx.prior)
        return (Fake(method, Value.PASS, seen=prior),)

    def on_timeout(ctx: CheckContext) -> tuple[MethodResult, ...]:
        return (Fake(method, Value.TEMPERROR),)

    return Check(method, stage, run, on_timeout)


def run_session(
    checks: list[Check], budget: float, events: list[str] | None = None
) -> tuple[MethodResult, ...]:
    """One session's checks; `events` gets "collect" when the end of DATA asks for them.
    The client's pause before EHLO (0.6 s) is a timer of the same loop as the checks'
    sleeps: a check's shorter sleep started before it ends first, however loaded the
    machine (the loop fires timers in deadline order)."""

    async def go() -> tuple[MethodResult, ...]:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        session = SessionChecks(resolver, checks, "192.0.2.1")
        session.on_connect()
        await asyncio.sleep(0.6)  # the client takes its time before EHLO
        session.on_helo("mail.example.org")
        session.on_mail("a@example.org")
        if events is not None:
            events.append("collect")
        results = await session.collect(b"Subject: x\r\n\r\n", budget)
        session.close()
        await resolver.close()
        return results

    return asyncio.run(go())


def test_checks_start_at_their_stage_and_data_waits_only_for_what_is_left() -> None:
    events: list[str] = []
    checks = [
        fake_check("iprev", Stage.CONNECT, 0.5, events),
        fake_check("dkim", Stage.DATA, 0.05, events),
        fake_check("dmarc", Stage.AFTER_CHECKS, 0.0, events),
    ]
    results = run_session(checks, budget=5.0, events=events)
    # iprev (0.5 s) ran during the client's pause: DATA waited for DKIM only, and
    # DMARC started once the others were done.
    assert events == [
        "iprev started",
        "iprev done",
        "collect",
        "dkim started",
        "dkim done",
        "dmarc started",
        "dmarc done",
    ]
    assert [(r.method, r.value) for r in results] == [
        ("iprev", Value.PASS),
        ("dkim", Value.PASS),
        ("dmarc", Value.PASS),
    ]
    dmarc = results[-1]
    assert isinstance(dmarc, Fake) and dmarc.seen == "iprev,dkim", "DMARC sees the others"


def test_a_check_still_running_at_the_budget_is_temperror() -> None:
    events: list[str] = []
    checks = [
        fake_check("iprev", Stage.CONNECT, 0.0, events),
        fake_check("dkim", Stage.DATA, 10.0, events),
        fake_check("dmarc", Stage.AFTER_CHECKS, 10.0, events),
    ]
    results = run_session(checks, budget=0.3)
    assert [(r.method, r.value) for r in results] == [
        ("iprev", Value.PASS),
        ("dkim", Value.TEMPERROR),
        ("dmarc", Value.TEMPERROR),
    ]
    # Ended by the budget, not by waiting the checks out (10 s, then PASS).
    assert "dkim done" not in events


def test_a_crashing_check_is_reported_as_its_timeout_result() -> None:
    async def boom(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        raise RuntimeError("bug")

    check = Check("dkim", Stage.DATA, boom, lambda ctx: (Fake("dkim", Value.TEMPERROR),))
    results = run_session([check], budget=1.0)
    assert [(r.method, r.value) for r in results] == [("dkim", Value.TEMPERROR)]


# --- merge hooks: a method's rule, declared by its check, applied by the runner ----------


def test_runner_applies_the_merge_a_check_declares() -> None:
    a, b, other = Fake("x", Value.PASS), Fake("x", Value.FAIL), Fake("auth", Value.PASS)

    async def never(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        return ()

    def last_only(results: Sequence[MethodResult]) -> tuple[MethodResult, ...]:
        return tuple(results[-1:])

    plain = Check("x", Stage.DATA, never, lambda ctx: ())
    merging = Check("x", Stage.DATA, never, lambda ctx: (), merge=last_only)
    assert ordered([a, other, b], [plain]) == (other, a, b)  # no merge: all kept
    assert ordered([a, other, b], [merging]) == (other, b)


def test_spf_checks_declare_the_identity_choice() -> None:
    """RFC 8601 section 4: one SPF result, MAIL FROM's when there is one (checks.spf.rules);
    the runner holds no SPF rule of its own."""
    helo = spf.SpfResult(Value.FAIL, "helo", "mail.example.org")
    mailfrom = spf.SpfResult(Value.PASS, "mailfrom", "example.org")
    checks = [spf.HELO_CHECK, spf.MAILFROM_CHECK]
    assert ordered([helo, mailfrom], checks) == (mailfrom,)
    assert ordered([helo], checks) == (helo,)  # the null sender: HELO's stands
    assert spf.HELO_CHECK.merge is spf.keep_reported
    assert spf.MAILFROM_CHECK.merge is spf.keep_reported
