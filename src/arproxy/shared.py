"""State the worker processes of one instance share: sessions per client, AUTH failures.

With `server.workers > 1` a client must not get N times its per-address session limit
(`limits.max_connections_per_ip`) or a password guesser N times `auth.max_failures`
attempts, whichever worker the kernel hands each connection to. So the supervisor
(arproxy.supervisor) makes one `SharedState` before forking: two fixed-size hash
tables in anonymous shared memory (a memfd, mapped MAP_SHARED, inherited by every
worker), guarded by a POSIX record lock on that memfd.

Why these mechanisms:
- no process in between (nothing to restart, no protocol): each worker reads and
  writes the tables itself, holding the lock for a few microseconds;
- `fcntl.lockf` locks belong to the process and the kernel releases them when it
  dies, so a worker killed while holding the lock cannot stall the others (a
  semaphore would stay taken); a `threading.Lock` beside it orders the threads of
  one process, which a process-owned lock does not;
- each worker keeps its own count column, and the supervisor zeroes the column of a
  worker that died as soon as it reaps it (not when the next one starts in its place,
  up to 4 s later), so a crash leaks no sessions;
- times are `time.monotonic()`, CLOCK_MONOTONIC, the same clock in every process.

Bounds: both tables have a fixed number of slots, hashed into buckets of `WAYS` slots
with a key made at start (`os.urandom`), so no client can choose to collide with
another. A full bucket gives up its least useful slot (no sessions, or the oldest
failures): as with the in-process limiter's `max_tracked`, a client with very many
addresses can make the limiter forget some failures, never count one twice. Across
instances (M machines) these tables are not shared: `[state] redis_url` replaces them
with Redis (arproxy.redisstate; README, "State: per worker, shared").
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from arproxy.ratelimit import ClientKey, Decision, client_key, failure_delay

WAYS = 8  # slots per bucket
KEY_MEMO = 4096  # addresses whose table key a process remembers (SharedState.key)
CLEAR_CHUNK = 1024  # slots cleared per hold of the lock (SharedState.clear_worker)
_KEY = struct.Struct("17s")  # tag byte + 16 bytes (IPv4, IPv6 /64, or a name's hash)
_EMPTY = bytes(17)
AUTH_TABLE_BYTES = 8 * 1024 * 1024  # about 100 000 clients at max_failures = 5
AUTH_WINDOW = 600.0
AUTH_BASE_DELAY = 1.0
AUTH_MAX_DELAY = 16.0


class SharedState:
    """Both tables, in one shared mapping; make it before forking the workers.

    `workers` count columns, room for `workers * max_connections * 2` clients with
    sessions (twice what can be open at once), and the last `max_failures` failure
    times of the clients that failed AUTH (AUTH_TABLE_BYTES).
    """

    def __init__(self, workers: int, max_connections: int, max_failures: int) -> None:
        if workers < 1 or max_connections < 1 or max_failures < 1:
            raise ValueError("workers, max_connections and max_failures must be at least 1")
        self.workers = workers
        self.max_failures = max_failures
        self._secret = os.urandom(16)
        counts_layout = struct.Struct(f"<17s{workers}H")
        auth_layout = struct.Struct(f"<17s{max_failures}d")
        count_buckets = -(-workers * max_connections * 2 // WAYS)
        auth_buckets = max(16, AUTH_TABLE_BYTES // (auth_layout.size * WAYS))
        size = (count_buckets * counts_layout.size + auth_buckets * auth_layout.size) * WAYS
        self._fd = os.memfd_create("arproxy-shared", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        self._thread_lock = threading.Lock()
        self._keys: dict[str, bytes] = {}  # key() of recent addresses, per process
        self._digests: dict[bytes, int] = {}  # their keyed hashes (bucket())
        self.counts = _Table(self._map, 0, count_buckets, counts_layout)
        self.auth = _Table(
            self._map, count_buckets * counts_layout.size * WAYS, auth_buckets, auth_layout
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the tables, against other processes and other threads."""
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def key(self, ip: str) -> bytes:
        """The 17-byte table key of `ip`'s client (ratelimit.client_key: IPv4 address,
        IPv6 /64, or for anything else a keyed hash of the text). Remembered per
        process for the last KEY_MEMO addresses: a connection asks for it two or three
        times, and parsing the address was most of a table update's cost."""
        found = self._keys.get(ip)
        if found is None:
            if len(self._keys) >= KEY_MEMO:
                self._keys.clear()  # a burst of new addresses: start over, stay bounded
            found = self._keys[ip] = self._encode(client_key(ip))
        return found

    def _encode(self, key: ClientKey) -> bytes:
        if isinstance(key, ipaddress.IPv4Address):
            return b"\x04" + key.packed + bytes(12)
        if isinstance(key, ipaddress.IPv6Network):
            return b"\x06" + key.network_address.packed
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), key=self._secret, digest_size=16)
        return b"\x01" + digest.digest()

    def bucket(self, key: bytes, table: _Table) -> int:
        digest = self._digests.get(key)
        if digest is None:
            if len(self._digests) >= KEY_MEMO:
                self._digests.clear()
            hashed = hashlib.blake2b(key, key=self._secret, digest_size=8).digest()
            digest = self._digests[key] = int.from_bytes(hashed, "little")
        return digest % table.buckets

    def clear_worker(self, worker: int) -> None:
        """Forget worker `worker`'s sessions (it died; the supervisor calls this when it
        reaps it). The table has `workers * max_connections * 2` slots (128 000 with 64
        workers): only each slot's key and this worker's count are read, and the lock
        is taken per CLEAR_CHUNK slots, so the workers' admissions, which wait for it
        on their event loops, are never held up for the whole scan. (Each of their
        updates is a locked read-modify-write: one that reads a count not yet cleared
        only counts too many for a moment, on the safe side.)"""
        table, column = self.counts, _KEY.size + 2 * worker
        size, total = table.layout.size, table.buckets * WAYS
        for first in range(0, total, CLEAR_CHUNK):
            with self.locked():
                for slot in range(first, min(first + CLEAR_CHUNK, total)):
                    at = table.offset + slot * size
                    if table.buf[at + column : at + column + 2] == b"\0\0":
                        continue
                    key, values = table.read(slot)
                    counts = [int(c) for c in values]
                    counts[worker] = 0
                    table.write(slot, _EMPTY if not any(counts) else key, counts)

    def for_worker(self, worker: int) -> WorkerShare:
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker index {worker} outside 0..{self.workers - 1}")
        return WorkerShare(self, worker)


class _Table:
    """Fixed slots of one layout (key, then values) in the shared mapping."""

    def __init__(self, buf: mmap.mmap, offset: int, buckets: int, layout: struct.Struct) -> None:
        self.buf = buf
        self.offset = offset
        self.buckets = buckets
        self.layout = layout
        self.width = len(layout.unpack(bytes(layout.size))) - 1  # values after the key

    def read(self, slot: int) -> tuple[bytes, list[Any]]:
        """The slot's key and its values (counts as int, times as float)."""
        key, *values = self.layout.unpack_from(self.buf, self.offset + slot * self.layout.size)
        return key, values

    def write(self, slot: int, key: bytes, values: list[int] | list[float]) -> None:
        if key == _EMPTY:
            values = [0] * len(values)
        self.layout.pack_into(self.buf, self.offset + slot * self.layout.size, key, *values)

    def find(
        self, bucket: int, key: bytes, usefulness: Callable[[list[Any]], float]
    ) -> tuple[int, bool, list[Any]]:
        """The slot holding `key` (found: True, its values), else an empty one, else
        the least useful of the bucket (found: False, zero values, for the caller to
        overwrite)."""
        first = bucket * WAYS
        size, buf = self.layout.size, self.buf
        empty = None
        # The keys alone first (a slice each): the values are unpacked for one slot only.
        for slot in range(first, first + WAYS):
            at = self.offset + slot * size
            row_key = buf[at : at + _KEY.size]
            if row_key == key:
                return slot, True, self.read(slot)[1]
            if empty is None and row_key == _EMPTY:
                empty = slot
        zeros = [0] * self.width
        if empty is not None:
            return empty, False, zeros
        rows = [(slot, self.read(slot)[1]) for slot in range(first, first + WAYS)]
        slot, _ = min(rows, key=lambda row: usefulness(row[1]))
        return slot, False, zeros


class WorkerShare:
    """One worker's view: its session counts (`reserve`, `publish`) and the shared
    AUTH limiter (`auth_limiter`)."""

    def __init__(self, state: SharedState, worker: int) -> None:
        self.state = state
        self.worker = worker

    def reserve(self, client_ip: str, local: int, limit: int) -> bool:
        """Whether one more session of `client_ip` fits under `limit` across all
        workers, this one having `local` in progress; if so, it is counted now (as
        local + 1), before the session starts, so two workers cannot both take the
        last place."""
        state = self.state
        key = state.key(client_ip)
        with state.locked():
            slot, _, values = state.counts.find(state.bucket(key, state.counts), key, _sessions)
            counts = [int(c) for c in values]
            others = sum(counts) - counts[self.worker]
            fits = others + local < limit
            counts[self.worker] = min(local + 1 if fits else local, 0xFFFF)
            state.counts.write(slot, key if any(counts) else _EMPTY, counts)
        return fits

    def publish(self, client_ip: str, local: int) -> None:
        """This worker now has `local` sessions of `client_ip` in progress."""
        state = self.state
        key = state.key(client_ip)
        with state.locked():
            slot, found, values = state.counts.find(state.bucket(key, state.counts), key, _sessions)
            if not found and local == 0:
                return  # nothing counted, nothing to take back
            counts = [int(c) for c in values]
            counts[self.worker] = min(local, 0xFFFF)
            state.counts.write(slot, key if any(counts) else _EMPTY, counts)

    def sessions(self, client_ip: str) -> int:
        """Sessions of `client_ip` counted by all workers (for tests and metrics)."""
        state = self.state
        key = state.key(client_ip)
        with state.locked():
            _, _, values = state.counts.find(state.bucket(key, state.counts), key, _sessions)
        return sum(int(c) for c in values)

    def auth_limiter(self, clock: Callable[[], float] = time.monotonic) -> SharedAuthLimiter:
        return SharedAuthLimiter(self.state, clock)


def _sessions(counts: list[Any]) -> float:
    return float(sum(counts))


def _newest(times: list[Any]) -> float:
    return float(max(times))


class SharedAuthLimiter:
    """ratelimit.AuthFailureLimiter's rules (same window, delays and cut-off), with the
    failure times kept in the shared table, so every worker sees every failure."""

    def __init__(self, state: SharedState, clock: Callable[[], float] = time.monotonic) -> None:
        self._state = state
        self._clock = clock
        self._max_failures = state.max_failures

    def blocked(self, ip: str) -> bool:
        """Whether the client has used up its attempts (see AuthFailureLimiter)."""
        return self._recent(str(ip), self._clock()) >= self._max_failures

    def delay_for(self, ip: str) -> float:
        return failure_delay(self._recent(str(ip), self._clock()), AUTH_BASE_DELAY, AUTH_MAX_DELAY)

    def record_failure(self, ip: str) -> Decision:
        now = self._clock()
        state = self._state
        key = state.key(str(ip))
        with state.locked():
            slot, _, values = state.auth.find(state.bucket(key, state.auth), key, _newest)
            times = [float(t) for t in values if t and now - t < AUTH_WINDOW]
            earlier = len(times)
            times = [*times, now][-self._max_failures :]
            state.auth.write(slot, key, times + [0.0] * (self._max_failures - len(times)))
        return Decision(
            disconnect=earlier + 1 >= self._max_failures,
            delay=failure_delay(earlier, AUTH_BASE_DELAY, AUTH_MAX_DELAY),
            over=earlier >= self._max_failures,
        )

    def record_success(self, ip: str) -> None:
        state = self._state
        key = state.key(str(ip))
        with state.locked():
            slot, found, _ = state.auth.find(state.bucket(key, state.auth), key, _newest)
            if found:
                state.auth.write(slot, _EMPTY, [0.0] * self._max_failures)

    def _recent(self, ip: str, now: float) -> int:
        state = self._state
        key = state.key(ip)
        with state.locked():
            _, _, values = state.auth.find(state.bucket(key, state.auth), key, _newest)
        return sum(1 for t in values if t and now - t < AUTH_WINDOW)
