"""The state the workers of one instance share (arproxy.shared): session counts per
client and AUTH failures, across processes, with the in-process limiter's rules."""

from __future__ import annotations

import fcntl
import os
import random

import pytest

from arproxy.ratelimit import AuthFailureLimiter, client_key
from arproxy.shared import CLEAR_CHUNK, KEY_MEMO, SharedState


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_the_per_client_limit_counts_every_workers_sessions() -> None:
    state = SharedState(workers=2, max_connections=10, max_failures=5)
    first, second = state.for_worker(0), state.for_worker(1)
    # Worker 0 admits three sessions of one client (limit 3): local 0, 1, 2.
    assert [first.reserve("192.0.2.1", local, 3) for local in range(3)] == [True] * 3
    # Worker 1 has none of them, yet the client is full.
    assert not second.reserve("192.0.2.1", 0, 3)
    assert second.reserve("192.0.2.2", 0, 3)  # another client is not
    # One of worker 0's sessions ends: worker 1 may take the place, and only one.
    first.publish("192.0.2.1", 2)
    assert second.reserve("192.0.2.1", 0, 3)
    assert not first.reserve("192.0.2.1", 2, 3)
    assert first.sessions("192.0.2.1") == 3


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    share = SharedState(workers=2, max_connections=10, max_failures=5).for_worker(0)
    assert share.reserve("2001:db8:1:2::1", 0, 2)
    assert share.reserve("2001:db8:1:2:ffff::9", 1, 2)
    assert share.sessions("2001:db8:1:2::77") == 2
    assert share.sessions("2001:db8:1:3::1") == 0
    assert share.reserve("::ffff:192.0.2.7", 0, 2)
    assert share.sessions("192.0.2.7") == 1


def test_a_dead_workers_sessions_are_cleared_before_its_successor_starts() -> None:
    state = SharedState(workers=2, max_connections=10, max_failures=5)
    assert state.for_worker(0).reserve("192.0.2.1", 0, 2)
    assert state.for_worker(1).reserve("192.0.2.1", 0, 2)
    assert not state.for_worker(1).reserve("192.0.2.1", 1, 2)
    state.clear_worker(0)  # worker 0 was killed with its session
    assert state.for_worker(1).sessions("192.0.2.1") == 1
    assert state.for_worker(1).reserve("192.0.2.1", 1, 2)


def test_clearing_a_dead_worker_keeps_the_others_counts_and_lets_go_of_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over a table of several CLEAR_CHUNKs (6000 slots): every session of worker 0 is
    forgotten, every one of worker 2 kept, and the lock the workers' admissions wait
    for is let go between chunks rather than held for the whole scan."""
    state = SharedState(workers=3, max_connections=1000, max_failures=5)
    clients = [f"10.0.{n // 250}.{n % 250}" for n in range(1500)]
    for n, client in enumerate(clients):
        assert state.for_worker(0).reserve(client, 0, 5)
        if n % 2:
            assert state.for_worker(2).reserve(client, 0, 5)
    holds = 0
    locked = state.locked

    def counting() -> object:
        nonlocal holds
        holds += 1
        return locked()

    monkeypatch.setattr(state, "locked", counting)
    state.clear_worker(0)
    slots = state.counts.buckets * 8
    assert holds == -(-slots // CLEAR_CHUNK) > 1
    monkeypatch.undo()
    assert [state.for_worker(1).sessions(c) for c in clients] == [n % 2 for n in range(1500)]


def test_the_tables_are_shared_with_forked_processes() -> None:
    state = SharedState(workers=2, max_connections=10, max_failures=3)
    pid = os.fork()
    if pid == 0:  # the child is worker 1: one session, three AUTH failures
        ok = state.for_worker(1).reserve("192.0.2.9", 0, 1)
        limiter = state.for_worker(1).auth_limiter()
        for _ in range(3):
            limiter.record_failure("192.0.2.9")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent = state.for_worker(0)
    assert not parent.reserve("192.0.2.9", 0, 1)
    assert parent.auth_limiter().blocked("192.0.2.9")
    assert not parent.auth_limiter().blocked("192.0.2.10")


def test_a_worker_dying_inside_the_lock_does_not_keep_it() -> None:
    """The lock is a POSIX record lock, which the kernel drops with its process: a
    worker killed while holding it must not stall the others."""
    state = SharedState(workers=2, max_connections=10, max_failures=3)
    pid = os.fork()
    if pid == 0:
        with state.locked():
            os.kill(os.getpid(), 9)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -9
    # LOCK_NB: raises at once if the dead child still held the lock.
    fcntl.lockf(state._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.lockf(state._fd, fcntl.LOCK_UN)


def test_the_shared_limiter_decides_as_the_in_process_one() -> None:
    """Differential: the same random failures, successes and clock steps, spread over
    two workers, give the same decisions as one in-process AuthFailureLimiter."""
    rng = random.Random(8601)
    clock = Clock()
    state = SharedState(workers=2, max_connections=10, max_failures=5)
    shared = [state.for_worker(w).auth_limiter(clock) for w in (0, 1)]
    local = AuthFailureLimiter(max_failures=5, clock=clock)
    clients = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]
    for _ in range(2000):
        ip = rng.choice(clients)
        worker = rng.choice(shared)
        action = rng.random()
        if action < 0.6:
            assert worker.delay_for(ip) == local.delay_for(ip)
            assert worker.record_failure(ip) == local.record_failure(ip)
        elif action < 0.65:
            worker.record_success(ip)
            local.record_success(ip)
        else:
            clock.now += rng.choice((0.5, 10.0, 120.0, 601.0))
        assert worker.blocked(ip) == local.blocked(ip)


def test_a_full_bucket_forgets_the_least_useful_client() -> None:
    """Capacity is bounded (twice the sessions that can be open): a client leaving
    frees its slot, and if every slot of a bucket is live anyway, the new client takes
    the place of the one with the fewest sessions (that client is undercounted: the
    documented limit), never of a busier one."""
    state = SharedState(workers=1, max_connections=4, max_failures=5)  # one bucket of 8
    share = state.for_worker(0)
    for n in range(20):  # clients come and go: their slots are reused
        assert share.reserve(f"203.0.113.{n}", 0, 5)
        share.publish(f"203.0.113.{n}", 0)
    busy = [f"192.0.2.{n}" for n in range(7)]
    for ip in busy:
        assert share.reserve(ip, 0, 5)
        assert share.reserve(ip, 1, 5)
    assert share.reserve("198.51.100.1", 0, 5)  # the eighth slot: one session
    assert share.reserve("198.51.100.2", 0, 5)  # a ninth client
    assert [share.sessions(ip) for ip in busy] == [2] * 7
    assert share.sessions("198.51.100.2") == 1
    assert share.sessions("198.51.100.1") == 0  # forgotten


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        SharedState(workers=0, max_connections=1, max_failures=1)
    with pytest.raises(ValueError):
        SharedState(workers=2, max_connections=1, max_failures=1).for_worker(2)


def test_remembered_keys_stay_bounded_and_right() -> None:
    """SharedState.key and bucket remember recent addresses per process (KEY_MEMO): past
    the bound they start over, and every answer is the one computed afresh."""
    state = SharedState(workers=2, max_connections=10, max_failures=5)
    fresh = SharedState(workers=2, max_connections=10, max_failures=5)
    fresh._secret = state._secret  # the same keyed hash, nothing remembered
    addresses = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(KEY_MEMO + 50)]
    for address in [*addresses, *addresses[:10]]:
        key = state.key(address)
        assert key == fresh._encode(client_key(address))
        assert state.bucket(key, state.counts) == fresh.bucket(key, fresh.counts)
        fresh._digests.clear()
    assert len(state._keys) <= KEY_MEMO and len(state._digests) <= KEY_MEMO
    counts = state.for_worker(0)
    assert counts.reserve(addresses[-1], 0, 1) and counts.sessions(addresses[-1]) == 1
