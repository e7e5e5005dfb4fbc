"""Real peers for the integration tests: Postfix's smtp-sink, a private Postfix as
sending MTA, arproxy itself, swaks.

Each is a separate program reached over loopback TCP, started and stopped by a
fixture, so the tests see exactly what a mail administrator would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The one bound for everything a test waits for (a peer listening, a log line, a
# worker replaced): things that take well under a second on an idle machine, and
# several on a loaded one (CI, two cores shared). Generous, since it is never a timing
# assertion: a wait that gives up too early fails a correct program by chance.
WAIT = 60.0


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll `condition()` until it is true; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened within {timeout}s: {what}"
        time.sleep(0.05)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def stop(process: subprocess.Popen[bytes], timeout: float = WAIT) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class SinkMessage:
    """One transaction as smtp-sink dumped it (its dump format uses LF endings)."""

    client_addr: str
    helo_args: str
    mail_args: str
    rcpt_args: list[str]
    message: bytes  # header and body as received, LF line endings


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port, dumping each message to a file."""

    def __init__(self, workdir: Path, options: Sequence[str] = (), port: int | None = None) -> None:
        # smtp-sink drops privileges to nobody, who cannot enter pytest's private
        # tmp_path: the dump directory lives in a world-accessible one of its own.
        workdir.mkdir(parents=True, exist_ok=True)
        self.dump_dir = Path(tempfile.mkdtemp(prefix="arproxy-sink-"))
        self.dump_dir.chmod(0o777)
        self.port = port or free_port()  # a given port: a sink restarted in place
        command = [
            SMTP_SINK,
            "-u",
            "nobody",
            *options,
            "-d",
            f"{self.dump_dir}/",
            f"127.0.0.1:{self.port}",
            "32",
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def messages(self) -> list[SinkMessage]:
        """The messages delivered so far. smtp-sink opens a dump file at MAIL and
        deletes it when the transaction is abandoned (our RSET may still be on its
        way): files that vanish or hold no message yet are not deliveries."""
        dumps: list[tuple[int, bytes]] = []
        for path in self.dump_dir.iterdir():
            try:
                dumps.append((path.stat().st_mtime_ns, path.read_bytes()))
            except FileNotFoundError:
                continue
        parsed = [parse_sink_dump(dump) for _, dump in sorted(dumps)]
        return [message for message in parsed if message is not None]

    def close(self) -> None:
        stop(self.process)
        shutil.rmtree(self.dump_dir, ignore_errors=True)


def parse_sink_dump(dump: bytes) -> SinkMessage | None:
    """The dumped transaction, or None if it has no complete message (yet)."""
    fields: dict[bytes, list[bytes]] = {}
    rest = dump
    while rest.startswith(b"X-"):
        line, _, rest = rest.partition(b"\n")
        name, _, value = line.partition(b": ")
        fields.setdefault(name, []).append(value)
    # smtp-sink's own three-line Received field comes next, then the message, and
    # one empty line it appends after the message.
    for _ in range(3):
        _, _, rest = rest.partition(b"\n")
    if not rest.endswith(b"\n\n"):
        return None
    return SinkMessage(
        client_addr=fields[b"X-Client-Addr"][0].decode(),
        helo_args=b"".join(fields.get(b"X-Helo-Args", [b""])).decode(),
        mail_args=fields[b"X-Mail-Args"][0].decode(),
        rcpt_args=[v.decode() for v in fields.get(b"X-Rcpt-Args", [])],
        message=rest[:-1],
    )


class Arproxy:
    """arproxy serve as a subprocess, the way an administrator runs it."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "arproxy.toml"
        self.config_path.write_text(config_text.replace("@PORT@", str(self.port)))
        self.log_path = workdir / "arproxy.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "arproxy", "serve", "--config", str(self.config_path)],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            server = tomllib.loads(self.config_path.read_text()).get("server", {})
        except tomllib.TOMLDecodeError:
            server = {}  # arproxy says what is wrong, and exits: _wait_until_serving raises
        self._wait_until_serving(server.get("proxy_protocol", False), server.get("workers", 1))

    def _wait_until_serving(self, behind_proxy: bool, workers: int) -> None:
        """Until one whole SMTP session (220, QUIT, 221, close) succeeds, and with
        several workers until the supervisor logs that all serve (before that, a test
        reading "worker N started" lines may miss one).

        Never a connection closed without QUIT (what wait_for_port leaves behind): the
        server counts such a session against the client's
        limits.max_connections_per_ip until it notices the close, which on a loaded
        machine, with another worker taking the next connection, is after the test
        has started and opened its own sessions."""
        deadline = time.monotonic() + WAIT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"arproxy exited with {self.process.returncode}:\n{self.log}")
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
            except OSError as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"arproxy not listening on {self.port}") from error
                time.sleep(0.02)
                continue
            with sock:
                stream = sock.makefile("rb")
                if behind_proxy:
                    sock.sendall(b"PROXY UNKNOWN\r\n")
                assert stream.readline().startswith(b"220 ")
                sock.sendall(b"QUIT\r\n")
                assert stream.readline().startswith(b"221 ")
                assert stream.readline() == b""
            break
        if workers > 1:
            serving = f"all {workers} workers serving"
            wait_for(lambda: serving in self.log, serving)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = stop(self.process)
        self._log.close()
        return code


def swaks(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWAKS, "--hide-informational", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def sink(workdir: Path, options: Sequence[str] = ()) -> Iterator[SmtpSink]:
    s = SmtpSink(workdir, options)
    try:
        yield s
    finally:
        s.close()


POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTFIX_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PrivatePostfix:
    """A private Postfix instance as a sending MTA: its own configuration, queue and
    log in a temporary directory, relaying everything to `relayhost`, nothing
    listening (mail is enqueued with its sendmail). Postfix defaults otherwise:
    up to 20 parallel deliveries to one destination, connection caching on.

    Needs root (Postfix's master runs as root and drops to `postfix`) and Debian's
    postfix package; its /etc/postfix/main.cf may be absent ("No configuration").
    """

    def __init__(self, relayhost: str, *, main_extra: str = "", master_extra: str = "") -> None:
        """`main_extra` and `master_extra` are appended to main.cf and master.cf
        (a listening smtpd, local delivery: the topology test's downstream)."""
        # The postfix user must reach the queue: not under pytest's private tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="arproxy-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.conf.mkdir()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        self.maillog = self.root / "maillog"
        (self.conf / "master.cf").write_text(POSTFIX_MASTER_CF + master_extra)
        (self.conf / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {data}
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mta.sender.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relayhost = {relayhost}
smtp_bind_address = 127.0.0.1
smtp_tls_security_level = none
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
{main_extra}"""
        )
        self._postfix("check")
        self.running = False

    def _postfix(self, *args: str, timeout: float = 30.0) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.conf), *args],
            check=True,
            timeout=timeout,
            capture_output=True,
        )

    def enqueue(self, sender: str, recipient: str, message: bytes) -> None:
        """Hand one message to Postfix's sendmail (into the maildrop queue, which
        Postfix picks up when started)."""
        subprocess.run(
            ["/usr/sbin/sendmail", "-C", str(self.conf), "-f", sender, recipient],
            input=message,
            check=True,
            timeout=30,
            capture_output=True,
        )

    def start(self) -> None:
        self._postfix("start")
        self.running = True

    def queue_is_empty(self) -> bool:
        listing = subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.conf), "-p"],
            check=False,
            timeout=30,
            capture_output=True,
            text=True,
        )
        return "Mail queue is empty" in listing.stdout

    def wait_for_empty_queue(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_is_empty():
                return True
            time.sleep(0.5)
        return False

    @property
    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def close(self) -> None:
        """Stop Postfix (its master ends its children), then remove everything."""
        if self.running:
            try:
                self._postfix("stop")
            except subprocess.SubprocessError:
                self._postfix("abort")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
