"""Connection admission and drain: who may connect, and closing down gracefully.

The registry holds the open connections of one listener (one worker process). A new
connection is refused, before any banner, when the service is draining, when the
listener is full, when PROXY protocol is on and the peer is not a trusted proxy, or
when its client already has `limits.max_connections_per_ip` sessions in progress.
`drain` closes idle sessions at once and busy ones when their transaction is over.
The total is per worker; the per-client count is shared by the workers of one
instance when `serve` is given their `shared.WorkerShare`, and by every instance with
`[state] redis_url` (`RemoteCounts`, arproxy.redisstate) (README, "State: per worker,
shared").
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator, MutableSet, Sequence
from typing import Protocol

from arproxy.config import Config
from arproxy.ratelimit import ClientKey, client_key
from arproxy.redisstate import RateLimitedLog, StateUnavailable
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


class RemoteCounts(Protocol):
    """Sessions per client counted across instances (redisstate.RedisSessionCounts);
    both methods may raise redisstate.StateUnavailable."""

    async def reserve(self, client_ip: str, limit: int) -> str | None:
        """A lease when one more session fits under `limit` (counted now), else None."""

    async def release(self, lease: str) -> None: ...


class OpenSessions(MutableSet[Connection]):
    """The open sessions, indexed by their client's key (`ratelimit.client_key`), so
    that counting one client's sessions reads only that client's, not every open
    session (that parsed every open session's address for each new connection: a
    third of admission's CPU at 20 sessions, growing with the number of sessions).

    A session of the listener is `opened` before its client is known (the socket's
    address is being admitted, or a PROXY header is awaited) and counts under no
    client until `client_known`; `add` takes a session whose `client_text` is its
    client's address already. Every change goes through `add`, `opened`,
    `client_known` and `discard`; `on_discard` is told of each session that leaves.
    """

    def __init__(self, on_discard: Callable[[Connection], None] | None = None) -> None:
        self._key_of: dict[Connection, ClientKey | None] = {}  # None: client not known yet
        self._by_key: dict[ClientKey, set[Connection]] = {}
        self._on_discard = on_discard

    def __contains__(self, connection: object) -> bool:
        return connection in self._key_of

    def __iter__(self) -> Iterator[Connection]:
        return iter(self._key_of)

    def __len__(self) -> int:
        return len(self._key_of)

    def add(self, connection: Connection) -> None:
        """A session whose `client_text` is its client's address."""
        if connection not in self._key_of:
            self._index(connection, client_key(connection.client_text))

    def update(self, connections: Iterable[Connection]) -> None:
        for connection in connections:
            self.add(connection)

    def opened(self, connection: Connection) -> None:
        """A session whose client is not known yet: it counts in the total only. (Its
        `client_text` is then the peer's ``ip:port``, which for IPv6 can read as an
        address of the client's own /64, e.g. ``2001:db8::1:5000``: counted under it,
        the session stood in its own way when admitted.)"""
        if connection not in self._key_of:
            self._key_of[connection] = None

    def client_known(self, connection: Connection) -> None:
        """`connection.client_text` is its client's address now (from the socket or a
        PROXY header): count it under that client from now on."""
        if connection not in self._key_of:
            return
        old = self._key_of[connection]
        new = _address_key(connection.client_text)
        if new == old:
            return
        if old is not None:
            self._unindex(connection, old)
        self._index(connection, new)

    def discard(self, connection: Connection) -> None:
        if connection not in self._key_of:
            return
        key = self._key_of.pop(connection)
        if key is not None:
            self._unindex(connection, key)
        if self._on_discard is not None:
            self._on_discard(connection)

    def of_client(self, key: ClientKey) -> Iterable[Connection]:
        """The open sessions counted under `key`, in progress or not."""
        return self._by_key.get(key, ())

    def _index(self, connection: Connection, key: ClientKey) -> None:
        self._key_of[connection] = key
        self._by_key.setdefault(key, set()).add(connection)

    def _unindex(self, connection: Connection, key: ClientKey) -> None:
        sessions = self._by_key[key]
        sessions.discard(connection)
        if not sessions:
            del self._by_key[key]


class SessionRegistry:
    """The open sessions of one listener, so that shutdown can drain them.

    With `shared` (several workers), the per-client limit counts every worker's
    sessions: this worker's count of a client is published when one of its sessions
    is admitted or leaves. A session answered 221 still counts in the other workers'
    eyes until its connection is gone (moments later): the error is on the safe side.
    """

    def __init__(
        self, shared: ClientCounts | None = None, remote: RemoteCounts | None = None
    ) -> None:
        self.shared = None if remote is not None else shared  # Redis counts every worker
        self.remote = remote
        self.open = OpenSessions(self._left if self.shared else None)
        self.draining = False
        self._down = RateLimitedLog()
        self._releasing: set[asyncio.Task[None]] = set()

    async def reserve_remote(self, client_ip: str, config: Config) -> tuple[bool, str | None]:
        """With `remote`: whether `client_ip` may open one more session across every
        instance, and the lease that counts it. Redis down: admitted uncounted (fail
        open), logged once per redisstate.LOG_EVERY seconds."""
        assert self.remote is not None
        try:
            lease = await self.remote.reserve(client_ip, config.limits.max_connections_per_ip)
        except StateUnavailable as exc:
            self._down.warning("state: admitting connections uncounted: %s", exc)
            return True, None
        return lease is not None, lease

    def release(self, lease: str | None) -> asyncio.Task[None] | None:
        """The session holding `lease` is over: stop counting it (in the background;
        if Redis is down the lease expires by itself, redisstate.session_ttl). The
        task, for a caller that must know the place is free before it answers."""
        if lease is None or self.remote is None:
            return None
        task = asyncio.get_running_loop().create_task(self._release(lease))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def _release(self, lease: str) -> None:
        assert self.remote is not None
        try:
            await self.remote.release(lease)
        except StateUnavailable as exc:
            self._down.warning("state: a session lease is left to expire: %s", exc)

    def session_over(self, connection: Connection) -> None:
        """`connection` no longer counts (its last reply is about to go out): with
        several workers, publish its client's count now rather than when the
        connection is gone, so the client's next session, on any worker, finds its
        place free."""
        if self.shared is not None and connection in self.open:
            self._left(connection)

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
        if self.remote is not None:
            return False  # counted in Redis before the session opens (reserve_remote)
        local = self.count_client(client_ip)
        limit = config.limits.max_connections_per_ip
        if self.shared is not None:
            return not self.shared.reserve(client_ip, local, limit)
        return local >= limit

    def count_client(self, client_ip: str) -> int:
        """Sessions in progress from this client: per address for IPv4, per /64 for
        IPv6 (one IPv6 host has a whole /64 to pick addresses from), an IPv4-mapped
        IPv6 address as its IPv4 address; a session whose client is not known yet
        (`OpenSessions.opened`) is nobody's. A session that has been answered 221 or
        is closing is over for the client, which may already open its next one
        (Postfix does as soon as it has its 250): it no longer counts.

        Reads only this client's open sessions (`OpenSessions.of_client`), whatever
        the number of others. Whether one is still in progress is read from the
        session itself, not kept here: its transport may start closing without a word
        to us (aiosmtpd's QUIT and timeouts, a failed write, a TLS shutdown)."""
        return sum(
            1
            for connection in self.open.of_client(_address_key(client_ip))
            if connection.in_progress
        )

    async def wait_closed(self, timeout: float) -> None:
        """After drain: let the closed sessions' connection_lost run (it starts their
        downstream clean-up) before the service stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._releasing:  # the leases of the last sessions, so no count outlives us
            await asyncio.wait(self._releasing, timeout=max(0.01, deadline - loop.time()))

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


@functools.lru_cache(maxsize=1024)
def _address_key(client_ip: str) -> ClientKey:
    """`client_key` of a client's address, remembered: each connection asks for it three
    times (refusal_for, admit_client, client_known), and busy clients come back. Only
    client addresses come here, not the one-off "ip:port" texts of sessions not yet
    admitted, which would only push them out."""
    return client_key(client_ip)


def in_networks(ip: str, networks: Sequence[IPNetwork]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)
