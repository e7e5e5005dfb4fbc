"""`server.workers = 2`: the supervisor and its workers, as an administrator runs them.

Every message is relayed exactly once whichever worker takes it; SIGTERM drains every
worker and nothing is left running; SIGHUP reloads the TLS pair and users file in
every worker; a killed worker is replaced; a bad file stops start-up before any fork;
the per-client limits count the sessions and failures of all workers.
Workers are told apart by the pid each log line carries with several workers.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
from collections import Counter
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from arproxy.tls import make_self_signed
from arproxy.users import set_password

from .conftest import MakeArproxy, arproxy_config
from .peers import WAIT, Arproxy, SmtpSink, free_port, wait_for
from .test_session import busy_clients_through_sigterm
from .test_signing import keygen
from .test_tls_auth import plain

WORKERS = "workers = 2\n"


def started_workers(log: str) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's lines."""
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started: pid (\d+)", log)}


def pids_of(pattern: str, log: str) -> Counter[int]:
    """How many log lines matching `pattern` (after `name[pid]: `) each process wrote."""
    return Counter(int(pid) for pid in re.findall(r"\[(\d+)\]: " + pattern, log))


def send(port: int, message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "alice@example.org",
            ["bob@example.com"],
            f"Message-ID: <{message_id}>\r\nSubject: {message_id}\r\n\r\nbody\r\n",
        )


def test_every_message_is_relayed_once_and_both_workers_serve(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=WORKERS)
    workers = started_workers(proxy.log)
    assert len(workers) == 2
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            for k in range(10):  # a session per message: the kernel picks a worker each time
                send(proxy.port, f"{number}.{k}@workers.test")
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = Counter(
        BytesHeaderParser().parsebytes(m.message)["Message-ID"] for m in smtp_sink.messages()
    )
    expected = {f"<{n}.{k}@workers.test>" for n in range(20) for k in range(10)}
    assert set(ids) == expected
    assert set(ids.values()) == {1}, "a message was relayed twice"
    served = pids_of(r"id=\S+ .* relayed: 250", proxy.log)
    assert sum(served.values()) == 200
    assert set(served) == set(workers.values()), f"per worker pid: {served}"
    print(f"accept balance over 200 sessions: {dict(served)}")


def test_sigterm_drains_every_worker_and_leaves_no_process(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=WORKERS)  # shutdown_grace = 5.0
    workers = started_workers(proxy.log)
    clients = busy_clients_through_sigterm(proxy)
    log = proxy.log
    assert "still busy" not in log, "a drain waited for the grace to run out"
    for index, pid in workers.items():
        assert f"worker {index} (pid {pid}) stopped: exit code 0" in log
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    assert pids_of("stopped\n", log) == dict.fromkeys(workers.values(), 1)
    # Nothing stored without the client's 250.
    assert len(smtp_sink.messages()) == sum(client.accepted for client in clients)


def test_sighup_reloads_the_certificate_and_users_in_every_worker(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    cert, key, users = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "users"
    make_self_signed(cert, key, "mx.example.com")
    set_password(users, "alice", "old password")
    proxy = make_arproxy(
        smtp_sink.url,
        server=WORKERS,
        extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n\n[auth]\nusers_file = "{users}"\n',
    )
    workers = started_workers(proxy.log)
    new_cert, new_key = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
    make_self_signed(new_cert, new_key, "mx.example.com")
    new_cert.replace(cert)
    new_key.replace(key)
    set_password(users, "alice", "new password")
    proxy.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: set(pids_of("reload: users file", proxy.log)) == set(workers.values()),
        "every worker reloads",
    )
    expected = ssl.PEM_cert_to_DER_cert(cert.read_text())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the certificate is compared byte for byte
    sessions = 0
    while set(pids_of("client=127.0.0.1 auth ok", proxy.log)) != set(workers.values()):
        assert sessions < 200, "one worker never took a session"
        sessions += 1
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            client.starttls(context=context)
            client.ehlo()
            assert client.sock.getpeercert(binary_form=True) == expected  # type: ignore[union-attr]
            code, _ = client.docmd("AUTH", plain("alice", "new password"))
            assert code == 235  # RFC 4954 section 6


def test_a_killed_worker_is_replaced(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, server=WORKERS)
    killed = started_workers(proxy.log)[0]
    subprocess.run(["kill", "-KILL", str(killed)], check=True)
    wait_for(lambda: started_workers(proxy.log)[0] != killed, "worker 0 restarted")
    assert f"worker 0 (pid {killed}) died (signal SIGKILL): restarting" in proxy.log
    successor = started_workers(proxy.log)[0]
    sessions = 0
    while successor not in pids_of(r"id=\S+ .* relayed: 250", proxy.log):
        assert sessions < 200, "the new worker never took a session"
        send(proxy.port, f"{sessions}@restart.test")
        sessions += 1
    # The fixture then checks that SIGTERM still ends everything with exit 0.


def test_a_bad_file_stops_start_up_before_any_fork(tmp_path: Path) -> None:
    config = tmp_path / "arproxy.toml"
    config.write_text(
        arproxy_config(
            "smtp://127.0.0.1:1",
            nameserver="127.0.0.1",
            server=WORKERS,
            extra=f'[tls]\ncert = "{tmp_path}/none.pem"\nkey = "{tmp_path}/none.key"\n',
        ).replace("@PORT@", str(free_port()))
    )
    result = subprocess.run(
        [sys.executable, "-m", "arproxy", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start:" in result.stderr and "none.pem" in result.stderr
    # The supervisor's own lines, not the word: the message names the file, whose
    # path (pytest's tmp_path, under the user's name and TMPDIR) may hold "worker".
    assert not re.search(r"starting \d+ workers|worker \d+ started", result.stderr)
    assert "Traceback" not in result.stderr


def test_the_per_client_limit_counts_both_workers(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """limits.max_connections_per_ip = 2 for the instance, not per worker: with two
    sessions open (on either worker), every further one is refused 421 4.7.0."""
    proxy: Arproxy = make_arproxy(
        smtp_sink.url, server=WORKERS, limits="max_connections_per_ip = 2"
    )
    held = [smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) for _ in range(2)]
    try:
        for client in held:
            assert client.noop()[0] == 250
        for _ in range(6):  # whichever worker each lands on
            with pytest.raises(smtplib.SMTPConnectError) as caught:
                smtplib.SMTP("127.0.0.1", proxy.port, timeout=30)
            assert caught.value.smtp_code == 421  # RFC 5321 section 3.1, before the banner
            assert caught.value.smtp_error.startswith(b"4.7.0 ")
    finally:
        for client in held:
            client.quit()
    send(proxy.port, "after@limit.test")  # places free again


def test_auth_failures_count_across_workers(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """auth.max_failures = 2 per client for the instance: after two failed sessions,
    wherever they ran, the next AUTH is refused 421 4.7.0 unchecked, on either worker."""
    users = tmp_path / "users"
    set_password(users, "alice", "right")
    proxy = make_arproxy(
        smtp_sink.url,
        server=WORKERS,
        extra=f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\nmax_failures = 2\n',
    )
    workers = set(started_workers(proxy.log).values())
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            client.ehlo()
            code, _ = client.docmd("AUTH", plain("alice", "wrong"))
            assert code in (535, 421)
    sessions = 0
    while set(pids_of("client=127.0.0.1 auth refused: too many failures", proxy.log)) != workers:
        assert sessions < 200, "one worker never took a session"
        sessions += 1
        client = smtplib.SMTP("127.0.0.1", proxy.port, timeout=30)
        client.ehlo()
        code, text = client.docmd("AUTH", plain("alice", "right"))
        assert (code, text[:6]) == (421, b"4.7.0 "), (code, text)
        client.close()


def test_a_worker_that_cannot_start_five_times_stops_the_supervisor(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """README: a worker that failed 5 times in a row, each within 30 s of its start,
    makes the supervisor stop the others and exit 1 -- the 5th failure, after 4
    restarts; a replacement that cannot read its signing key says so in one line."""
    key, _ = keygen(tmp_path, "example.com", "s1")
    signing = f'[dkim_sign]\ndomains = ["example.com"]\nselector = "s1"\nkey = "{key}"\n'
    workdir = tmp_path / "arproxy"
    workdir.mkdir()
    proxy = Arproxy(
        workdir,
        arproxy_config(smtp_sink.url, nameserver="127.0.0.1", server=WORKERS, extra=signing),
    )
    try:
        wait_for(lambda: "all 2 workers serving" in proxy.log, "readiness")
        key.unlink()  # from now on a worker cannot start
        os.kill(started_workers(proxy.log)[0], signal.SIGKILL)
        assert proxy.process.wait(WAIT) == 1
    finally:
        proxy.stop()
    log = proxy.log
    died = re.findall(r"worker 0 \(pid \d+\) died \(([^)]*)\)", log)
    assert died == ["signal SIGKILL", *["exit code 2"] * 4], log
    assert "died (exit code 2): 5 failures in a row, each within 30s of its start" in log
    assert log.count("restarting in") == 4
    refusals = [line for line in log.splitlines() if "worker cannot start:" in line]
    assert len(refusals) == 4 and all(key.name in line for line in refusals), refusals
    assert "Traceback" not in log


def test_a_session_answered_221_frees_its_place_on_every_worker(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """README, limits.max_connections_per_ip: a session answered 221 no longer counts,
    the client may open its next one at once (RFC 5321 section 4.1.1.10: the server
    closes after 221). With one place and two workers, each next session may land on
    the other worker, which must already see the place free: the count is published
    before the 221 goes out, not when the connection is gone (it was refused 421
    4.7.0 in 28 of 300 sessions on a loaded machine)."""
    proxy = make_arproxy(smtp_sink.url, server=WORKERS, limits="max_connections_per_ip = 1")
    refused = []
    for number in range(200):
        try:
            client = smtplib.SMTP("127.0.0.1", proxy.port, timeout=30)
        except smtplib.SMTPConnectError as error:
            refused.append((number, error.smtp_code, error.smtp_error))
            continue
        assert client.docmd("QUIT")[0] == 221
        client.close()
    assert refused == []
    served = pids_of(r"connect from 127\.0\.0\.1", proxy.log)
    assert set(served) == set(started_workers(proxy.log).values()), served
