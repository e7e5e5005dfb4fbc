"""`server.workers = 2` under a service manager: the supervisor serves the workers'
summed metrics and is the one process that talks to systemd (sd_notify(3)).

The notify socket is a real AF_UNIX datagram socket with SO_PASSCRED, so each
datagram carries the sender's pid (SCM_CREDENTIALS), as systemd checks it against
MAINPID.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from pathlib import Path

import pytest

from .conftest import MakeArproxy
from .peers import SmtpSink, free_port, wait_for
from .test_deploy import scrape, value
from .test_workers import WORKERS, pids_of, send, started_workers

ACCEPTED = 'arproxy_transactions_total{outcome="accepted",stage="downstream"}'
MANY_WORKERS = 8  # each worker's readiness SIGUSR1 is one more chance for a bad mask
RUNS = 3
SERVING = f"all {MANY_WORKERS} workers serving"


def blocked_signals(pid: int) -> dict[int, set[signal.Signals]]:
    """Thread id -> the signals it blocks, for every thread of `pid` (proc(5): SigBlk)."""
    masks: dict[int, set[signal.Signals]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        bits = int(status.split("SigBlk:", 1)[1].split()[0], 16)
        masks[int(task.name)] = {sig for sig in signal.Signals if bits >> (sig - 1) & 1}
    return masks


def test_every_thread_of_the_supervisor_blocks_the_signals(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """The metrics endpoint's thread inherits the supervisor's mask: a signal sent to
    the process can only wait for `sigtimedwait`, never take its default action
    (signal(7): a process-directed signal goes to any thread not blocking it)."""
    port = free_port()
    proxy = make_arproxy(
        smtp_sink.url, server=WORKERS, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    scrape(port)  # the endpoint's thread (and a request thread) have run
    supervisor = proxy.process.pid
    masks = blocked_signals(supervisor)
    # The main thread sleeps in sigtimedwait, which unblocks the awaited signals for
    # the wait (that is how it takes them): the others are what can go wrong.
    others = {tid: blocked for tid, blocked in masks.items() if tid != supervisor}
    assert others, masks  # the endpoint's thread at least
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
    for tid, blocked in others.items():
        assert wanted <= blocked, f"thread {tid} leaves {wanted - blocked} unblocked"
    assert "started before the signals were blocked" not in proxy.log


def test_many_workers_with_metrics_start_serve_and_stop(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """Eight workers each wake the supervisor with SIGUSR1 while it forks the next:
    every run starts, relays, is scraped and stops with exit 0, its private metrics
    directory removed."""
    for run in range(RUNS):
        port = free_port()
        proxy = make_arproxy(
            smtp_sink.url,
            server=f"workers = {MANY_WORKERS}\n",
            extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
        )
        wait_for(lambda p=proxy: SERVING in p.log, "readiness")  # type: ignore[misc]
        send(proxy.port, f"{run}@many.test")
        assert value(scrape(port), ACCEPTED) == 1
        directory = Path(proxy.log.split("(sum of ", 1)[1].split(")", 1)[0])
        assert directory.name.startswith(f"arproxy-metrics-{proxy.process.pid}-")
        assert proxy.stop() == 0, proxy.log
        assert not directory.exists()
        assert "Traceback" not in proxy.log


def test_metrics_of_both_workers_are_summed_by_the_supervisor(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    proxy = make_arproxy(
        smtp_sink.url, server=WORKERS, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    workers = started_workers(proxy.log)
    messages = 0
    # A session per message: the kernel picks a worker each time; go on until both
    # workers relayed at least one, so the sum must add two processes' files.
    while len(pids_of(r"id=\S+ .* relayed: 250", proxy.log)) < 2:
        send(proxy.port, f"{messages}@metrics.test")
        messages += 1
        assert messages < 400, "one worker never took a session"
    served = pids_of(r"id=\S+ .* relayed: 250", proxy.log)
    assert set(served) == set(workers.values())
    text = scrape(port)
    assert value(text, ACCEPTED) == messages
    assert value(text, "arproxy_relay_duration_seconds_count") == messages
    # Only the supervisor bound the port: no worker logged an endpoint of its own.
    assert "cannot serve metrics" not in proxy.log
    assert proxy.log.count("metrics on http://") == 1
    supervisor = proxy.process.pid
    assert pids_of(r"metrics on http://", proxy.log) == {supervisor: 1}


def test_metrics_private_directory_is_removed_at_exit(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    proxy = make_arproxy(
        smtp_sink.url, server=WORKERS, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    send(proxy.port, "one@metrics.test")
    directory = Path(proxy.log.split("(sum of ", 1)[1].split(")", 1)[0])
    assert directory.is_dir() and any(directory.glob("counter_*.db"))
    assert proxy.stop() == 0
    assert not directory.exists()


def receive(listener: socket.socket) -> tuple[int, str]:
    """One datagram and the pid of its sender (SCM_CREDENTIALS)."""
    data, ancillary, _, _ = listener.recvmsg(4096, socket.CMSG_SPACE(12))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("iII", payload[:12])
            return pid, data.decode()
    raise AssertionError(f"no credentials with {data!r}")


def test_supervisor_alone_notifies_ready_then_stopping(
    make_arproxy: MakeArproxy,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        listener.bind(str(path))
        listener.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        proxy = make_arproxy(smtp_sink.url, server=WORKERS)
        supervisor = proxy.process.pid
        sender, ready = receive(listener)
        assert (sender, ready.split("\n")[0]) == (supervisor, "READY=1"), ready
        assert f"MAINPID={supervisor}" in ready
        wait_for(lambda: "all 2 workers serving" in proxy.log, "readiness logged")
        assert len(started_workers(proxy.log)) == 2
        proxy.process.send_signal(signal.SIGTERM)
        assert receive(listener) == (supervisor, "STOPPING=1")
        assert proxy.process.wait(60) == 0
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):  # nothing else: no worker notified
            print("unexpected:", receive(listener))
    assert os.environ["NOTIFY_SOCKET"] == str(path)
