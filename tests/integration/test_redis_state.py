"""`[state] redis_url`: two arproxy instances sharing one real redis-server (Debian's).

A password guesser alternating between the instances is cut off after
`auth.max_failures` failures in total; `limits.max_connections_per_ip` counts the
sessions of both; with Redis stopped, AUTH fails closed (454 4.7.0, RFC 4954
section 6) and admission fails open, each with a rate-limited log line.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from arproxy.users import set_password

from ..peerskip import unless_peer
from .conftest import MakeArproxy
from .peers import WAIT, Arproxy, SmtpSink, free_port, stop
from .test_tls_auth import plain
from .test_workers import parallel_auth_failures, send

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

pytestmark = unless_peer(
    not Path(REDIS_SERVER).exists(), reason="redis-server (Debian package) not installed"
)


class RedisServer:
    """redis-server on a loopback port, no persistence; `stop` and `start` again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    yield server
    server.stop()


def state(redis: RedisServer) -> str:
    # A stopped Redis refuses at once, so a generous timeout costs the outage test
    # nothing; 0.5 s was short enough for a loaded machine to turn a slow answer into
    # "Redis down" (AUTH 454, admission uncounted) in the tests of a Redis that is up.
    return f'[state]\nredis_url = "{redis.url}"\ntimeout = 5.0\n'


def auth_attempt(port: int, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        reply = client.docmd("AUTH", plain("alice", password))
        with contextlib.suppress(smtplib.SMTPServerDisconnected):  # a 421 closed it
            client.quit()
        return reply


def two_instances(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, redis: RedisServer, extra: str = "", **kw: str
) -> tuple[Arproxy, Arproxy]:
    return (
        make_arproxy(smtp_sink.url, extra=state(redis) + extra, **kw),
        make_arproxy(smtp_sink.url, extra=state(redis) + extra, **kw),
    )


def test_a_guesser_alternating_between_instances_is_cut_off_after_max_failures(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, redis_server: RedisServer, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    set_password(users, "alice", "right")
    auth = f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\nmax_failures = 3\n'
    a, b = two_instances(make_arproxy, smtp_sink, redis_server, auth)
    # Three failures in total, alternating: 535, 535, then the third one cuts off.
    assert auth_attempt(a.port, "wrong")[0] == 535  # RFC 4954 section 6
    assert auth_attempt(b.port, "wrong")[0] == 535
    code, text = auth_attempt(a.port, "wrong")
    assert (code, text[:6]) == (421, b"4.7.0 "), (code, text)
    # Either instance now refuses even the right password, unchecked.
    for proxy in (b, a):
        code, text = auth_attempt(proxy.port, "right")
        assert (code, text[:6]) == (421, b"4.7.0 "), (code, text)
        assert "auth refused: too many failures" in proxy.log


def test_parallel_guesses_on_both_instances_get_at_most_max_failures_checks(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, redis_server: RedisServer, tmp_path: Path
) -> None:
    """auth.max_failures bounds the passwords checked for a guesser's parallel sessions
    spread over the instances too: each attempt is counted in Redis before its check."""
    users = tmp_path / "users"
    set_password(users, "alice", "right")
    auth = f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\nmax_failures = 2\n'
    a, b = two_instances(
        make_arproxy, smtp_sink, redis_server, auth, limits="max_connections_per_ip = 20"
    )
    replies = []
    with ThreadPoolExecutor(2) as pool:
        for found in pool.map(
            lambda port: parallel_auth_failures(port, "127.0.0.25", 6), (a.port, b.port)
        ):
            replies += found
    checked = sum(proxy.log.count("client=127.0.0.25 auth failed") for proxy in (a, b))
    assert checked == 2, a.log + b.log
    assert sorted(code for code, _ in replies) == [421] * 11 + [535]


def test_the_per_client_limit_counts_sessions_on_both_instances(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, redis_server: RedisServer
) -> None:
    a, b = two_instances(make_arproxy, smtp_sink, redis_server, limits="max_connections_per_ip = 2")
    # The instances' start-up probes were sessions too: their leases go back as their
    # connections close, asynchronously, so take each place once it is free.
    held = [_connect_when_free(a.port), _connect_when_free(b.port)]
    try:
        for client in held:
            assert client.noop()[0] == 250
        for proxy in (a, b):
            with pytest.raises(smtplib.SMTPConnectError) as caught:
                smtplib.SMTP("127.0.0.1", proxy.port, timeout=30)
            assert caught.value.smtp_code == 421  # RFC 5321 section 3.1, before the banner
            assert caught.value.smtp_error.startswith(b"4.7.0 ")
    finally:
        held[0].quit()
    # One place free again, on either instance, as soon as the client has its 221
    # (README, limits.max_connections_per_ip: a session answered 221 no longer counts).
    assert _accepts(b.port), "the place of the session answered 221"
    held[1].quit()


def _connect_when_free(port: int) -> smtplib.SMTP:
    """A session on `port` as soon as the per-client limit has a place (within WAIT)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return smtplib.SMTP("127.0.0.1", port, timeout=30)
        except smtplib.SMTPConnectError:
            assert time.monotonic() < deadline, f"no place on {port} within {WAIT}s"
            time.sleep(0.1)


def _accepts(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            return client.noop()[0] == 250
    except smtplib.SMTPConnectError:
        return False


def test_redis_down_auth_fails_closed_admission_fails_open(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, redis_server: RedisServer, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    set_password(users, "alice", "right")
    auth = f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\n'
    a, b = two_instances(
        make_arproxy, smtp_sink, redis_server, auth, limits="max_connections_per_ip = 2"
    )
    assert auth_attempt(a.port, "right")[0] == 235  # Redis up: the password is checked
    redis_server.stop()
    for proxy in (a, b):
        code, text = auth_attempt(proxy.port, "right")
        assert (code, text[:6]) == (454, b"4.7.0 "), (code, text)  # RFC 4954 section 6
        for k in range(5):  # admitted uncounted: more than the limit of 2, mail flows
            send(proxy.port, f"{k}@down.test")
        log = proxy.log
        assert log.count("state: AUTH refused (454 4.7.0)") == 1, log
        assert log.count("state: admitting connections uncounted") == 1, log
    assert len(smtp_sink.messages()) == 10
    redis_server.start()  # back: counted and checked again
    assert auth_attempt(a.port, "right")[0] == 235
