"""State shared across instances in Redis: the AUTH failure limiter, sessions per client.

With `[state] redis_url`, every worker of every instance pointing at that database
counts AUTH failures and per-client sessions in it, so N instances x M workers give a
password guesser no more attempts (and a client no more sessions) than one process.

Data model (every key under `state.key_prefix`; a client key is ratelimit.client_key:
the IPv4 address, the IPv6 /64, or for anything else the name's SHA-256):
- `auth:<client>`: a sorted set of failure times (score: Redis time in ms, member
  unique per failure). Each failure first drops members older than the window, counts
  what is left (the earlier failures), adds itself and keeps only the newest
  `auth.max_failures`: the same sliding window, delays and cut-off as
  ratelimit.AuthFailureLimiter. The key expires one window after the last failure.
- `conn:<client>`: a sorted set of session leases (member: `<worker id>:<n>`, score:
  the lease's expiry in Redis time, ms). Admission drops expired leases, counts the
  rest against `limits.max_connections_per_ip` and adds its own -- in one Lua script,
  so two instances cannot both take the last place. A session's end removes its
  lease; every worker renews its open leases each `state.session_ttl / 3` seconds.

Crash safety: a worker or an instance that dies without removing its leases stops
renewing them, so they expire `state.session_ttl` seconds later at most; nothing
leaks for longer. Every time is Redis's own clock (`TIME` in the scripts), so the
instances' clocks need not agree. Redis down (no answer within `state.timeout`):
StateUnavailable, which the AUTH path turns into 454 4.7.0 (fail closed: no password
is checked that the limiter could not count) and admission into "admit" (fail open:
counting is a nicety, refusing every client would be an outage); each is logged at
most once per LOG_EVERY seconds (`RateLimitedLog`).

Needs Redis 7 (scripts that call TIME before writing are replicated by effect).
Nothing is built at import: `RedisState.build` runs in the worker's event loop
(arproxy.resources).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from arproxy.config import StateConfig
from arproxy.ratelimit import Decision, client_key, failure_delay

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("arproxy.state")

AUTH_WINDOW = 600.0  # seconds: ratelimit.AuthFailureLimiter's defaults
AUTH_BASE_DELAY = 1.0
AUTH_MAX_DELAY = 16.0
LOG_EVERY = 60.0  # seconds between two "Redis is down" lines of one kind

T = TypeVar("T")

# now in ms from Redis's clock: one clock for every instance.
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

# KEYS[1] auth key; ARGV: window ms, max failures, member. Returns the earlier failures.
_RECORD_FAILURE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local earlier = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return earlier
"""
)

# KEYS[1] auth key; ARGV: window ms. Returns the failures within the window.
_RECENT = _NOW + "return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')"

# KEYS[1] conn key; ARGV: limit, member, ttl ms. Returns 1 (counted) or 0 (full).
_RESERVE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: conn keys; ARGV: ttl ms, then one member per key. Renews the leases still there.
_RENEW = (
    _NOW
    + """
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i + 1]) >= 0 then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""
)


class StateUnavailable(Exception):
    """Redis did not answer (down, unreachable, or slower than `state.timeout`)."""


class RateLimitedLog:
    """One warning per `every` seconds for each recurring condition, with the count of
    the occurrences it stood for: an outage is visible without one line per connection.

    A condition is its message format (a constant of the caller's), so one condition
    never silences another: "admitting connections uncounted" still appears when "a
    session lease is left to expire" was logged a moment before.
    """

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, message: str, *args: object) -> bool:
        """Log `message` unless the same message was logged less than `every` seconds
        ago; True if logged."""
        now = self.clock()
        last = self._last.get(message)
        if last is not None and now - last < self.every:
            self._skipped[message] = self._skipped.get(message, 0) + 1
            return False
        skipped = self._skipped.pop(message, 0)
        suffix = f" ({skipped} more since the last line)" if skipped else ""
        log.warning(message + suffix, *args)
        self._last[message] = now
        return True


def client_text(ip: str) -> str:
    """The client part of a key: IPv4 address, IPv6 /64 (ratelimit.client_key), or a
    hash for a name (no control characters, fixed length, in the key)."""
    key = client_key(ip)
    if isinstance(key, ipaddress.IPv4Address | ipaddress.IPv6Network):
        return str(key)
    return "name:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


@dataclass
class RedisState:
    """One worker's connection to the shared state and its open session leases."""

    client: Redis
    config: StateConfig
    worker_id: str
    max_failures: int
    leases: dict[str, str]  # lease member -> its conn key (renewed by the heartbeat)
    _heartbeat: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, config: StateConfig, max_failures: int) -> RedisState:
        """The worker's client (connects on first use); call in the running loop.
        Raises ValueError when `config.redis_url` is unset."""
        if config.redis_url is None:
            raise ValueError("no state.redis_url")
        from redis.asyncio import Redis  # noqa: PLC0415  # only with state.redis_url
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415

        client = Redis.from_url(
            config.redis_url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            # No retries: a down Redis must cost one timeout, not several.
            retry=Retry(NoBackoff(), 0),
        )
        worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        return cls(client, config, worker, max_failures, {})

    def key(self, kind: str, ip: str) -> str:
        return f"{self.config.key_prefix}{kind}:{client_text(ip)}"

    async def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run `script` (EVAL; Redis caches it by hash). Raises StateUnavailable."""
        from redis.exceptions import RedisError  # noqa: PLC0415

        try:
            async with asyncio.timeout(self.config.timeout * 2):
                return await self.client.eval(script, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def auth_limiter(self) -> RedisAuthLimiter:
        return RedisAuthLimiter(self)

    def session_counts(self) -> RedisSessionCounts:
        return RedisSessionCounts(self)

    def start_heartbeat(self) -> None:
        """Renew this worker's leases every `session_ttl / 3` seconds until `close`."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        down = RateLimitedLog()
        while True:
            await asyncio.sleep(self.config.session_ttl / 3)
            leases = dict(self.leases)
            if not leases:
                continue
            ttl = int(self.config.session_ttl * 1000)
            try:
                await self.call(_RENEW, list(leases.values()), [ttl, *leases])
            except StateUnavailable as exc:
                down.warning("state: cannot renew %d session lease(s): %s", len(leases), exc)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(OSError):
            await self.client.aclose()


class RedisAuthLimiter:
    """ratelimit.AuthFailureLimiter's rules, kept in Redis (see the module docstring).
    Every method raises StateUnavailable when Redis does not answer."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._serial = itertools.count()
        self._window_ms = int(AUTH_WINDOW * 1000)

    async def blocked(self, ip: str) -> bool:
        return await self._recent(ip) >= self._state.max_failures

    async def delay_for(self, ip: str) -> float:
        return failure_delay(await self._recent(ip), AUTH_BASE_DELAY, AUTH_MAX_DELAY)

    async def record_failure(self, ip: str) -> Decision:
        state = self._state
        member = f"{state.worker_id}:{next(self._serial)}"
        args = [self._window_ms, state.max_failures, member]
        earlier = int(await state.call(_RECORD_FAILURE, [state.key("auth", ip)], args))
        return Decision(
            disconnect=earlier + 1 >= state.max_failures,
            delay=failure_delay(earlier, AUTH_BASE_DELAY, AUTH_MAX_DELAY),
            over=earlier >= state.max_failures,
        )

    async def record_success(self, ip: str) -> None:
        state = self._state
        await _guard(state, state.client.delete(state.key("auth", ip)))

    async def _recent(self, ip: str) -> int:
        state = self._state
        return int(await state.call(_RECENT, [state.key("auth", ip)], [self._window_ms]))


class RedisSessionCounts:
    """Sessions per client across every instance (admission.RemoteCounts)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._serial = itertools.count()

    async def reserve(self, client_ip: str, limit: int) -> str | None:
        """A lease for one more session of `client_ip` if it fits under `limit`
        (counted now), else None. Raises StateUnavailable."""
        state = self._state
        state.start_heartbeat()
        key = state.key("conn", client_ip)
        member = f"{state.worker_id}:{next(self._serial)}"
        ttl = int(state.config.session_ttl * 1000)
        if not int(await state.call(_RESERVE, [key], [limit, member, ttl])):
            return None
        state.leases[member] = key
        return member

    async def release(self, lease: str) -> None:
        """The session is over: its lease stops counting (or expires, Redis down)."""
        state = self._state
        key = state.leases.pop(lease, None)
        if key is not None:
            await _guard(state, state.client.zrem(key, lease))


async def _guard(state: RedisState, command: Awaitable[T]) -> T:
    from redis.exceptions import RedisError  # noqa: PLC0415

    try:
        async with asyncio.timeout(state.config.timeout * 2):
            return await command
    except (RedisError, OSError, TimeoutError) as exc:
        raise StateUnavailable(f"{type(exc).__name__}: {exc}") from exc
