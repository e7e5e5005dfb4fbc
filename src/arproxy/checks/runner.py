"""Runs a session's checks concurrently, each as soon as its inputs exist.

iprev starts at connect, SPF for the HELO identity at EHLO, SPF for MAIL FROM at
MAIL, DKIM, ARC and auth when the message is complete, DMARC once SPF and DKIM are in.
At the end of DATA `collect` waits only for what is still outstanding, within the
per-message budget (`dns.message_budget`); a check still running then is reported
as its own timeout result (temperror) instead of holding the client. A check that
raised is reported by its `on_crash` result if it has one (the checks that read the
message: permerror, a fault of the content), else as its timeout.

A check runs at once, up to its first wait, and gets a Task only if it waits
(`checks.eager`): with a warm DNS cache most never do.

The runner only schedules: no method's rule lives here. Where a method reports fewer
results than its checks gave (SPF: MAIL FROM's replaces HELO's), the check declares it
as its `merge` and the runner applies it. Thread pools come from the worker's resources,
bound into the checks by `configured_checks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import cast

from arproxy import names
from arproxy.checks import arc, auth, dkim, dmarc, eager, iprev, spf
from arproxy.checks.base import Check, CheckContext, MethodResult, Stage
from arproxy.config import ChecksConfig
from arproxy.dns import Resolver
from arproxy.resources import WorkerResources

log = logging.getLogger("arproxy.checks")

# The order of results in our field, whatever order they finish in.
METHOD_ORDER = ("auth", "iprev", "spf", "dkim", "dmarc", "arc")


def configured_checks(
    config: ChecksConfig, resources: WorkerResources | None = None
) -> tuple[Check, ...]:
    """The checks with their settings and the worker's thread pools bound (None: the
    loop's default executor, for tests and one-shot tools)."""
    spf_pool = resources.spf_pool if resources else None
    dkim_pool = resources.dkim_pool if resources else None
    checks: tuple[Check, ...] = (
        dataclasses.replace(
            iprev.CHECK, run=functools.partial(iprev.check_iprev, max_names=config.iprev_max_names)
        ),
        dataclasses.replace(spf.HELO_CHECK, run=functools.partial(spf.check_helo, pool=spf_pool)),
        dataclasses.replace(
            spf.MAILFROM_CHECK, run=functools.partial(spf.check_mailfrom, pool=spf_pool)
        ),
        dataclasses.replace(
            dkim.CHECK,
            run=functools.partial(
                dkim.check, max_signatures=config.dkim_max_signatures, pool=dkim_pool
            ),
        ),
        auth.CHECK,
        dmarc.CHECK,
    )
    if config.arc:
        # RFC 8617: the chain's status, for the trusted-sealer override (arproxy.policy).
        # Same CPU work as DKIM (hashing, RSA), so the same pool.
        checks += (
            dataclasses.replace(arc.CHECK, run=functools.partial(arc.check, pool=dkim_pool)),
        )
    return checks


class _Running:
    """A started check: its outcome once done, and the context it was started with.

    Started by `checks.eager`: most checks finish at their first step (their DNS answers
    come from the cache) and then have no Task (`task` None) and no done-callback; one
    that suspends is carried on by a Task, exactly as before.
    """

    __slots__ = ("_cancelled", "_error", "_result", "_started", "check", "ctx", "elapsed", "task")

    def __init__(self, check: Check, ctx: CheckContext, dns: Resolver) -> None:
        self.check = check
        self.ctx = ctx
        # The Task carrying a check that suspended at its first step; None otherwise.
        self.task: asyncio.Future[tuple[MethodResult, ...]] | None = None
        # Seconds from start to result (metrics: check latency per method); None
        # while running or when cancelled.
        self.elapsed: float | None = None
        self._result: tuple[MethodResult, ...] = ()
        self._error: BaseException | None = None
        self._cancelled = False
        self._started = time.monotonic()
        coro = check.run(ctx, dns)
        if not isinstance(coro, Coroutine):  # an awaitable of another kind: a Task as ever
            self.task = asyncio.ensure_future(coro)
            self.task.add_done_callback(self._finished)
            return
        started = eager.start(coro)
        self.task = started.task
        if self.task is not None:
            self.task.add_done_callback(self._finished)
            return
        self._cancelled = started.cancelled
        self._error = started.error
        self._result = cast(tuple[MethodResult, ...], started.result)
        if not self._cancelled and self._error is None:
            self.elapsed = time.monotonic() - self._started

    def _finished(self, task: asyncio.Future[tuple[MethodResult, ...]]) -> None:
        if not task.cancelled():
            self.elapsed = time.monotonic() - self._started

    def outcome(self, *, cancel_if_running: bool = True) -> tuple[MethodResult, ...]:
        task = self.task
        if task is None:
            if self._cancelled:
                return self.check.on_timeout(self.ctx)
            if self._error is not None:
                return self._crashed(self._error)
            return self._result
        if not task.done():
            if cancel_if_running:
                task.cancel()
            return self.check.on_timeout(self.ctx)
        if task.cancelled():
            return self.check.on_timeout(self.ctx)
        error = task.exception()
        if error is not None:
            return self._crashed(error)
        return task.result()

    def _crashed(self, error: BaseException) -> tuple[MethodResult, ...]:
        """A check that raised: crashed on content (permerror) or a bug (as a timeout)."""
        if self.check.on_crash is not None:
            # A fault of the message's content, which would raise again: not temporary,
            # and one log line rather than a traceback for every such message.
            log.warning(
                "check %s failed on the message: %s: %s",
                self.check.method,
                type(error).__name__,
                error,
            )
            return self.check.on_crash(self.ctx)
        # A bug in a check must not cost the message: report what a timeout
        # would, and keep the traceback for the administrator.
        log.error("check %s failed: %s", self.check.method, error, exc_info=error)
        return self.check.on_timeout(self.ctx)


class SessionChecks:
    """The checks of one SMTP session (or of one `arproxy check` run)."""

    def __init__(
        self, dns: Resolver, checks: Sequence[Check], client_ip: str, *, skipped: bool = False
    ) -> None:
        self.dns = dns
        self.checks = tuple(checks)
        self.skipped = skipped
        self.ctx = CheckContext(client_ip=client_ip)
        self._transaction_ctx: CheckContext | None = None
        self._session: dict[Stage, list[_Running]] = {}
        self._transaction: dict[Stage, list[_Running]] = {}
        # (method, seconds) of each check that finished for the last message.
        self.timings: tuple[tuple[str, float], ...] = ()

    @staticmethod
    def is_skipped(client_ip: str, config: ChecksConfig) -> bool:
        address = names.ip_address(client_ip)
        return any(address in network for network in config.skip_clients)

    def _start(self, stage: Stage, ctx: CheckContext) -> list[_Running]:
        if self.skipped:
            return []
        return [_Running(check, ctx, self.dns) for check in self.checks if check.stage == stage]

    def on_connect(self) -> None:
        self._session[Stage.CONNECT] = self._start(Stage.CONNECT, self.ctx)

    def on_helo(self, helo: str) -> None:
        self.reset_transaction()
        _cancel(self._session.pop(Stage.HELO, []))  # a second EHLO replaces the first
        self.ctx = dataclasses.replace(self.ctx, helo=helo)
        self._session[Stage.HELO] = self._start(Stage.HELO, self.ctx)

    def on_starttls(self) -> None:
        """RFC 3207 4.2: after STARTTLS the client starts over (EHLO, AUTH); only
        what belongs to the connection (iprev) is kept."""
        self.reset_transaction()
        _cancel(self._session.pop(Stage.HELO, []))
        self.ctx = CheckContext(client_ip=self.ctx.client_ip)

    def on_auth(self, identity: str) -> None:
        self.ctx = dataclasses.replace(self.ctx, auth_identity=identity, auth_failed_identity=None)

    def on_auth_failure(self, identity: str) -> None:
        if self.ctx.auth_identity is None:
            self.ctx = dataclasses.replace(self.ctx, auth_failed_identity=identity)

    def on_mail(self, sender: str) -> None:
        self.reset_transaction()
        self.timings = ()
        self._transaction_ctx = dataclasses.replace(self.ctx, mail_from=sender)
        self._transaction[Stage.MAIL] = self._start(Stage.MAIL, self._transaction_ctx)

    def reset_transaction(self) -> None:
        for running in self._transaction.values():
            _cancel(running)
        self._transaction.clear()
        self._transaction_ctx = None

    async def collect(self, message: bytes, budget: float) -> tuple[MethodResult, ...]:
        """Start the message checks, wait within `budget`, return ordered results."""
        if self.skipped:
            return ()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        mail = self._transaction.get(Stage.MAIL, [])
        ctx = dataclasses.replace(self._transaction_ctx or self.ctx, message=message)
        data = self._start(Stage.DATA, ctx)
        earlier = [r for runs in (*self._session.values(), mail) for r in runs]
        after: list[_Running] = []
        try:
            await _wait([*earlier, *data], deadline - loop.time())
            # A session check (iprev, SPF for HELO) still running is reported as its
            # timeout for this message but left to finish for the next one.
            session_runs = [r for runs in self._session.values() for r in runs]
            results = [
                result
                for running in (*earlier, *data)
                for result in running.outcome(cancel_if_running=running not in session_runs)
            ]
            # DMARC sees the results we report (each method's merge applied).
            final_ctx = dataclasses.replace(ctx, prior=ordered(results, self.checks))
            after = self._start(Stage.AFTER_CHECKS, final_ctx)
            await _wait(after, deadline - loop.time())
            results += [result for running in after for result in running.outcome()]
            self.timings = tuple(
                (running.check.method, running.elapsed)
                for running in (*earlier, *data, *after)
                if running.elapsed is not None
            )
        finally:
            # Cancelled (the client went away mid-DATA) or done: nothing of this
            # message's checks may keep running unowned.
            _cancel(data)
            _cancel(after)
            self.reset_transaction()
        return ordered(results, self.checks)

    def close(self) -> None:
        self.reset_transaction()
        for running in self._session.values():
            _cancel(running)
        self._session.clear()


def ordered(results: Sequence[MethodResult], checks: Sequence[Check]) -> tuple[MethodResult, ...]:
    """The results to report: each method's `merge` (declared by its checks) applied,
    methods in METHOD_ORDER, a method's results in the order they were given."""
    merges = {check.method: check.merge for check in checks if check.merge is not None}
    kept = [r for r in results if r.method not in merges]
    for method, merge in merges.items():
        kept += merge([r for r in results if r.method == method])
    return tuple(sorted(kept, key=lambda r: _rank(r.method)))


def _rank(method: str) -> int:
    return _RANKS.get(method, len(METHOD_ORDER))


_RANKS = {method: rank for rank, method in enumerate(METHOD_ORDER)}


async def _wait(running: Sequence[_Running], timeout: float) -> None:
    tasks = [r.task for r in running if r.task is not None and not r.task.done()]
    if tasks and timeout > 0:
        await asyncio.wait(tasks, timeout=timeout)


def _cancel(running: Sequence[_Running]) -> None:
    for r in running:
        if r.task is None:
            # Finished at its first step: nothing runs; an error nobody will read is
            # logged as an abandoned task's would be.
            if r._error is not None:
                log.info("abandoned check ended with %r", r._error)
            continue
        r.task.cancel()
        # Nobody reads an abandoned check's outcome: observe it here, or an error
        # (raised before the cancel, or after it when asyncio 3.11's wait_for
        # swallowed the cancellation) would be "Task exception was never retrieved".
        r.task.add_done_callback(_abandoned_done)


def _abandoned_done(task: asyncio.Future[tuple[MethodResult, ...]]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.info("abandoned check ended with %r", error)
