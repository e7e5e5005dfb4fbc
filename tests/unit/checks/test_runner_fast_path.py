"""The runner's fast path: a check that finishes at its first step runs without a Task;
one that suspends is handed to a Task mid-flight. Both must behave as a Task would
(results, exceptions, cancellation, context variables), which these tests pin."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from arproxy import logcontext
from arproxy.authres import ResInfo
from arproxy.checks.base import Check, CheckContext, MethodResult, Stage, Value
from arproxy.checks.runner import SessionChecks
from arproxy.config import HostPort
from arproxy.dns import Resolver

Run = Callable[[CheckContext, Resolver], Awaitable[tuple[MethodResult, ...]]]


@dataclass(frozen=True)
class Fake:
    method: str
    value: Value
    note: str = ""

    def to_resinfo(self) -> ResInfo:
        return ResInfo(self.method, self.value.value)


def _timeout(ctx: CheckContext) -> tuple[MethodResult, ...]:
    return (Fake("dkim", Value.TEMPERROR, "timeout"),)


def _crash(ctx: CheckContext) -> tuple[MethodResult, ...]:
    return (Fake("dkim", Value.PERMERROR, "crash"),)


def _collect(
    run: Run, *, on_crash: bool = False, budget: float = 2.0
) -> tuple[SessionChecks, tuple[MethodResult, ...]]:
    check = Check("dkim", Stage.DATA, run, _timeout, on_crash=_crash if on_crash else None)

    async def go() -> tuple[SessionChecks, tuple[MethodResult, ...]]:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        session = SessionChecks(resolver, [check], "192.0.2.1")
        session.on_connect()
        session.on_mail("a@example.org")
        results = await session.collect(b"Subject: x\r\n\r\n", budget)
        session.close()
        await resolver.close()
        return session, results

    return asyncio.run(go())


def _values(results: tuple[MethodResult, ...]) -> list[tuple[Value, str]]:
    return [(r.value, r.note) for r in results if isinstance(r, Fake)]


async def _at_once(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
    return (Fake("dkim", Value.PASS, "at once"),)


async def _suspending(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
    await asyncio.sleep(0.01)
    return (Fake("dkim", Value.PASS, "suspended"),)


def test_a_check_finishing_at_its_first_step_gives_its_result_and_timing() -> None:
    session, results = _collect(_at_once)
    assert _values(results) == [(Value.PASS, "at once")]
    assert [method for method, _ in session.timings] == ["dkim"]


def test_a_check_that_suspends_gives_its_result_and_timing() -> None:
    session, results = _collect(_suspending)
    assert _values(results) == [(Value.PASS, "suspended")]
    assert [method for method, _ in session.timings] == ["dkim"]


@pytest.mark.parametrize("suspend", [False, True])
@pytest.mark.parametrize("on_crash", [False, True])
def test_a_check_raising_at_or_after_its_first_step_is_reported_as_a_task_would(
    suspend: bool, on_crash: bool
) -> None:
    async def boom(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        if suspend:
            await asyncio.sleep(0)
        raise RuntimeError("bug")

    _, results = _collect(boom, on_crash=on_crash)
    assert _values(results) == [
        (Value.PERMERROR, "crash") if on_crash else (Value.TEMPERROR, "timeout")
    ]


@pytest.mark.parametrize("suspend", [False, True])
def test_a_check_raising_cancelled_error_is_reported_as_its_timeout(suspend: bool) -> None:
    async def cancelled(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        if suspend:
            await asyncio.sleep(0)
        raise asyncio.CancelledError

    _, results = _collect(cancelled, on_crash=True)
    assert _values(results) == [(Value.TEMPERROR, "timeout")]


def test_a_check_over_the_budget_is_cancelled_at_its_await() -> None:
    seen: list[str] = []

    async def slow(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return ()

    _, results = _collect(slow, budget=0.05)
    assert _values(results) == [(Value.TEMPERROR, "timeout")]
    assert seen == ["cancelled"]


@pytest.mark.parametrize("steps_before_cancel", [0, 1])
def test_a_suspended_check_is_cancelled_at_rset_before_or_after_its_task_ran(
    steps_before_cancel: int,
) -> None:
    """RSET right after MAIL: the check (its first step already run at MAIL), suspended
    on a future, gets CancelledError at that await and the future it awaited is
    cancelled, whether or not the Task carrying it had taken a step yet."""
    seen: list[str] = []
    awaited: list[asyncio.Future[None]] = []

    async def waiting(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        awaited.append(future)
        try:
            await future
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return ()

    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        session = SessionChecks(
            resolver, [Check("spf", Stage.MAIL, waiting, _timeout)], "192.0.2.1"
        )
        session.on_mail("a@example.org")
        for _ in range(steps_before_cancel):
            await asyncio.sleep(0)
        session.reset_transaction()
        for _ in range(3):
            await asyncio.sleep(0)
        session.close()
        await resolver.close()

    asyncio.run(go())
    assert seen == ["cancelled"]
    assert awaited[0].cancelled()


def test_a_session_check_still_running_is_kept_for_the_next_message() -> None:
    runs: list[str] = []
    release: list[asyncio.Future[None]] = []

    async def iprev(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        release.append(future)
        await future
        runs.append("done")
        return (Fake("iprev", Value.PASS),)

    def iprev_timeout(ctx: CheckContext) -> tuple[MethodResult, ...]:
        return (Fake("iprev", Value.TEMPERROR),)

    async def go() -> list[list[Value]]:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        session = SessionChecks(
            resolver, [Check("iprev", Stage.CONNECT, iprev, iprev_timeout)], "192.0.2.1"
        )
        session.on_connect()
        session.on_mail("a@example.org")
        first = await session.collect(b"Subject: x\r\n\r\n", 0.01)
        release[0].set_result(None)
        session.on_mail("a@example.org")
        second = await session.collect(b"Subject: x\r\n\r\n", 1.0)
        session.close()
        await resolver.close()
        return [[r.value for r in first], [r.value for r in second]]

    assert asyncio.run(go()) == [[Value.TEMPERROR], [Value.PASS]]
    assert runs == ["done"]


_PROBE: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="caller")


@pytest.mark.parametrize("suspend", [False, True])
def test_a_check_sees_the_queue_id_of_its_start_and_its_variables_do_not_leak(
    suspend: bool,
) -> None:
    seen: list[str | None] = []

    async def probe(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        seen.append(logcontext.current_queue_id())
        _PROBE.set("check")  # a Task's own context copy: never the caller's
        if suspend:
            await asyncio.sleep(0)
        seen.append(logcontext.current_queue_id())
        seen.append(_PROBE.get())
        return (Fake("dkim", Value.PASS),)

    async def go() -> str:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        session = SessionChecks(resolver, [Check("dkim", Stage.DATA, probe, _timeout)], "192.0.2.1")
        session.on_mail("a@example.org")
        logcontext.set_queue_id("QID1")
        await session.collect(b"Subject: x\r\n\r\n", 1.0)
        logcontext.set_queue_id("QID2")  # after the start: the check's copy keeps QID1
        await asyncio.sleep(0)
        session.close()
        await resolver.close()
        return _PROBE.get()

    assert asyncio.run(go()) == "caller"
    assert seen == ["QID1", "QID1", "check"]
