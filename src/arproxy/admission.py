"""Connection admission and drain: who may connect, and closing down gracefully.

The registry holds the open connections of one listener (one worker process). A new
connection is refused, before any banner, when the service is draining, when the
listener is full, when PROXY protocol is on and the peer is not a trusted proxy, or
when its client already has `limits.max_connections_per_ip` sessions in progress.
`drain` closes idle sessions at once and busy ones when their transaction is over.
The total is per worker; the per-client count is shared by the workers of one
instance when `serve` is given their `shared.WorkerShare` (README, "State: per worker,
shared").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from arproxy.config import Config
from arproxy.ratelimit import client_key
from arproxy.replies import (
    SHUTTING_DOWN,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_CLIENT,
    UNTRUSTED_PROXY,
    Reply,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("arproxy.server")


class Connection(Protocol):
    """What the registry reads of an open connection (`server.ArproxySMTP`)."""

    @property
    def in_progress(self) -> bool:
        """Not yet answered 221 and not closing."""

    @property
    def client_text(self) -> str:
        """The client's address once known, else the peer's `ip:port`."""

    @property
    def is_idle(self) -> bool:
        """No transaction in progress."""

    @property
    def peer_text(self) -> str: ...

    def close_with(self, reply: Reply, *, logged: bool = False) -> None: ...


class ClientCounts(Protocol):
    """Sessions per client counted across the workers of an instance (shared.WorkerShare)."""

    def reserve(self, client_ip: str, local: int, limit: int) -> bool: ...

    def publish(self, client_ip: str, local: int) -> None: ...


class _OpenSessions(set[Connection]):
    """The open sessions; a session leaving tells the shared count (its client's
    count in this worker is published again without it)."""

    def __init__(self, on_discard: Callable[[Connection], None]) -> None:
        super().__init__()
        self._on_discard = on_discard

    def discard(self, connection: object) -> None:
        present = connection in self
        super().discard(connection)
        if present:
            self._on_discard(connection)  # type: ignore[arg-type]  # it was in the set


class SessionRegistry:
    """The open sessions of one listener, so that shutdown can drain them.

    With `shared` (several workers), the per-client limit counts every worker's
    sessions: this worker's count of a client is published when one of its sessions
    is admitted or leaves. A session answered 221 still counts in the other workers'
    eyes until its connection is gone (moments later): the error is on the safe side.
    """

    def __init__(self, shared: ClientCounts | None = None) -> None:
        self.shared = shared
        self.open: set[Connection] = _OpenSessions(self._left) if shared else set()
        self.draining = False

    def _left(self, connection: Connection) -> None:
        assert self.shared is not None
        client = connection.client_text
        self.shared.publish(client, self.count_client(client))

    def refusal_for(self, peer_ip: str, config: Config) -> Reply | None:
        """Why a new connection from `peer_ip` may not even get a banner, if so
        (RFC 5321 section 3.1: a 421 instead of the 220 greeting)."""
        if self.draining:
            return SHUTTING_DOWN
        # Every open socket counts against the total (it holds memory and a file);
        # the per-address limit counts sessions in progress (see count_client).
        if len(self.open) >= config.limits.max_connections:
            return TOO_MANY_CONNECTIONS
        if config.server.proxy_protocol and not in_networks(peer_ip, config.server.trusted_proxies):
            return UNTRUSTED_PROXY
        if not config.server.proxy_protocol and self.client_is_full(peer_ip, config):
            return TOO_MANY_FROM_CLIENT
        return None

    def client_is_full(self, client_ip: str, config: Config) -> bool:
        """Whether `client_ip` already has as many sessions as it may have. With
        several workers, a `False` counts the session about to start (shared.reserve)."""
        local = self.count_client(client_ip)
        limit = config.limits.max_connections_per_ip
        if self.shared is not None:
            return not self.shared.reserve(client_ip, local, limit)
        return local >= limit

    def count_client(self, client_ip: str) -> int:
        """Sessions in progress from this client: per address for IPv4, per /64 for
        IPv6 (one IPv6 host has a whole /64 to pick addresses from). A session that
        has been answered 221 or is closing is over for the client, which may
        already open its next one (Postfix does as soon as it has its 250): it no
        longer counts."""
        key = client_key(client_ip)
        return sum(
            1
            for connection in self.open
            if connection.in_progress and client_key(connection.client_text) == key
        )

    async def wait_closed(self, timeout: float) -> None:
        """After drain: let the closed sessions' connection_lost run (it starts their
        downstream clean-up) before the service stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def drain(self, grace: float) -> None:
        """Close idle sessions now, busy ones when done, the rest after `grace` seconds."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.open and loop.time() < deadline:
            for connection in list(self.open):
                if connection.is_idle:
                    connection.close_with(SHUTTING_DOWN)
            await asyncio.sleep(0.05)
        for connection in list(self.open):
            log.warning(
                "session %s still busy after %.0fs: closing it", connection.peer_text, grace
            )
            connection.close_with(SHUTTING_DOWN)


def in_networks(ip: str, networks: Sequence[IPNetwork]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)
