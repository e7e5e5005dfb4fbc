"""arproxy.admission: who may connect, and the drain (no socket: fake connections)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from arproxy.admission import SessionRegistry
from arproxy.config import parse_config
from arproxy.ratelimit import client_key
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


# --- the per-client index against the plain count over every open session ------------------

_IPS = (
    "192.0.2.1",
    "192.0.2.2",
    "::ffff:192.0.2.1",  # RFC 4291 section 2.5.5.2: the IPv4 client 192.0.2.1
    "2001:db8::1",
    "2001:db8::2",  # the same /64 as 2001:db8::1
    "2001:db8:0:1::1",  # another /64
    "fe80::1%eth0",  # a zone index does not split the count
    "fe80::2",
)
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "add", "admit", "quit", "close"]),
        st.integers(0, 7),  # which session
        st.sampled_from(_IPS),
        st.integers(1, 65535),  # its port: its client_text is "ip:port" until admitted
    ),
    max_size=60,
)


class _Session(FakeConnection):
    def __init__(self, client_text: str, *, admitted: bool) -> None:
        super().__init__(True, client_text)
        self.admitted = admitted


def _plain_count(sessions: Iterable[_Session], client_ip: str) -> int:
    """count_client by its definition, every session's key parsed again (the oracle)."""
    key = client_key(client_ip)
    return sum(
        1 for s in sessions if s.admitted and s.in_progress and client_key(s.client_text) == key
    )


@given(ops=_OPS)
def test_count_client_equals_the_plain_count_over_every_session(
    ops: list[tuple[str, int, str, int]],
) -> None:
    """Sessions open (client unknown), learn their client (socket or PROXY header),
    answer 221 or start closing (no longer in progress), and close, in any order; the
    indexed count always equals the plain sum over every open session."""
    registry = SessionRegistry()
    alive: dict[int, _Session] = {}
    for op, index, ip, port in ops:
        session = alive.get(index)
        if op == "open" and session is None:
            alive[index] = _Session(f"{ip}:{port}", admitted=False)
            registry.open.opened(alive[index])  # type: ignore[arg-type]
        elif op == "add" and session is None:
            alive[index] = _Session(ip, admitted=True)
            registry.open.add(alive[index])  # type: ignore[arg-type]
        elif op == "admit" and session is not None:
            session.client_text, session.admitted = ip, True
            registry.open.client_known(session)  # type: ignore[arg-type]
        elif op == "quit" and session is not None:
            session.in_progress = False
        elif op == "close" and session is not None:
            registry.open.discard(session)  # type: ignore[arg-type]
            del alive[index]
        assert set(registry.open) == set(alive.values())
        assert len(registry.open) == len(alive)
        for client_ip in _IPS:
            assert registry.count_client(client_ip) == _plain_count(alive.values(), client_ip)


def test_a_session_is_counted_under_its_client_once_known() -> None:
    registry = SessionRegistry()
    session = FakeConnection(True, "192.0.2.1:2525")
    registry.open.opened(session)  # type: ignore[arg-type]
    assert len(registry.open) == 1
    assert registry.count_client("192.0.2.1") == 0  # not yet admitted
    session.client_text = "192.0.2.1"
    registry.open.client_known(session)  # type: ignore[arg-type]
    assert registry.count_client("192.0.2.1") == 1
    assert registry.count_client("::ffff:192.0.2.1") == 1  # RFC 4291 section 2.5.5.2
    session.in_progress = False  # answered 221
    assert registry.count_client("192.0.2.1") == 0
    registry.open.discard(session)  # type: ignore[arg-type]
    registry.open.discard(session)  # type: ignore[arg-type]  # twice: no error
    assert not registry.open and registry.count_client("192.0.2.1") == 0


def test_an_ipv6_client_is_not_counted_against_itself_while_admitted() -> None:
    """The peer text of an IPv6 session from port 5000, "2001:db8::1:5000", reads as an
    address of the client's own /64: counted under it, the session being admitted took
    the client's only place (max_connections_per_ip = 1) and was refused."""
    registry = SessionRegistry()
    config = parse_config("[limits]\nmax_connections_per_ip = 1", "t")
    session = FakeConnection(True, "2001:db8::1:5000")
    registry.open.opened(session)  # type: ignore[arg-type]
    assert not registry.client_is_full("2001:db8::1", config)
    session.client_text = "2001:db8::1"
    registry.open.client_known(session)  # type: ignore[arg-type]
    assert registry.client_is_full("2001:db8::1", config)  # now it is the client's one
    assert registry.client_is_full("2001:db8::2", config)  # the same /64


def test_a_leaving_session_is_published_without_itself() -> None:
    """With several workers, a session leaving publishes its client's count without it."""

    class Counts:
        def __init__(self) -> None:
            self.published: list[tuple[str, int]] = []

        def reserve(self, client_ip: str, local: int, limit: int) -> bool:
            return local < limit

        def publish(self, client_ip: str, local: int) -> None:
            self.published.append((client_ip, local))

    counts = Counts()
    registry = SessionRegistry(counts)
    first, second = FakeConnection(True, "192.0.2.1"), FakeConnection(True, "192.0.2.1")
    registry.open.update([first, second])  # type: ignore[list-item]
    registry.open.discard(first)  # type: ignore[arg-type]
    registry.open.discard(first)  # type: ignore[arg-type]  # not open any more: no publish
    assert counts.published == [("192.0.2.1", 1)]
