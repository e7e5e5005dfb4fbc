"""SMTP AUTH decisions: check credentials, rate-limit failures, say what to reply.

aiosmtpd parses PLAIN and LOGIN; this module decides. Password checks run off the
event loop (argon2 is slow on purpose), failures are delayed more and more per
client address, and a client over the limit is disconnected and refused further
attempts for the rest of the window.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from arproxy.ratelimit import FailureLimiter
from arproxy.replies import AUTH_SUCCESS, TOO_MANY_FAILURES, Reply
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
        self, users: UsersFile, limiter: FailureLimiter, hash_pool: Executor | None = None
    ) -> None:
        self.users = users
        self.limiter = limiter
        self.hash_pool = hash_pool

    async def authenticate(self, client_ip: str, login: bytes, password: bytes) -> AuthOutcome:
        user = _printable_user(login)
        if self.limiter.blocked(client_ip):
            log.warning("client=%s auth refused: too many failures", client_ip)
            return AuthOutcome(TOO_MANY_FAILURES, None, user, disconnect=True)
        if user is not None and await self.users.verify(user, password, pool=self.hash_pool):
            self.limiter.record_success(client_ip)
            log.info("client=%s auth ok user=%s", client_ip, user)
            return AuthOutcome(AUTH_SUCCESS, user, user)
        decision = self.limiter.record_failure(client_ip)
        log.info(
            "client=%s auth failed user=%s delay=%.0fs%s",
            client_ip,
            user if user is not None else "(unprintable)",
            decision.delay,
            " disconnect" if decision.disconnect else "",
        )
        await asyncio.sleep(decision.delay)
        return AuthOutcome(decision.reply, None, user, disconnect=decision.disconnect)


def _printable_user(login: bytes) -> str | None:
    try:
        user = login.decode("ascii")
    except UnicodeDecodeError:
        return None
    return user if user_problem(user) is None else None
