"""Failed SMTP AUTH attempts per client: slow each failure down, then cut the client off.

A client is an IPv4 address or an IPv6 /64 (whoever has one IPv6 address usually has
the whole /64, so counting addresses would give an attacker 2**64 fresh starts).
IPv4-mapped IPv6 addresses, as a dual-stack socket reports IPv4 peers, count as IPv4.

Pure and deterministic: time comes from an injected clock, and the limiter only says
how long to wait and what to answer; the server does the waiting. Not thread-safe:
it belongs to the event loop.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Protocol

from arproxy import names
from arproxy.replies import AUTH_INVALID, TOO_MANY_FAILURES, Reply

# What failures are counted under: an IPv4 address, an IPv6 /64, or (for a peer that
# is not an IP address at all, e.g. a UNIX socket) its name as given.
ClientKey = IPv4Address | IPv6Network | str

_IPV6_PREFIX = 64
_MAX_EXPONENT = 60  # 2**60 times any sane base delay is past any cap; avoids overflow


@dataclass(frozen=True)
class Decision:
    """What to do about one failed attempt: wait `delay` seconds, send `reply`.

    `over`: the client had used up its `max_failures` already when this attempt was
    counted (a parallel session of the same client took the last one): the password
    must not be checked at all (smtpauth.Authenticator counts each attempt before
    checking it, so N parallel sessions cannot all pass `blocked`).
    """

    disconnect: bool
    delay: float
    over: bool = False

    @property
    def reply(self) -> Reply:
        """535 to let the client try again, or 421 before closing the connection."""
        return TOO_MANY_FAILURES if self.disconnect else AUTH_INVALID


class FailureLimiter(Protocol):
    """What the authenticator asks of a limiter: this module's `AuthFailureLimiter`
    (one process), or `arproxy.shared.SharedAuthLimiter` (the workers of one instance)."""

    def blocked(self, ip: str) -> bool: ...

    def delay_for(self, ip: str) -> float: ...

    def record_failure(self, ip: str) -> Decision: ...

    def record_success(self, ip: str) -> None: ...


class AsyncFailureLimiter(Protocol):
    """The same questions asked of a limiter across instances
    (`arproxy.redisstate.RedisAuthLimiter`); each may raise
    redisstate.StateUnavailable."""

    async def blocked(self, ip: str) -> bool: ...

    async def delay_for(self, ip: str) -> float: ...

    async def record_failure(self, ip: str) -> Decision: ...

    async def record_success(self, ip: str) -> None: ...


def failure_delay(earlier_failures: int, base_delay: float, max_delay: float) -> float:
    """Seconds before answering a failure that follows `earlier_failures` in the window:
    base_delay * 2**earlier_failures, capped at max_delay."""
    exponent = min(earlier_failures, _MAX_EXPONENT)
    return float(min(max_delay, base_delay * 2.0**exponent))


class AuthFailureLimiter:
    """Counts failed attempts per client within a sliding window.

    Each failure is answered after base_delay * 2**(earlier failures in the window),
    capped at max_delay. The max_failures-th failure within `window` seconds
    disconnects, and `blocked` stays true until the oldest of them leaves the window.
    At most `max_tracked` clients are remembered: the one whose last failure is
    oldest is forgotten first, expired ones as soon as they expire.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 600.0,
        base_delay: float = 1.0,
        max_delay: float = 16.0,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 100_000,
    ) -> None:
        if max_failures < 1 or max_tracked < 1:
            raise ValueError("max_failures and max_tracked must be at least 1")
        if window <= 0 or base_delay < 0 or max_delay < base_delay:
            raise ValueError("need window > 0 and 0 <= base_delay <= max_delay")
        self._max_failures = max_failures
        self._window = window
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._max_tracked = max_tracked
        # Failure times per client, only the last max_failures (no more are needed to
        # decide). Ordered by each client's last failure, oldest first.
        self._failures: OrderedDict[ClientKey, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many clients are remembered (for tests and metrics)."""
        return len(self._failures)

    def blocked(self, ip: str | IPv4Address | IPv6Address) -> bool:
        """Whether the client has used up its attempts: refuse AUTH without checking.

        Without this, a cut-off client reconnecting would still get every guess
        checked, and a right guess accepted, just one per connection.
        """
        return self._recent(client_key(ip)) >= self._max_failures

    def delay_for(self, ip: str | IPv4Address | IPv6Address) -> float:
        """Seconds to wait before answering the client's next failure."""
        return self._delay(self._recent(client_key(ip)))

    def record_failure(self, ip: str | IPv4Address | IPv6Address) -> Decision:
        """Count a failed attempt; its delay is what `delay_for` said just before."""
        now = self._clock()
        self._prune(now)
        key = client_key(ip)
        earlier = self._recent(key, now)
        times = self._failures.pop(key, None) or deque(maxlen=self._max_failures)
        times.append(now)
        self._failures[key] = times  # (re)inserted last: it failed most recently
        if len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)
        return Decision(
            disconnect=earlier + 1 >= self._max_failures,
            delay=self._delay(earlier),
            over=earlier >= self._max_failures,
        )

    def record_success(self, ip: str | IPv4Address | IPv6Address) -> None:
        """Forget the client's failures: it knows a password."""
        self._failures.pop(client_key(ip), None)

    def _recent(self, key: ClientKey, now: float | None = None) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        now = self._clock() if now is None else now
        return sum(1 for at in times if now - at < self._window)

    def _delay(self, earlier_failures: int) -> float:
        return failure_delay(earlier_failures, self._base_delay, self._max_delay)

    def _prune(self, now: float) -> None:
        """Forget clients whose last failure left the window; they are at the front."""
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if now - times[-1] < self._window:
                return
            del self._failures[key]


def client_key(ip: str | IPv4Address | IPv6Address) -> ClientKey:
    """What `ip`'s failures are counted under: itself for IPv4, its /64 for IPv6."""
    if isinstance(ip, str):
        try:
            address: IPv4Address | IPv6Address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
    else:
        address = ip
    address = names.unmapped(address)  # RFC 4291 section 2.5.5.2: it is the IPv4 address
    if isinstance(address, IPv4Address):
        return address
    # From the integer, so a zone index ("fe80::1%eth0") does not split the count.
    prefix = int(address) >> (128 - _IPV6_PREFIX) << (128 - _IPV6_PREFIX)
    return IPv6Network((prefix, _IPV6_PREFIX))
