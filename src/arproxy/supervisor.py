"""The supervisor: `server.workers` processes serving the same listening sockets.

With `server.workers > 1`, `arproxy serve` becomes this parent process. It
1. validates what the workers will read (TLS pair, users file, signing keys:
   `service.check_files`), so a bad file is one error and exit 2 before anything is
   forked;
2. binds the listeners once (`server.listen`, `tls.implicit_listen`) and makes the
   shared tables (arproxy.shared) -- nothing else: no event loop, no thread, no
   resolver exists before the fork, each worker builds its own in `service.serve`;
3. forks the workers; each accepts on the inherited sockets with its own event loop
   and `WorkerResources` (a pre-bound shared socket rather than SO_REUSEPORT: no
   port race between workers, no kernel hashing that pins a client to a busy
   worker, and a restarted worker takes over the same sockets);
4. forwards SIGTERM and SIGINT (each worker drains, as `arproxy serve` does with one
   worker) and SIGHUP to every worker; on SIGHUP it first rereads the configuration
   file itself: an invalid one is one error line and no worker is signalled; a valid
   one becomes the configuration of workers started from then on (with the old value
   of each key that needs a restart, named in one warning line), and each worker
   applies the very text it checked (ConfigText; not the file read again, which may
   have been edited since) to its new sessions, then reloads its TLS pair and users
   file (service.Reloader);
5. forgets the sessions of a worker that died as soon as it reaps it (its column of
   the per-client counts, arproxy.shared), and restarts a worker that died while not
   asked to stop, after a delay that doubles
   with each quick failure of that worker (RESTART_FIRST_DELAY up to
   RESTART_MAX_DELAY), and gives up -- stops the others, exit 1 -- at the
   MAX_QUICK_FAILURES-th failure in a row, each within STABLE_AFTER seconds of its start
   (so MAX_QUICK_FAILURES - 1 restarts);
6. after SIGTERM exits 0 when every worker exited 0, else 1; a worker still running
   `server.shutdown_grace` + KILL_AFTER_GRACE seconds after the signal is killed.

Metrics and systemd (README, "Worker processes"): with `metrics.listen`, the supervisor
puts prometheus-client in multiprocess mode before forking -- in `metrics.multiprocess_dir`,
else $PROMETHEUS_MULTIPROC_DIR, else a private temporary directory it creates and removes
at exit --, empties it, and serves `metrics.listen` itself, summing the workers' files;
a worker that exits is marked dead (`metrics.worker_exited`); workers count, never bind
the port. The supervisor is the unit's MAINPID: it sends READY=1 once every worker has
told it (a byte on the readiness pipe, then SIGUSR1 to wake it) that it is serving, and
STOPPING=1 on SIGTERM/SIGINT; the workers run with NOTIFY_SOCKET unset, so they never
notify.

The signals are blocked in the parent first thing (`block_signals`, before any thread
-- the metrics endpoint's -- exists, so every thread inherits the mask and none takes
a signal's default action) and read synchronously (`sigtimedwait`), so none is lost
between two checks; a worker inherits the blocked mask and unblocks it
only once its event loop has its handlers, so an early SIGTERM is a drain, not a
default-action death. Each worker asks the kernel for SIGTERM when the parent dies
(PR_SET_PDEATHSIG), so a killed supervisor leaves no orphan serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from arproxy import metrics, sdnotify
from arproxy.config import Config, ConfigError, HostPort, for_reload, parse_config, read_config_text
from arproxy.service import LISTEN_BACKLOG, Listeners, StartupError, check_files, serve
from arproxy.shared import SharedState, WorkerShare

log = logging.getLogger("arproxy.supervisor")

# SIGUSR1: a worker wrote to the readiness pipe (arproxy.supervisor.Readiness).
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1})
RESTART_FIRST_DELAY = 0.5  # seconds before restarting a worker that died
RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long had a good start: its delay resets
MAX_QUICK_FAILURES = 5
KILL_AFTER_GRACE = 10.0  # seconds past shutdown_grace before stragglers get SIGKILL
POLL = 1.0  # longest wait for a signal (children are also reaped on each wake-up)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
_PR_SET_PDEATHSIG = 1


def run(config: Config, config_path: Path | None = None, config_text: str | None = None) -> int:
    """Serve with `config.server.workers` processes until SIGTERM/SIGINT; the exit code.

    0: stopped on request and every worker drained; 1: cannot listen, a worker had
    to be killed or exited non-zero, or workers kept failing; 2: a file named by the
    configuration is unusable (nothing was forked). `config_path`: the file SIGHUP
    rereads (None: the embedded default, which cannot change); `config_text`: the
    text `config` was read from, what a worker applies if it gets a SIGHUP of its own
    before the supervisor checked a newer one (`kill -HUP` of every process).
    """
    # First, before any thread exists (the metrics endpoint's, or any other): a thread
    # inherits the mask of the thread that starts it, and a process-directed signal is
    # delivered to any thread that does not block it -- where SIGUSR1/SIGTERM/SIGHUP
    # take their default action and kill the supervisor. Blocked everywhere, they wait
    # for `sigtimedwait` in Supervisor._run. Never unblocked: the process exits after.
    block_signals()
    try:
        check_files(config)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    try:
        listeners = bind_listeners(config)
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.server.listen, exc.strerror or exc)
        return EXIT_FAILED
    shared = SharedState(
        config.server.workers, config.limits.max_connections, config.auth.max_failures
    )
    try:
        served = SupervisorMetrics.start(config)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", config.metrics.listen, exc.strerror or exc)
        for sock in (*listeners.main, *listeners.implicit):
            sock.close()
        return EXIT_FAILED
    try:  # every way out of the supervisor removes its private directory (`close`)
        supervisor = Supervisor(config, listeners, shared, served, config_path=config_path)
        if config_text is not None:
            supervisor.checked.publish(config_text)
        return supervisor.run()
    finally:
        for sock in (*listeners.main, *listeners.implicit):
            sock.close()
        served.close()


def block_signals() -> None:
    """Block SIGNALS in the calling thread, and so in every thread it starts later.
    Call before any thread exists; one that already runs keeps its mask and may take a
    signal's default action (logged as an error, with the threads' names)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        log.error(
            "supervisor: thread(s) %s started before the signals were blocked: a signal "
            "may kill the supervisor",
            ", ".join(others),
        )


@dataclass
class SupervisorMetrics:
    """The supervisor's side of `metrics.listen`: the multiprocess directory and the
    endpoint summing it (nothing when `metrics.listen` is unset)."""

    endpoint: metrics.Endpoint | None = None
    directory: Path | None = None
    private: bool = False  # a temporary directory of ours, removed by `close`
    owner: int = 0  # the pid that made it: a forked worker never removes it

    @classmethod
    def start(cls, config: Config) -> SupervisorMetrics:
        """Choose and empty the directory, then serve; before any worker is forked (the
        mode and the directory reach the workers through the fork). OSError when the
        address cannot be bound."""
        if config.metrics.listen is None:
            return cls()
        directory = config.metrics.multiprocess_dir
        private = directory is None and not os.environ.get(metrics.MULTIPROC_ENV)
        if private:
            # The pid in the name tells an operator whose directory a stale one was
            # (a supervisor killed with SIGKILL cannot remove it; README, Metrics).
            directory = Path(tempfile.mkdtemp(prefix=f"arproxy-metrics-{os.getpid()}-"))
        chosen = metrics.use_multiprocess_dir(directory)
        assert chosen is not None
        metrics.clear_multiprocess_dir(chosen)
        try:
            endpoint = metrics.serve_endpoint(config.metrics.listen, None, multiprocess=True)
        except OSError:
            if private:
                shutil.rmtree(chosen, ignore_errors=True)
            raise
        log.info("metrics on http://%s/metrics (sum of %s)", config.metrics.listen, chosen)
        return cls(endpoint, chosen, private, os.getpid())

    def in_child(self) -> None:
        """In a forked worker: drop our copy of the endpoint's socket (the worker never
        serves metrics; the thread serving it exists only in the supervisor)."""
        if self.endpoint is not None:
            with contextlib.suppress(OSError):
                os.close(self.endpoint.server.fileno())

    def close(self) -> None:
        """Stop the endpoint and remove a private directory; only in the process that
        made it (a worker that somehow unwound into this code leaves it to its parent).
        A private directory left by a run that was killed is not removed by the next:
        another instance may be using one of the same prefix (README, Metrics)."""
        if self.endpoint is not None:
            self.endpoint.close()
        if self.private and self.directory is not None and os.getpid() == self.owner:
            shutil.rmtree(self.directory, ignore_errors=True)


class ConfigText:
    """The text of the configuration file as the supervisor last checked it (at start,
    then on each SIGHUP), for the workers to apply (service.Reloader.checked_text)
    instead of rereading the file: one edited again between the supervisor's check
    and a worker's read (or while a worker was stopped) would give that worker a
    configuration nobody checked, and different workers different ones. A memfd made
    before the fork; `publish` and `read` hold a POSIX record lock on it, so a read
    never sees half a text."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("arproxy-config", os.MFD_CLOEXEC)

    def publish(self, text: str) -> None:
        """In the supervisor, before it signals the workers."""
        data = text.encode("utf-8")
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(self.fd, len(data))
            os.pwrite(self.fd, data, 0)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def read(self) -> str | None:
        """In a worker on SIGHUP: the text last published (the one `serve` started
        with, then each one a SIGHUP checked), None if none was."""
        fcntl.lockf(self.fd, fcntl.LOCK_SH)
        try:
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, size, 0) if size else b""
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return data.decode("utf-8") if data else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Readiness:
    """Workers tell the supervisor they serve: each writes its slot index (one byte)
    to a pipe and wakes the supervisor with SIGUSR1 (signals of one kind coalesce, the
    pipe keeps every report). READY=1 goes to systemd once every slot has reported."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.ready: set[int] = set()
        self.notified = False

    def report(self, index: int, parent: int) -> None:
        """In a worker, once it accepts connections."""
        os.write(self.write_fd, bytes([index % 256]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent, signal.SIGUSR1)

    def collect(self) -> set[int]:
        """In the supervisor: the slots that reported since the last call."""
        reported: set[int] = set()
        while True:
            try:
                data = os.read(self.read_fd, 256)
            except BlockingIOError:
                return reported
            if not data:
                return reported
            reported.update(data)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def bind_listeners(config: Config) -> Listeners:
    """Listening sockets for the workers to share; OSError if an address is unusable."""
    main = bind(config.server.listen)
    implicit: tuple[socket.socket, ...] = ()
    try:
        if config.tls.implicit_listen is not None:
            implicit = bind(config.tls.implicit_listen)
    except OSError:
        for sock in main:
            sock.close()
        raise
    return Listeners(main, implicit)


def bind(address: HostPort) -> tuple[socket.socket, ...]:
    """One non-blocking listening socket per address `address.host` resolves to, bound
    as asyncio's create_server binds (SO_REUSEADDR; IPv6 sockets IPv6 only)."""
    infos = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return tuple(sockets)


@dataclass
class _Slot:
    """One worker position: its current process and its failure record."""

    index: int
    pid: int | None = None
    started: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    config: Config
    listeners: Listeners
    shared: SharedState
    served: SupervisorMetrics = field(default_factory=SupervisorMetrics)
    readiness: Readiness = field(default_factory=Readiness)
    checked: ConfigText = field(default_factory=ConfigText)
    slots: list[_Slot] = field(default_factory=list)
    config_path: Path | None = None
    stopping: bool = False
    failed: bool = False
    kill_at: float = 0.0
    clock: Callable[[], float] = time.monotonic  # injected by the unit tests

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.readiness.close()
            self.checked.close()

    def _run(self) -> int:
        self.slots = [_Slot(index) for index in range(self.config.server.workers)]
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # already, by `run`: idempotent
        log.info(
            "supervisor pid %d: starting %d workers on %s%s",
            os.getpid(),
            len(self.slots),
            self.config.server.listen,
            f" and {self.config.tls.implicit_listen}" if self.config.tls.implicit_listen else "",
        )
        for slot in self.slots:
            self._start(slot)
        while True:
            received = signal.sigtimedwait(SIGNALS, self._wait_time())
            if received is not None:
                self._on_signal(received.si_signo)
            self._reap()
            self._collect_readiness()
            running = [slot for slot in self.slots if slot.pid is not None]
            if self.stopping:
                if not running:
                    log.info("supervisor: all workers stopped")
                    return EXIT_FAILED if self.failed else EXIT_OK
                if self.clock() >= self.kill_at:
                    self._kill(running)
                    return EXIT_FAILED
                continue
            now = self.clock()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)

    def _collect_readiness(self) -> None:
        reported = self.readiness.collect()
        if self.stopping or self.readiness.notified:
            return
        self.readiness.ready |= {index for index in reported if index < len(self.slots)}
        if len(self.readiness.ready) == len(self.slots):
            self.readiness.notified = True
            log.info("supervisor: all %d workers serving", len(self.slots))
            sdnotify.notify(
                f"READY=1\nSTATUS=listening on {self.config.server.listen} with "
                f"{len(self.slots)} workers\nMAINPID={os.getpid()}"
            )

    def _wait_time(self) -> float:
        now = self.clock()
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.stopping:
            due.append(self.kill_at)
        return max(0.01, min([POLL, *(at - now for at in due)]))

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                log.info(
                    "supervisor: %s: draining %d workers",
                    signal.Signals(signum).name,
                    sum(1 for slot in self.slots if slot.pid is not None),
                )
                sdnotify.notify("STOPPING=1")
                self._stop()
        elif signum == signal.SIGHUP and not self.stopping and self._reload():
            log.info("supervisor: SIGHUP: every worker reloads")
            self._forward(signal.SIGHUP)

    def _reload(self) -> bool:
        """Check the configuration file and every file it names (`service.check_files`:
        TLS pair, users file, signing keys) before any worker rereads them; False:
        invalid, one error line, nothing changes -- the workers started later get the
        last good configuration."""
        candidate, restart, text = self.config, list[str](), None
        try:
            if self.config_path is not None:  # None: the embedded default cannot change
                text = read_config_text(self.config_path)
                new = parse_config(text, str(self.config_path))
                candidate, restart = for_reload(self.config, new)
            check_files(candidate)
        except (ConfigError, StartupError) as exc:
            log.error("supervisor: SIGHUP: keeping the old configuration: %s", exc)
            return False
        if text is not None:
            self.checked.publish(text)  # what every worker applies: ConfigText
        if restart:
            log.warning(
                "reload: %s need(s) a restart; keeping the old value(s)", ", ".join(restart)
            )
        self.config = candidate
        return True

    def _stop(self) -> None:
        self.stopping = True
        self.kill_at = self.clock() + self.config.server.shutdown_grace + KILL_AFTER_GRACE
        for slot in self.slots:
            slot.restart_at = None
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                    os.kill(slot.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((slot for slot in self.slots if slot.pid == pid), None)
            metrics.worker_exited(pid)  # its live gauges go; its counters still count
            if slot is not None:
                slot.pid = None
                # Its sessions died with it: they stop counting now, not when its
                # successor starts (0.5 to 4 s later), or its clients
                # would be refused 421 for sessions nobody holds.
                self.shared.clear_worker(slot.index)
                self._exited(slot, pid, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, pid: int, code: int) -> None:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if self.stopping:
            if code != 0:
                self.failed = True
            log.log(
                logging.INFO if code == 0 else logging.WARNING,
                "worker %d (pid %d) stopped: %s",
                slot.index,
                pid,
                how,
            )
            return
        now = self.clock()
        slot.quick_failures = 1 if now - slot.started >= STABLE_AFTER else slot.quick_failures + 1
        if slot.quick_failures >= MAX_QUICK_FAILURES:  # README: "failed 5 times in a row"
            log.error(
                "worker %d (pid %d) died (%s): %d failures in a row, each within %.0fs of "
                "its start: giving up, stopping the others",
                slot.index,
                pid,
                how,
                slot.quick_failures,
                STABLE_AFTER,
            )
            self.failed = True
            self._stop()
            return
        delay = min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2.0 ** (slot.quick_failures - 1))
        slot.restart_at = now + delay
        log.error("worker %d (pid %d) died (%s): restarting in %.1fs", slot.index, pid, how, delay)

    def _kill(self, running: list[_Slot]) -> None:
        for slot in running:
            assert slot.pid is not None
            log.error(
                "worker %d (pid %d) still running %.0fs after SIGTERM: killing it",
                slot.index,
                slot.pid,
                self.config.server.shutdown_grace + KILL_AFTER_GRACE,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGKILL)
        for slot in running:
            assert slot.pid is not None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(slot.pid, 0)
            slot.pid = None

    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        # Its column of the session counts is empty: never used, or cleared when the
        # last one was reaped (`_reap`). Not scanned again here: with many workers a
        # scan of the table at each start made start-up last seconds per worker.
        parent = os.getpid()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.served.in_child()
            os.environ.pop(sdnotify.NOTIFY_ENV, None)  # only the MAINPID notifies systemd
            os.close(self.readiness.read_fd)
            _worker_main(
                self.config,
                self.listeners,
                self.shared.for_worker(slot.index),
                parent,
                lambda: self.readiness.report(slot.index, parent),
                self.config_path,
                self.checked.read,
            )
        slot.pid = pid
        slot.started = self.clock()
        log.info("worker %d started: pid %d", slot.index, pid)


def _worker_main(
    config: Config,
    listeners: Listeners,
    share: WorkerShare,
    parent: int,
    serving: Callable[[], None],
    config_path: Path | None = None,
    checked_text: Callable[[], str | None] | None = None,
) -> NoReturn:
    """The forked child: serve until told to stop, then leave without returning into
    the parent's code (os._exit). `serving` tells the supervisor it accepts."""
    code = EXIT_FAILED
    try:
        _die_with_parent(parent)
        asyncio.run(_serve_worker(config, listeners, share, serving, config_path, checked_text))
        code = EXIT_OK
    except StartupError as exc:
        log.error("worker cannot start: %s", exc)
        code = EXIT_CONFIG
    except Exception:
        log.exception("worker %d failed", share.worker)
    finally:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)


async def _serve_worker(
    config: Config,
    listeners: Listeners,
    share: WorkerShare,
    tell: Callable[[], None],
    config_path: Path | None,
    checked_text: Callable[[], str | None] | None = None,
) -> None:
    ready = asyncio.Event()
    serving = asyncio.create_task(
        serve(
            config,
            ready=ready,
            listeners=listeners,
            share=share,
            supervised=True,
            config_path=config_path,
            checked_text=checked_text,
        )
    )
    readiness = asyncio.create_task(ready.wait())
    await asyncio.wait((serving, readiness), return_when=asyncio.FIRST_COMPLETED)
    readiness.cancel()
    if ready.is_set():
        tell()
    # The parent's mask was inherited: signals that arrived since the fork wait here
    # and are delivered now, to serve's handlers (drain, reload).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    await serving


def _die_with_parent(parent: int) -> None:
    """Ask for SIGTERM when the supervisor dies (Linux prctl); if it already has, leave."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(EXIT_FAILED)
