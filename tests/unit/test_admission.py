"""arproxy.admission: who may connect, and the drain (no socket: fake connections)."""

from __future__ import annotations

import asyncio
from typing import Any

from arproxy.admission import SessionRegistry
from arproxy.config import parse_config
from arproxy.replies import (
    SHUTTING_DOWN,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_CLIENT,
    UNTRUSTED_PROXY,
    Reply,
)


class FakeConnection:
    """What the registry reads of an ArproxySMTP."""

    def __init__(self, in_progress: bool, client_text: str, *, idle: bool = True) -> None:
        self.in_progress = in_progress
        self.client_text = client_text
        self.is_idle = idle
        self.peer_text = f"{client_text}:1"
        self.closed_with: list[Reply] = []

    def close_with(self, reply: Reply, *, logged: bool = False) -> None:
        self.closed_with.append(reply)


def test_sessions_answered_221_or_closing_do_not_count() -> None:
    registry = SessionRegistry()
    sessions: list[Any] = [
        FakeConnection(True, "192.0.2.1"),
        FakeConnection(False, "192.0.2.1"),  # answered 221, or closing
        FakeConnection(True, "192.0.2.2"),
        FakeConnection(True, "2001:db8::1"),
        FakeConnection(True, "2001:db8::2"),  # same /64
    ]
    registry.open.update(sessions)
    assert registry.count_client("192.0.2.1") == 1
    assert registry.count_client("2001:db8::99") == 2
    config = parse_config("[limits]\nmax_connections_per_ip = 1", "t")
    assert registry.refusal_for("192.0.2.1", config) == TOO_MANY_FROM_CLIENT
    assert registry.refusal_for("192.0.2.3", config) is None
    assert registry.client_is_full("192.0.2.1", config)
    assert not registry.client_is_full("192.0.2.3", config)


def test_a_full_listener_refuses_before_the_banner() -> None:
    registry = SessionRegistry()
    registry.open.update([FakeConnection(True, f"192.0.2.{n}") for n in range(2)])
    config = parse_config("[limits]\nmax_connections = 2", "t")
    assert registry.refusal_for("198.51.100.1", config) == TOO_MANY_CONNECTIONS


def test_proxy_protocol_admits_trusted_proxies_only() -> None:
    config = parse_config('[server]\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.0/8"]', "t")
    registry = SessionRegistry()
    assert registry.refusal_for("127.0.0.1", config) is None
    refusal = registry.refusal_for("192.0.2.1", config)
    assert refusal == UNTRUSTED_PROXY and refusal.code == 0  # no reply at all


def test_drain_closes_idle_sessions_then_busy_ones_after_the_grace() -> None:
    idle = FakeConnection(True, "192.0.2.1")
    busy = FakeConnection(True, "192.0.2.2", idle=False)
    registry = SessionRegistry()
    registry.open.update([idle, busy])

    async def drain() -> None:
        await registry.drain(0.1)

    asyncio.run(drain())
    assert registry.draining
    assert idle.closed_with[0] == SHUTTING_DOWN
    assert busy.closed_with == [SHUTTING_DOWN]  # once, when the grace ran out
    assert registry.refusal_for("192.0.2.3", parse_config("", "t")) == SHUTTING_DOWN
