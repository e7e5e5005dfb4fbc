"""SMTP AUTH decisions under parallel attempts: README "auth.max_failures" (failures per
client address in 10 minutes, then 421 4.7.0) is a bound on the passwords checked, also
when the client runs many sessions at once, with one process's limiter
(ratelimit.AuthFailureLimiter) and with the workers' shared one (shared.SharedAuthLimiter)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from arproxy.ratelimit import AuthFailureLimiter, FailureLimiter
from arproxy.shared import SharedState
from arproxy.smtpauth import Authenticator
from arproxy.users import UsersFile, set_password

MAX_FAILURES = 2
PARALLEL = 8


class CountingUsers(UsersFile):
    """A real users file that counts the passwords it was asked to check."""

    checked = 0

    async def verify(self, user: str | bytes, password: str | bytes, **kwargs: object) -> bool:
        CountingUsers.checked += 1
        await asyncio.sleep(0.05)  # the hash runs off the loop: the others get their turn
        return await super().verify(user, password)  # type: ignore[arg-type]


def local_limiter() -> FailureLimiter:
    return AuthFailureLimiter(max_failures=MAX_FAILURES, base_delay=0.0, max_delay=0.0)


def shared_limiter() -> FailureLimiter:
    state = SharedState(workers=2, max_connections=10, max_failures=MAX_FAILURES)
    return state.for_worker(1).auth_limiter()


@pytest.mark.parametrize("make_limiter", [local_limiter, shared_limiter])
def test_parallel_attempts_check_at_most_max_failures_passwords(
    tmp_path: Path, make_limiter: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("arproxy.shared.AUTH_BASE_DELAY", 0.0)
    monkeypatch.setattr("arproxy.shared.AUTH_MAX_DELAY", 0.0)
    users_path = tmp_path / "users"
    set_password(users_path, "alice", "right")
    users = CountingUsers.load(users_path)
    CountingUsers.checked = 0
    authenticator = Authenticator(users, make_limiter())  # type: ignore[operator]

    async def attempts() -> list[int]:
        outcomes = await asyncio.gather(
            *(authenticator.authenticate("192.0.2.7", b"alice", b"wrong") for _ in range(PARALLEL))
        )
        return sorted(outcome.reply.code for outcome in outcomes)

    codes = asyncio.run(attempts())
    assert CountingUsers.checked == MAX_FAILURES
    # The first failure 535 5.7.8 (RFC 4954 section 6), the max_failures-th and every
    # attempt past the limit 421 4.7.0 and a disconnect.
    assert codes == [421] * (PARALLEL - 1) + [535]


def test_a_right_password_still_clears_the_count(tmp_path: Path) -> None:
    """Counting an attempt before checking it does not cost a right password anything."""
    users_path = tmp_path / "users"
    set_password(users_path, "alice", "right")
    limiter = local_limiter()
    authenticator = Authenticator(UsersFile.load(users_path), limiter)

    async def run() -> tuple[int, int]:
        failed = await authenticator.authenticate("192.0.2.8", b"alice", b"wrong")
        ok = await authenticator.authenticate("192.0.2.8", b"alice", b"right")
        return failed.reply.code, ok.reply.code

    assert asyncio.run(run()) == (535, 235)
    assert not limiter.blocked("192.0.2.8") and limiter.delay_for("192.0.2.8") == 0.0
