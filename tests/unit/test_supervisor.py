"""The supervisor's restart rules, without serving: a worker that died is restarted
after a delay that doubles with each quick failure, never in a tight loop, and after
MAX_QUICK_FAILURES in a row the supervisor stops the others and will exit 1; its
sessions stop counting as soon as it is reaped (one test forks a child that exits)."""

from __future__ import annotations

import os

import pytest

from arproxy import supervisor
from arproxy.config import parse_config
from arproxy.service import Listeners
from arproxy.shared import SharedState
from arproxy.supervisor import Supervisor, _Slot

NOW = 7000.0


def make_supervisor() -> Supervisor:
    config = parse_config("[server]\nworkers = 2", "t")
    shared = SharedState(workers=2, max_connections=10, max_failures=5)
    sup = Supervisor(config, Listeners(()), shared, clock=lambda: NOW)  # a clock standing still
    sup.slots = [_Slot(0), _Slot(1)]
    return sup


def test_quick_failures_back_off_then_give_up(caplog: pytest.LogCaptureFixture) -> None:
    sup = make_supervisor()
    slot = sup.slots[0]
    delays = []
    for attempt in range(supervisor.MAX_QUICK_FAILURES - 1):
        slot.started = NOW  # died at once, every time
        sup._exited(slot, 1000 + attempt, 1)
        assert slot.restart_at is not None
        delays.append(slot.restart_at - NOW)
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert not sup.stopping
    # README: "one that failed 5 times in a row ... makes the supervisor stop the
    # others and exit 1": the 5th failure, not a 6th.
    assert supervisor.MAX_QUICK_FAILURES == 5
    slot.started = NOW
    sup._exited(slot, 2000, 1)
    assert sup.stopping and sup.failed  # run() then returns EXIT_FAILED
    assert slot.restart_at is None
    assert slot.quick_failures == 5
    assert "died (exit code 1): 5 failures in a row, each within 30s of its start" in caplog.text


def test_a_worker_that_ran_long_enough_starts_its_count_again() -> None:
    sup = make_supervisor()
    slot = sup.slots[1]
    slot.quick_failures = supervisor.MAX_QUICK_FAILURES
    slot.started = NOW - supervisor.STABLE_AFTER
    sup._exited(slot, 3000, -9)
    assert slot.quick_failures == 1
    assert slot.restart_at == NOW + supervisor.RESTART_FIRST_DELAY
    assert not sup.stopping


def test_an_exit_while_stopping_is_not_restarted() -> None:
    sup = make_supervisor()
    sup._stop()
    sup._exited(sup.slots[0], 4000, 0)
    assert sup.slots[0].restart_at is None and not sup.failed
    sup._exited(sup.slots[1], 4001, 1)
    assert sup.failed  # a worker that did not drain cleanly: exit 1


def test_a_dead_workers_sessions_stop_counting_when_it_is_reaped() -> None:
    """README "State: per worker, shared": the count column of a worker that died is
    cleared when the supervisor reaps it, not when its successor starts (0.5 to 30 s
    later): meanwhile its clients would be refused 421 for sessions nobody holds."""
    sup = make_supervisor()
    share = sup.shared.for_worker(0)
    assert share.reserve("192.0.2.1", 0, 2) and share.reserve("192.0.2.1", 1, 2)
    assert not sup.shared.for_worker(1).reserve("192.0.2.1", 0, 2)  # full: 2 of 2
    pid = os.fork()
    if pid == 0:  # the worker, dying at once
        os._exit(1)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    sup.slots[0].pid, sup.slots[0].started = pid, NOW
    sup._reap()
    assert sup.slots[0].pid is None
    assert sup.slots[0].restart_at is not None  # its successor is not started yet
    assert share.sessions("192.0.2.1") == 0
    assert sup.shared.for_worker(1).reserve("192.0.2.1", 0, 2)
