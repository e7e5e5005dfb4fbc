"""SMTP AUTH decisions: check credentials, rate-limit failures, say what to reply.

aiosmtpd parses PLAIN and LOGIN; this module decides. Password checks run off the
event loop (argon2 is slow on purpose), failures are delayed more and more per
client address, and a client over the limit is disconnected and refused further
attempts for the rest of the window.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import cast

from arproxy.ratelimit import AsyncFailureLimiter, Decision, FailureLimiter
from arproxy.redisstate import RateLimitedLog, StateUnavailable
from arproxy.replies import AUTH_SUCCESS, AUTH_TEMPORARY_FAILURE, TOO_MANY_FAILURES, Reply
from arproxy.users import UsersFile, user_problem

log = logging.getLogger("arproxy.auth")


@dataclass(frozen=True)
class AuthOutcome:
    reply: Reply
    identity: str | None  # the authenticated user on success
    attempted: str | None  # the user name tried, when it was printable
    disconnect: bool = False

    @property
    def success(self) -> bool:
        return self.identity is not None


class Authenticator:
    """One per worker: the users file (swapped on reload), the failure limiter and the
    pool the password hashes run in, both from the worker's resources (arproxy.resources:
    with several workers the limiter is the one they share, arproxy.shared)."""

    def __init__(
        self,
        users: UsersFile,
        limiter: FailureLimiter | AsyncFailureLimiter,
        hash_pool: Executor | None = None,
    ) -> None:
        self.users = users
        self.limiter = limiter
        self.hash_pool = hash_pool
        # Told apart once: the protocols only differ in being awaited.
        remote = inspect.iscoroutinefunction(limiter.blocked)
        self._remote = cast(AsyncFailureLimiter, limiter) if remote else None
        self._local = None if remote else cast(FailureLimiter, limiter)
        self._down = RateLimitedLog()

    async def authenticate(self, client_ip: str, login: bytes, password: bytes) -> AuthOutcome:
        """Check one PLAIN/LOGIN attempt. A limiter that cannot be asked (Redis down:
        redisstate.StateUnavailable) fails closed: 454 4.7.0 (RFC 4954 section 6,
        temporary authentication failure), no password checked, one log line per
        redisstate.LOG_EVERY seconds."""
        user = _printable_user(login)
        try:
            return await self._authenticate(client_ip, user, password)
        except StateUnavailable as exc:
            self._down.warning("state: AUTH refused (454 4.7.0): limiter unavailable: %s", exc)
            return AuthOutcome(AUTH_TEMPORARY_FAILURE, None, user)

    async def _authenticate(self, client_ip: str, user: str | None, password: bytes) -> AuthOutcome:
        if await self._blocked(client_ip):
            return self._refused(client_ip, user)
        # Counted as a failure before the password is checked, and taken back by a
        # success: checked first, N parallel sessions of one client would all pass
        # `blocked` while the first hashes ran, and get N guesses, not max_failures.
        decision = await self._record_failure(client_ip)
        if decision.over:
            return self._refused(client_ip, user)
        if user is not None and await self.users.verify(user, password, pool=self.hash_pool):
            await self._record_success(client_ip)
            log.info("client=%s auth ok user=%s", client_ip, user)
            return AuthOutcome(AUTH_SUCCESS, user, user)
        log.info(
            "client=%s auth failed user=%s delay=%.0fs%s",
            client_ip,
            user if user is not None else "(unprintable)",
            decision.delay,
            " disconnect" if decision.disconnect else "",
        )
        await asyncio.sleep(decision.delay)
        return AuthOutcome(decision.reply, None, user, disconnect=decision.disconnect)

    @staticmethod
    def _refused(client_ip: str, user: str | None) -> AuthOutcome:
        """The client used up its attempts: 421 4.7.0 and disconnect, nothing checked."""
        log.warning("client=%s auth refused: too many failures", client_ip)
        return AuthOutcome(TOO_MANY_FAILURES, None, user, disconnect=True)

    # One code path for both kinds of limiter: the in-process and shared-memory ones
    # answer at once, the Redis one over the network.

    async def _blocked(self, ip: str) -> bool:
        if self._remote is not None:
            return await self._remote.blocked(ip)
        assert self._local is not None
        return self._local.blocked(ip)

    async def _record_success(self, ip: str) -> None:
        if self._remote is not None:
            await self._remote.record_success(ip)
        else:
            assert self._local is not None
            self._local.record_success(ip)

    async def _record_failure(self, ip: str) -> Decision:
        if self._remote is not None:
            return await self._remote.record_failure(ip)
        assert self._local is not None
        return self._local.record_failure(ip)


def _printable_user(login: bytes) -> str | None:
    try:
        user = login.decode("ascii")
    except UnicodeDecodeError:
        return None
    return user if user_problem(user) is None else None
