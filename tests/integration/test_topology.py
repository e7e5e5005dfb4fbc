"""deploy/docker-compose.yml's topology as plain processes on loopback, from Debian's packages.

HAProxy (TCP mode, PROXY protocol v2, SMTP health checks: the settings of
deploy/haproxy/haproxy.cfg) -> two arproxy instances (`server.proxy_protocol`) -> a
private Postfix (receiving, delivering to the Maildir that Dovecot serves) -> Dovecot
with the AUTHSERV recipe of deploy/dovecot. Knot serves the fixture zones, in which
127.0.0.2 is mail.sender.test (iprev and SPF pass).

The client connects to HAProxy from 127.0.0.2: our Received line and results must name
127.0.0.2, not HAProxy's 127.0.0.1. Killing one arproxy (SIGKILL) while a client sends
a stream of messages, retrying on 4xx and dropped connections as an MTA does, must lose
no message that got its 250 (RFC 5321 section 6.1: the 250 takes the responsibility).
"""

from __future__ import annotations

import email
import imaplib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..dnsserver import KnotServer
from ..peerskip import unless_peer
from .conftest import arproxy_config
from .dovecot import PASSWORD, USER, Dovecot
from .peers import WAIT, Arproxy, PrivatePostfix, free_port, stop, wait_for, wait_for_port
from .test_probe import run_arproxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = unless_peer(
    os.geteuid() != 0 or not os.path.isdir("/etc/postfix"),
    reason="a private Postfix needs root and Debian's postfix package",
)

CLIENT_IP = "127.0.0.2"  # mail.sender.test in tests/fixtures/zones
STREAM = 40  # messages sent while one arproxy is killed
KILL_AFTER = 8  # acknowledged messages before the kill

HAPROXY_CFG = """\
global
    maxconn 500
defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # Without it a check's reply must come within `inter` (300 ms): on a loaded machine
    # a live arproxy was marked down (fall 1) and took no traffic. A killed one still
    # fails its check at once (connection refused).
    timeout check 10s
    # A server that refuses the connection (killed) is retried, then another is tried.
    retries 3
    option redispatch
frontend smtp
    bind 127.0.0.1:{port}
    default_backend arproxy
backend arproxy
    balance roundrobin
    option smtpchk EHLO haproxy.test
    default-server send-proxy-v2 check check-send-proxy inter 300ms fall 1 rise 2
    server arproxy1 127.0.0.1:{first}
    server arproxy2 127.0.0.1:{second}
"""


class HaProxy:
    """Debian's haproxy in the foreground (-db) with the configuration above."""

    def __init__(self, workdir: Path, backends: tuple[int, int]) -> None:
        self.port = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CFG.format(port=self.port, first=backends[0], second=backends[1]))
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = workdir / "haproxy.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.process)

    def close(self) -> None:
        stop(self.process)


@dataclass
class Topology:
    haproxy: HaProxy
    proxies: list[Arproxy]
    postfix: PrivatePostfix
    dovecot: Dovecot
    maildir: Path


@pytest.fixture
def topology(tmp_path: Path, dns_server: KnotServer) -> Iterator[Topology]:
    dovecot = Dovecot(authserv=True)
    mail_root = dovecot.workdir / "mail"
    stat = mail_root.stat()
    smtpd_port = free_port()
    postfix = PrivatePostfix(
        "[127.0.0.1]:9",
        master_extra=(
            f"127.0.0.1:{smtpd_port} inet n - n - - smtpd\n"
            "virtual   unix  -       n       n       -       -       virtual\n"
        ),
        main_extra=f"""\
mynetworks = 127.0.0.0/8
smtpd_authorized_xforward_hosts = 127.0.0.0/8
virtual_mailbox_domains = example.com
virtual_mailbox_base = {mail_root}
virtual_mailbox_maps = inline:{{ {USER}@example.com={USER}/ }}
virtual_uid_maps = static:{stat.st_uid}
virtual_gid_maps = static:{stat.st_gid}
virtual_minimum_uid = 1
""",
    )
    postfix.start()
    proxies: list[Arproxy] = []
    haproxy = None
    try:
        wait_for_smtpd(smtpd_port)
        for number in (1, 2):
            workdir = tmp_path / f"arproxy{number}"
            workdir.mkdir()
            text = arproxy_config(
                f"smtp://127.0.0.1:{smtpd_port}",
                nameserver=dns_server.address,
                server='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]',
            )
            proxies.append(Arproxy(workdir, text))
        haproxy = HaProxy(tmp_path, (proxies[0].port, proxies[1].port))
        yield Topology(haproxy, proxies, postfix, dovecot, mail_root / USER)
    finally:
        if haproxy is not None:
            haproxy.close()
        for proxy in proxies:
            if proxy.process.poll() is None:
                assert proxy.stop() == 0, proxy.log
            assert "Traceback" not in proxy.log, proxy.log
        postfix.close()
        dovecot.close()


def wait_for_smtpd(port: int) -> None:
    """Postfix's master daemonizes: poll the port rather than a process."""
    wait_for(lambda: _listening(port), f"Postfix's smtpd listening on {port}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def message(message_id: str) -> bytes:
    return (
        f"From: Carol <carol@sender.test>\r\nTo: {USER}@example.com\r\n"
        f"Subject: topology {message_id}\r\nMessage-ID: <{message_id}@sender.test>\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nbody of {message_id}\r\n"
    ).encode()


def send(port: int, message_id: str) -> None:
    """One message from 127.0.0.2 through HAProxy; raises on anything but 250."""
    with smtplib.SMTP(
        "127.0.0.1",
        port,
        local_hostname="mail.sender.test",
        timeout=30,
        source_address=(CLIENT_IP, 0),
    ) as client:
        client.sendmail("carol@sender.test", [f"{USER}@example.com"], message(message_id))


def delivered(maildir: Path) -> list[bytes]:
    return [
        path.read_bytes()
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for path in sorted((maildir / sub).iterdir())
    ]


def message_ids(maildir: Path) -> list[str]:
    ids = []
    for raw in delivered(maildir):
        value = email.message_from_bytes(raw)["Message-ID"]
        ids.append(str(value).strip("<>").split("@")[0])
    return ids


def wait_for_delivery(topology: Topology, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(delivered(topology.maildir)) >= count and topology.postfix.queue_is_empty():
            return
        time.sleep(0.3)
    raise AssertionError(f"not delivered in {timeout}s:\n{topology.postfix.log}")


def test_a_message_through_haproxy_keeps_the_clients_address(topology: Topology) -> None:
    send(topology.haproxy.port, "first")
    wait_for_delivery(topology, 1)
    (raw,) = delivered(topology.maildir)
    stored = email.message_from_bytes(raw)
    ours = [r for r in stored.get_all("Received", []) if "by mx.example.com" in r]
    assert len(ours) == 1, stored.get_all("Received")
    # RFC 5321 section 4.4: the TCP-info is the client's address, taken from the
    # PROXY header (HAProxy's own address is 127.0.0.1).
    assert f"[{CLIENT_IP}]" in ours[0]
    assert "127.0.0.1" not in ours[0]
    queue_id = re.search(r"\bid ([A-Z2-7]+)", ours[0])
    assert queue_id is not None, ours[0]
    # The same queue id is in arproxy's summary line, which names the client too.
    logs = "".join(proxy.log for proxy in topology.proxies)
    summary = [
        line for line in logs.splitlines() if f"id={queue_id[1]} " in line and "relayed" in line
    ]
    assert len(summary) == 1, logs
    assert f"client={CLIENT_IP}" in summary[0]
    # XFORWARD (Postfix XFORWARD_README): Postfix logs the real client and our queue id.
    postfix_log = topology.postfix.log
    assert f"client=unknown[{CLIENT_IP}]" in postfix_log, postfix_log
    assert f"orig_queue_id={queue_id[1]}" in postfix_log, postfix_log
    (field_,) = stored.get_all("Authentication-Results")
    results = " ".join(field_.split())
    # RFC 8601 section 3: iprev's property is policy.iprev, the client's address.
    assert f"iprev=pass policy.iprev={CLIENT_IP} (mail.sender.test)" in results
    assert f"spf=pass ({CLIENT_IP} is authorized) smtp.mailfrom=sender.test" in results
    assert "127.0.0.1" not in results


def test_probe_through_haproxy_sees_authserv(topology: Topology) -> None:
    completed = run_arproxy("probe", f"127.0.0.1:{topology.haproxy.port}")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "AUTHSERV, authserv-id example.com" in completed.stdout


def test_the_message_is_read_over_imap_with_our_field_trusted(topology: Topology) -> None:
    send(topology.haproxy.port, "imap")
    wait_for_delivery(topology, 1)
    with imaplib.IMAP4("127.0.0.1", topology.dovecot.imap_port) as imap:
        imap.login(USER, PASSWORD)
        imap.select("INBOX", readonly=True)
        status, data = imap.fetch("1", "(RFC822)")
        assert status == "OK"
        part = data[0]
        assert isinstance(part, tuple)
        raw = part[1]
    completed = run_arproxy(
        "results",
        "--probe",
        f"127.0.0.1:{topology.dovecot.imap_port}",
        "--protocol",
        "imap",
        "--user",
        USER,
        "--password",
        PASSWORD,
        "-",
        stdin=raw,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "iprev=pass" in completed.stdout and "spf=pass" in completed.stdout


@dataclass
class StreamingClient:
    """Sends STREAM messages one after another, retrying each like an MTA: on a 4xx,
    a dropped connection or a refused one, the same message again a moment later."""

    port: int
    acknowledged: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        for number in range(STREAM):
            message_id = f"stream{number}"
            for _ in range(20):
                self.attempts[message_id] = self.attempts.get(message_id, 0) + 1
                try:
                    send(self.port, message_id)
                except (smtplib.SMTPException, OSError) as exc:
                    self.errors.append(f"{message_id}: {exc!r}")
                    time.sleep(0.3)
                    continue
                self.acknowledged.append(message_id)
                break


def test_losing_one_arproxy_mid_run_loses_no_acknowledged_message(topology: Topology) -> None:
    client = StreamingClient(topology.haproxy.port)
    thread = threading.Thread(target=client.run)
    thread.start()
    deadline = time.monotonic() + 60
    while len(client.acknowledged) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = topology.proxies[0]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=WAIT)
    assert "relayed" in victim.log  # round robin: the victim was carrying traffic
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(client.acknowledged) == STREAM, client.errors
    wait_for_delivery(topology, STREAM)
    ids = message_ids(topology.maildir)
    for message_id in client.acknowledged:
        copies = ids.count(message_id)
        # Acknowledged: delivered. A second copy is only possible for a message whose
        # first 250 was lost with the killed instance (the client had to send it again).
        assert copies >= 1, f"{message_id} acknowledged but lost"
        assert copies == 1 or client.attempts[message_id] > 1, (message_id, copies)
    # The surviving instance took the rest of the stream.
    assert "relayed" in topology.proxies[1].log


def test_haproxy_health_check_config_is_what_deploy_ships() -> None:
    shipped = (
        Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
    ).read_text()
    for setting in (
        "mode tcp",
        "send-proxy-v2",
        "option smtpchk",
        "check-send-proxy",
        "option redispatch",
    ):
        assert setting in shipped and setting in HAPROXY_CFG, setting
