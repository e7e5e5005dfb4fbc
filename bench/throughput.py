"""Throughput, latency, CPU and memory of arproxy against a naive relay, in one run.

    ./bench/run [--messages N] [--rounds R] [--idle K] [--quick] [--profile]

Starts on loopback: Knot serving the test world's zones (tests/fixtures/zones), Postfix's
smtp-sink as the downstream (dumping every message to /dev/shm, so that delivery is
counted and results are verified), and then each configuration of TARGETS in turn, R
rounds alternating them:

- ceiling: the load generator straight into smtp-sink (what the machine can do at all);
- naive relay: bench/naive_relay.py, aiosmtpd -> aiosmtplib, checking nothing (the baseline);
- arproxy: `arproxy serve` with every check on (iprev, SPF, DKIM, DMARC, the rewrite),
  once per arproxy configuration in ARPROXY_CONFIGS.

The load generator is asyncio in this process (smtp-source cannot bind a source address,
and the checks pass only for 127.0.0.2, mail.sender.test): one SMTP session per message
(connect, EHLO, MAIL, RCPT, DATA, QUIT, no pipelining, like smtp-source without -d), an 11
KB message DKIM-signed once by sender.test's 2048-bit key, with a forged
Authentication-Results field of ours on top that arproxy must remove. Latency is per
message: from the start of connect to the 250 reply at the end of DATA.

Every loop is bounded in count and time; every process is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dnsserver import KnotServer  # noqa: E402
from tests.integration.peers import (  # noqa: E402
    SMTP_SINK,
    free_port,
    parse_sink_dump,
    wait_for_port,
)
from tests.integration.peers import stop as stop_process  # noqa: E402

from arproxy.client import trusted_results  # noqa: E402

SOURCE_ADDRESS = "127.0.0.2"  # mail.sender.test: iprev and SPF pass (tests/fixtures/README.md)
HELO = "mail.sender.test"
MAIL_FROM = "alice@sender.test"
RCPT_TO = "bob@example.com"
AUTHSERV_ID = "example.com"
FORGED_DOMAIN = "forged.bench.test"
KEY = REPO / "tests" / "fixtures" / "keys" / "rsa2048.pem"
MESSAGE_SIZE = 11 * 1024
REQUIRED_PASSES = ("iprev", "spf", "dkim", "dmarc")
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the port at connect (4-tuple), not at bind
STEP_TIMEOUT = 30.0  # seconds for any one SMTP reply
LOAD_TIMEOUT = 900.0  # seconds for one whole load run
VERIFY_SAMPLE = 50  # delivered messages whose fields are parsed per row
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = 1024

ARPROXY_CONFIG = """
[server]
listen = "127.0.0.1:{port}"
hostname = "mx.example.com"
authserv_id = "example.com"
shutdown_grace = 5.0
{server}

[relay]
downstream = "smtp://127.0.0.1:{sink_port}"
connect_timeout = 10.0
timeout = 30.0
{relay}

[domains]
local = ["example.com"]

[dns]
nameservers = ["{nameserver}"]

[limits]
# The idle-sessions row holds many sessions from one address: only limits are raised,
# every check stays on.
max_connections = {max_connections}
max_connections_per_ip = {max_connections}

[log]
level = "info"
"""


@dataclass(frozen=True)
class Target:
    """One configuration under load. kind: "sink", "naive" or "arproxy"; server, relay:
    extra lines of arproxy's [server] and [relay] tables; requires: a [server] key
    check-config must accept."""

    name: str
    kind: str
    description: str
    server: str = ""
    requires: str | None = None
    relay: str = ""


# arproxy configurations: add one line to bench another (e.g. a new [server] option).
ARPROXY_CONFIGS = (
    # server.workers defaults to one per core: the 1-worker row says so explicitly.
    Target("arproxy 1 worker", "arproxy", "every check on, one process", server="workers = 1"),
    Target(
        "arproxy N workers",
        "arproxy",
        "every check on, one worker per core",
        server=f"workers = {os.cpu_count() or 2}",
        requires="workers",
    ),
)
TARGETS = (
    Target("ceiling", "sink", "load generator -> smtp-sink, no relay"),
    Target("naive relay", "naive", "bench/naive_relay.py: aiosmtpd -> aiosmtplib, no checks"),
    *ARPROXY_CONFIGS,
)
BASELINE = "naive relay"


# --- the message ---------------------------------------------------------------------


def build_message() -> bytes:
    """An ~11 KB message signed by sender.test (s2048), a forged field of ours on top."""
    header = (
        b"From: Alice <alice@sender.test>\r\nTo: Bob <bob@example.com>\r\n"
        b"Subject: arproxy benchmark\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
        b"Message-ID: <bench@sender.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, benchmark body line %04d.\r\n"
    body = b""
    number = 0
    while len(header) + len(body) < MESSAGE_SIZE - 900:  # room for the two added fields
        body += line % number
        number += 1
    message = header + body
    signature: bytes = dkim.sign(message, b"s2048", b"sender.test", KEY.read_bytes())
    forged = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d={FORGED_DOMAIN}\r\n"
    return forged.encode() + signature + message


def data_payload(message: bytes) -> bytes:
    """The DATA bytes: dot-stuffed (RFC 5321 section 4.5.2), then the end marker."""
    lines = message.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + x if x.startswith(b".") else x for x in lines)
    return stuffed.rstrip(b"\r\n") + b"\r\n.\r\n"


# --- processes -------------------------------------------------------------------------


class Processes:
    """Every process the bench started, so that all are stopped on any exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, **kwargs)  # type: ignore[call-overload]
        self.started.append(process)
        return process  # type: ignore[no-any-return]

    @staticmethod
    def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        stop_process(process, timeout)  # SIGTERM, then SIGKILL after `timeout`

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        self.started.clear()


def tree_pids(root: int) -> list[int]:
    """root and its descendants, from /proc (workers included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 10_000:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """utime + stime of the process tree, in seconds."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICKS


def memory_mb(root: int, key: str) -> float:
    """Sum of a /proc/<pid>/status memory line (VmRSS, VmHWM) over the tree, in MB."""
    total_kb = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total_kb += int(line.split()[1])
    return total_kb / PAGE_KB


class Sink:
    """smtp-sink on loopback, dumping each message into a tmpfs folder."""

    def __init__(self, processes: Processes) -> None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dump_dir = Path(tempfile.mkdtemp(prefix="arproxy-bench-sink-", dir=base))
        self.dump_dir.chmod(0o777)  # smtp-sink runs as nobody
        self.port = free_port()
        # -m: sessions handled at once (default 256), for the idle-sessions row.
        command = [SMTP_SINK, "-u", "nobody", "-m", "4096", "-d", f"{self.dump_dir}/"]
        self.process = processes.start(
            [*command, f"127.0.0.1:{self.port}", "1024"], stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.process)

    def clear(self) -> None:
        for path in self.dump_dir.iterdir():
            path.unlink(missing_ok=True)

    def delivered(self) -> list[bytes]:
        """The complete messages dumped since the last clear()."""
        messages = []
        for path in sorted(self.dump_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                parsed = parse_sink_dump(path.read_bytes())
                if parsed is not None:
                    messages.append(parsed.message)
        return messages

    def close(self) -> None:
        shutil.rmtree(self.dump_dir, ignore_errors=True)


@dataclass
class Server:
    """One running configuration: where to connect, whose CPU and memory to count."""

    port: int
    pid: int
    process: subprocess.Popen[bytes] | None  # None for the shared sink
    log: Path | None = None


def start_target(
    target: Target, sink: Sink, knot: KnotServer, workdir: Path, processes: Processes, idle: int
) -> Server:
    if target.kind == "sink":
        return Server(sink.port, sink.process.pid, None)
    port = free_port()
    log = workdir / f"{target.name.replace(' ', '-')}.log"
    if target.kind == "naive":
        command = [
            sys.executable,
            str(REPO / "bench" / "naive_relay.py"),
            "--listen",
            f"127.0.0.1:{port}",
            "--downstream",
            f"127.0.0.1:{sink.port}",
        ]
    else:
        config = workdir / f"{target.name.replace(' ', '-')}.toml"
        config.write_text(
            ARPROXY_CONFIG.format(
                port=port,
                server=target.server,
                relay=target.relay,
                sink_port=sink.port,
                nameserver=knot.address,
                max_connections=max(2000, idle + 100),
            )
        )
        command = [sys.executable, "-m", "arproxy", "serve", "--config", str(config)]
    with log.open("ab") as stream:
        process = processes.start(command, stdout=subprocess.DEVNULL, stderr=stream, cwd=workdir)
    wait_for_port(port, process, timeout=20.0)
    return Server(port, process.pid, process, log)


def accepts(key: str) -> bool:
    """Whether `arproxy check-config` accepts `[server] <key> = 2` (a feature probe)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        config.write(f"[server]\n{key} = 2\n")
        config.flush()
        result = subprocess.run(
            [sys.executable, "-m", "arproxy", "check-config", config.name],
            capture_output=True,
            timeout=60,
            check=False,
        )
    return result.returncode == 0


# --- the load generator ----------------------------------------------------------------


class SmtpError(Exception):
    """A reply other than the expected one."""


async def read_reply(reader: asyncio.StreamReader, expected: bytes) -> bytes:
    lines = []
    for _ in range(100):  # a reply of more lines is a broken server
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            break
    if not lines[-1].startswith(expected):
        raise SmtpError(lines[-1].decode(errors="replace").strip())
    return lines[-1]


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((SOURCE_ADDRESS, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def one_message(port: int, payload: bytes) -> float:
    """One session, one message; the seconds from connect to DATA's 250."""
    started = time.perf_counter()
    async with asyncio.timeout(STEP_TIMEOUT * 7):
        reader, writer = await connect(port)
        try:
            await read_reply(reader, b"220")
            for command, expected in (
                (f"EHLO {HELO}", b"250"),
                (f"MAIL FROM:<{MAIL_FROM}>", b"250"),
                (f"RCPT TO:<{RCPT_TO}>", b"250"),
                ("DATA", b"354"),
            ):
                writer.write(command.encode() + b"\r\n")
                await read_reply(reader, expected)
            writer.write(payload)
            await read_reply(reader, b"250")
            latency = time.perf_counter() - started
            writer.write(b"QUIT\r\n")
            await read_reply(reader, b"221")
            await reader.read(1024)  # the server closes first: its side keeps TIME_WAIT
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return latency


@dataclass
class Load:
    messages: int
    seconds: float
    latencies: list[float]
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0


async def run_load(port: int, payload: bytes, total: int, concurrency: int) -> Load:
    """`total` messages from `concurrency` parallel sessions; wall clock over them all."""
    remaining = iter(range(total))
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        for _ in remaining:
            try:
                latencies.append(await one_message(port, payload))
            except (OSError, SmtpError, TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                if len(errors) > 20:  # a broken server: stop rather than spin
                    return

    started = time.perf_counter()
    async with asyncio.timeout(LOAD_TIMEOUT):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(total, time.perf_counter() - started, latencies, errors)


async def idle_sessions(port: int, count: int, root: int) -> tuple[float, int]:
    """Hold `count` sessions that said EHLO; the tree's RSS (MB) then, and how many opened."""
    opened: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(50)  # connect in waves, not past the listen backlog

    async def open_one() -> None:
        async with gate:
            reader, writer = await connect(port)
            opened.append(writer)
            await read_reply(reader, b"220")
            writer.write(f"EHLO {HELO}\r\n".encode())
            await read_reply(reader, b"250")

    tasks = [asyncio.ensure_future(open_one()) for _ in range(count)]
    try:
        # A server that stops accepting (a connection limit) leaves sessions pending:
        # they count as not opened, the row says how many opened.
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        ok = sum(1 for task in done if not task.cancelled() and task.exception() is None)
        await asyncio.sleep(1.0)  # let the server settle before reading its memory
        return memory_mb(root, "VmRSS"), ok
    finally:
        for writer in opened:
            writer.close()
        await asyncio.sleep(0.5)


# --- rows ------------------------------------------------------------------------------


@dataclass
class Round:
    c20: Load
    c1: Load
    cpu_ms: float  # server tree CPU per message over the c=20 load
    generator_cpu_ms: float  # this process's CPU per message over the c=20 load
    peak_rss: float


@dataclass
class Row:
    target: Target
    rounds: list[Round] = field(default_factory=list)
    idle_rss: float | None = None
    idle_open: int = 0
    verdict: str = ""
    failed: bool = False
    skipped: str = ""


# A server log line that makes its row FAILED: a traceback, or an ERROR/CRITICAL line --
# with workers, a worker that died (by a signal: no traceback) and was replaced while
# the load ran, which the clients may not notice if it died between two sessions.
LOG_FAULT = re.compile(r"Traceback|^\S+ \S+ (?:ERROR|CRITICAL) ", re.MULTILINE)


def log_fault(text: str) -> str | None:
    """The first line of a server's log that shows a fault (LOG_FAULT), else None."""
    found = LOG_FAULT.search(text)
    if found is None:
        return None
    start = text.rfind("\n", 0, found.start()) + 1
    end = text.find("\n", found.start())
    return text[start : end if end >= 0 else len(text)].strip()


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


def verify(target: Target, delivered: list[bytes], expected: int) -> tuple[bool, str]:
    """Every accepted message delivered; arproxy's own field passing all four checks and
    the forged one gone (sampled)."""
    if len(delivered) != expected:
        return False, f"FAILED: {len(delivered)} delivered of {expected} accepted"
    if target.kind != "arproxy":
        intact = all(b"DKIM-Signature:" in m for m in delivered[:VERIFY_SAMPLE])
        return (True, f"{expected} delivered") if intact else (False, "FAILED: altered")
    step = max(1, len(delivered) // VERIFY_SAMPLE)
    sample = delivered[::step][:VERIFY_SAMPLE]
    for message in sample:
        results = trusted_results(message, AUTHSERV_ID)
        found = {r.method: r.result for r in results}
        forged = any(p.value == FORGED_DOMAIN for r in results for p in r.properties)
        if forged or len(results) != len(found):
            return False, "FAILED: forged field kept"
        failing = [m for m in REQUIRED_PASSES if found.get(m) != "pass"]
        if failing:
            return False, "FAILED: " + " ".join(f"{m}={found.get(m, 'none')}" for m in failing)
    return True, f"{expected} delivered, {len(sample)} checked: all pass"


async def measure_round(
    server: Server, sink: Sink, payload: bytes, messages: int, warmup: int
) -> tuple[Round, int]:
    """Warm-up (fills the DNS cache), then c=20 and c=1; returns messages accepted too."""
    warm = await run_load(server.port, payload, warmup, 20)
    cpu_before = cpu_seconds(server.pid)
    own_before = time.process_time()
    c20 = await run_load(server.port, payload, messages, 20)
    cpu = cpu_seconds(server.pid) - cpu_before
    own = time.process_time() - own_before
    c1 = await run_load(server.port, payload, messages, 1)
    done = max(1, len(c20.latencies))
    accepted = len(warm.latencies) + len(c20.latencies) + len(c1.latencies)
    errors = warm.errors + c20.errors + c1.errors
    if errors:
        c20.errors = errors
    return (
        Round(c20, c1, cpu * 1000 / done, own * 1000 / done, memory_mb(server.pid, "VmHWM")),
        accepted,
    )


# --- the report ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def row_cells(row: Row, baseline: Row | None, idle: int) -> list[str]:
    if row.skipped:
        return [row.target.name, row.skipped] + [""] * 9
    rate20 = median([r.c20.rate for r in row.rounds])
    rate1 = median([r.c1.rate for r in row.rounds])
    p50_20 = median([percentile(r.c20.latencies, 0.50) * 1000 for r in row.rounds])
    p99_20 = median([percentile(r.c20.latencies, 0.99) * 1000 for r in row.rounds])
    p50_1 = median([percentile(r.c1.latencies, 0.50) * 1000 for r in row.rounds])
    p99_1 = median([percentile(r.c1.latencies, 0.99) * 1000 for r in row.rounds])
    ratio = dp99 = "-"
    if baseline is not None and baseline.rounds:
        base20 = median([r.c20.rate for r in baseline.rounds])
        base_p99 = median([percentile(r.c1.latencies, 0.99) * 1000 for r in baseline.rounds])
        ratio = f"{rate20 / base20:.2f}x"
        dp99 = f"{p99_1 - base_p99:+.1f}"
    idle_cell = "n/a" if row.idle_rss is None else f"{row.idle_rss:.0f}"
    if row.idle_rss is not None and row.idle_open < idle:
        idle_cell += f" ({row.idle_open} open)"
    return [
        row.target.name,
        f"{rate20:.0f}",
        ratio,
        f"{p50_20:.1f} / {p99_20:.1f}",
        f"{rate1:.0f}",
        f"{p50_1:.1f} / {p99_1:.1f}",
        dp99,
        f"{median([r.cpu_ms for r in row.rounds]):.2f}",
        f"{median([r.peak_rss for r in row.rounds]):.0f}",
        idle_cell,
        row.verdict,
    ]


def round_ratios(rows: Sequence[Row]) -> str:
    """Each configuration's c=20 rate over the baseline's in the same round, one line
    per configuration ("" without a baseline)."""
    baseline = next((r for r in rows if r.target.name == BASELINE and r.rounds), None)
    if baseline is None:
        return ""
    lines = []
    for row in rows:
        if row is baseline or not row.rounds or row.target.kind == "sink":
            continue
        pairs = zip(row.rounds, baseline.rounds, strict=False)
        ratios = " ".join(f"{mine.c20.rate / base.c20.rate:.2f}" for mine, base in pairs)
        lines.append(f"  {row.target.name}: {ratios}")
    return "\n".join(lines)


def render(rows: Sequence[Row], idle: int) -> str:
    baseline = next((r for r in rows if r.target.name == BASELINE), None)
    header = [
        "configuration",
        "c=20 msg/s",
        "vs naive",
        "c=20 p50/p99 ms",
        "c=1 msg/s",
        "c=1 p50/p99 ms",
        "c=1 p99 - naive",
        "CPU ms/msg",
        "peak RSS MB",
        f"{idle} idle RSS MB",
        "delivered results",
    ]
    table = [header] + [row_cells(row, baseline, idle) for row in rows]
    lines = ["| " + " | ".join(cells) + " |" for cells in table]
    lines.insert(1, "|" + "---|" * len(header))
    return "\n".join(lines)


# --- profile ---------------------------------------------------------------------------


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


# Frames every sample passes through (the loop, threads, start-up): left out of the
# inclusive table, which is about where the work goes.
PLUMBING = ("asyncio/", "threading.py", "<frozen runpy>", "concurrent/futures", "selectors.py")
PLUMBING_NAMES = ("process ", "<module> (arproxy/__main__.py", "main (arproxy/cli.py")


def summarize_profile(raw: Path, top: int = 30) -> str:
    """Top functions by own and by inclusive samples, from py-spy's collapsed stacks
    (`frame;frame;... count` lines), and the share of the event loop's thread."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = in_threads = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if any(frame.startswith("Thread._bootstrap") for frame in frames):
            in_threads += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if not any(p in frame for p in PLUMBING) and not frame.startswith(PLUMBING_NAMES):
                inclusive[frame] = inclusive.get(frame, 0) + count
    share = 100 * (total - in_threads) / max(1, total)
    out = [
        f"{total} samples (active only): {share:.1f}% in the event loop's thread, "
        f"{100 - share:.1f}% in worker threads"
    ]
    for title, table in (
        ("own time", own),
        ("inclusive time (loop and threads plumbing left out)", inclusive),
    ):
        out.append(f"\n== top {top} by {title}")
        for frame, count in sorted(table.items(), key=lambda x: -x[1])[:top]:
            out.append(f"{100 * count / max(1, total):5.1f}%  {frame}")
    return "\n".join(out)


async def profile(
    target: Target, context: Context, payload: bytes, messages: int, out_dir: Path
) -> str:
    """py-spy on arproxy under the c=20 load (a separate pass: sampling slows it)."""
    tool = py_spy()
    if tool is None:
        return "py-spy not installed: no profile"
    server = start_target(target, context.sink, context.knot, context.workdir, context.procs, 0)
    try:
        await run_load(server.port, payload, 50, 20)
        out_dir.mkdir(parents=True, exist_ok=True)
        raw = context.workdir / "profile.raw"
        spy = context.procs.start(
            [
                tool,
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--subprocesses",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)
        await run_load(server.port, payload, messages, 20)
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        if not raw.exists():
            return "py-spy wrote no profile (ptrace not allowed?)"
        summary = summarize_profile(raw)
        (out_dir / "arproxy-c20-top.txt").write_text(summary + "\n")
        if raw.stat().st_size < 300_000:
            shutil.copy(raw, out_dir / "arproxy-c20.collapsed")
        return summary
    finally:
        if server.process is not None:
            context.procs.stop(server.process)
        context.sink.clear()


# --- the run ---------------------------------------------------------------------------


@dataclass
class Context:
    sink: Sink
    knot: KnotServer
    workdir: Path
    procs: Processes


async def bench_target(
    row: Row, context: Context, payload: bytes, args: argparse.Namespace, last: bool
) -> None:
    context.sink.clear()
    server = start_target(
        row.target, context.sink, context.knot, context.workdir, context.procs, args.idle
    )
    try:
        measured, accepted = await measure_round(
            server, context.sink, payload, args.messages, args.warmup
        )
        row.rounds.append(measured)
        ok, verdict = verify(row.target, context.sink.delivered(), accepted)
        if measured.c20.errors:
            ok, verdict = False, f"FAILED: {measured.c20.errors[0]}"
        fault = log_fault(server.log.read_text(errors="replace")) if server.log else None
        if fault is not None:
            ok, verdict = False, f"FAILED: {fault[:120]} (in {server.log})"
        if not row.failed:
            row.verdict = verdict
        row.failed = row.failed or not ok
        if last and args.idle > 0:
            row.idle_rss, row.idle_open = await idle_sessions(server.port, args.idle, server.pid)
    finally:
        if server.process is not None:
            context.procs.stop(server.process)
        context.sink.clear()


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {time.strftime('%Y-%m-%d')}"


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def main_async(args: argparse.Namespace, context: Context) -> int:
    payload = data_payload(build_message())
    rows = [Row(t) for t in TARGETS]
    for row in rows:
        if row.target.requires and not accepts(row.target.requires):
            row.skipped = f"n/a (no server.{row.target.requires} yet)"
    active = [row for row in rows if not row.skipped]
    print(
        f"bench: {machine()}; {args.messages} messages per configuration and concurrency, "
        f"{args.rounds} round(s), message {len(payload)} bytes",
        flush=True,
    )
    for number in range(args.rounds):
        for row in active:
            started = time.monotonic()
            await bench_target(row, context, payload, args, number == args.rounds - 1)
            last = row.rounds[-1]
            print(
                f"  round {number + 1} {row.target.name}: c=20 {last.c20.rate:.0f} msg/s, "
                f"c=1 {last.c1.rate:.0f} msg/s ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    print()
    print(render(rows, args.idle))
    ceiling = next((r for r in rows if r.target.kind == "sink" and r.rounds), None)
    if ceiling is not None:
        gen = median([r.generator_cpu_ms for r in ceiling.rounds])
        print(
            f"\nload generator: {gen:.2f} ms CPU per message at the ceiling "
            f"(one core alone: ~{1000 / gen:.0f} msg/s)"
        )
    spread = round_ratios(rows)
    if spread:
        print("c=20 vs naive, round by round (the drift one median hides):")
        print(spread)
    print(
        "latency: connect to the 250 reply to DATA, one session per message; CPU: the "
        "configuration's process tree (the ceiling: smtp-sink) over the c=20 run; peak "
        "RSS: sum of VmHWM over the tree; figures are medians over the rounds"
    )
    if args.profile:
        target = next((t for t in TARGETS if t.kind == "arproxy"), None)
        if target is not None:
            print("\nprofile of arproxy under the c=20 load (py-spy, separate pass):")
            print(
                await profile(target, context, payload, args.messages, REPO / "bench" / "profiles")
            )
    return 1 if any(row.failed for row in active) else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="arproxy throughput benchmark")
    parser.add_argument(
        "--messages",
        type=int,
        default=2000,
        help="messages per configuration and concurrency (default 2000)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds alternating the configurations (default 5)"
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=1000,
        help="idle sessions held for the memory column (default 1000)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="warm-up messages (default 50)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 40 messages, 1 round, 50 idle sessions"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile arproxy at c=20 with py-spy (if installed)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds, args.idle, args.warmup = 40, 1, 50, 10
    for name in ("messages", "rounds"):
        if not 1 <= getattr(args, name) <= 1_000_000:
            parser.error(f"--{name} must be between 1 and 1000000")
    if not 0 <= args.idle <= 10_000:
        parser.error("--idle must be between 0 and 10000")
    return args


@contextlib.contextmanager
def world() -> Iterator[Context]:
    procs = Processes()
    knot = None
    sink = None
    workdir = Path(tempfile.mkdtemp(prefix="arproxy-bench-"))
    try:
        knot = KnotServer()
        sink = Sink(procs)
        yield Context(sink, knot, workdir, procs)
    finally:
        procs.stop_all()
        if sink is not None:
            sink.close()
        if knot is not None:
            knot.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit(2 * args.idle + 1024)
    # SIGTERM takes the same way out as Ctrl-C: every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    with world() as context:
        return asyncio.run(main_async(args, context))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
