from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

import pytest

from arproxy.ratelimit import (
    AUTH_INVALID,
    TOO_MANY_FAILURES,
    AuthFailureLimiter,
    client_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs: Any) -> AuthFailureLimiter:
    return AuthFailureLimiter(clock=clock, **kwargs)


def test_replies() -> None:
    assert str(AUTH_INVALID) == "535 5.7.8 Authentication credentials invalid"
    assert str(TOO_MANY_FAILURES) == (
        "421 4.7.0 Too many failed authentication attempts, closing connection"
    )


def test_delays_grow_exponentially_and_cap() -> None:
    limits = limiter(Clock(), max_failures=10)
    delays = []
    for _ in range(8):
        announced = limits.delay_for("192.0.2.1")
        decision = limits.record_failure("192.0.2.1")
        assert decision.delay == announced
        delays.append(decision.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0]


def test_disconnect_after_max_failures_within_window() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(4):
        decision = limits.record_failure("192.0.2.1")
        assert not decision.disconnect
        assert decision.reply == AUTH_INVALID
        assert not limits.blocked("192.0.2.1")
        clock.now += 100
    decision = limits.record_failure("192.0.2.1")
    assert decision.disconnect
    assert decision.reply == TOO_MANY_FAILURES
    assert limits.blocked("192.0.2.1")
    assert not limits.blocked("192.0.2.2")


def test_window_expiry() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(5):
        limits.record_failure("192.0.2.1")
        clock.now += 100  # failures at 0, 100, ..., 400
    assert limits.blocked("192.0.2.1")
    clock.now = 1000.0 + 600  # the first failure has just left the window
    assert not limits.blocked("192.0.2.1")
    assert limits.delay_for("192.0.2.1") == 16.0  # four remain
    assert limits.record_failure("192.0.2.1").disconnect  # five in the window again
    clock.now += 10_000
    assert limits.delay_for("192.0.2.1") == 1.0
    assert not limits.record_failure("192.0.2.1").disconnect


def test_failures_spread_wider_than_the_window_never_disconnect() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(50):
        assert not limits.record_failure("192.0.2.1").disconnect
        clock.now += 150  # four per window at most


def test_success_clears() -> None:
    limits = limiter(Clock())
    for _ in range(4):
        limits.record_failure("192.0.2.1")
    limits.record_success("192.0.2.1")
    assert limits.delay_for("192.0.2.1") == 1.0
    assert len(limits) == 0
    for _ in range(4):
        assert not limits.record_failure("192.0.2.1").disconnect


def test_ipv6_counts_per_64_and_ipv4_per_address() -> None:
    limits = limiter(Clock())
    for host in range(1, 6):
        decision = limits.record_failure(f"2001:db8:1:2::{host:x}")
    assert decision.disconnect
    assert limits.blocked("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert limits.blocked(IPv6Address("2001:db8:1:2::99"))
    assert not limits.blocked("2001:db8:1:3::1")
    for host in range(1, 6):
        assert not limits.record_failure(f"192.0.2.{host}").disconnect


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", IPv4Address("192.0.2.1")),
        ("::ffff:192.0.2.1", IPv4Address("192.0.2.1")),  # as a dual-stack socket says it
        ("2001:db8::1", IPv6Network("2001:db8::/64")),
        ("fe80::1%eth0", IPv6Network("fe80::/64")),
        (IPv6Address("2001:db8:0:0:ffff::1"), IPv6Network("2001:db8::/64")),
        ("/run/arproxy.sock", "/run/arproxy.sock"),
    ],
)
def test_client_key(ip: str | IPv6Address, key: object) -> None:
    assert client_key(ip) == key


def test_memory_is_bounded_oldest_evicted() -> None:
    clock = Clock()
    limits = limiter(clock, max_tracked=100)
    for n in range(1000):
        clock.now += 0.01
        limits.record_failure(f"10.0.{n // 256}.{n % 256}")
        assert len(limits) <= 100
    assert limits.delay_for("10.0.3.231") == 2.0  # the most recent (n = 999) is kept
    assert limits.delay_for("10.0.0.0") == 1.0  # the oldest went first


def test_expired_entries_are_pruned() -> None:
    clock = Clock()
    limits = limiter(clock)
    for n in range(50):
        limits.record_failure(f"198.51.100.{n}")
    clock.now += 601
    limits.record_failure("203.0.113.1")
    assert len(limits) == 1


def test_a_refreshed_client_is_not_evicted_first() -> None:
    clock = Clock()
    limits = limiter(clock, max_tracked=2)
    limits.record_failure("192.0.2.1")
    clock.now += 1
    limits.record_failure("192.0.2.2")
    clock.now += 1
    limits.record_failure("192.0.2.1")  # now the most recent
    clock.now += 1
    limits.record_failure("192.0.2.3")  # evicts .2, not .1
    assert limits.delay_for("192.0.2.1") == 4.0
    assert limits.delay_for("192.0.2.2") == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0},
        {"base_delay": -1},
        {"base_delay": 20, "max_delay": 10},
        {"max_tracked": 0},
    ],
)
def test_nonsense_parameters_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        limiter(Clock(), **kwargs)
