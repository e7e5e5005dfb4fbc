"""Limits and operations from a real client: size, recipients, skip list, SIGHUP, passwd."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

from arproxy.tls import make_self_signed
from arproxy.users import UsersFile

from .conftest import MakeArproxy
from .peers import SmtpSink, wait_for


def test_size_is_advertised_and_enforced(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, limits="max_message_size = 2048")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.esmtp_features["size"] == "2048"
        # Declared too big: refused at MAIL.
        code, text = client.docmd("MAIL", "FROM:<a@example.org> SIZE=4096")
        assert (code, text[:6]) == (552, b"5.3.4 ")
        # Undeclared and too big: refused after DATA, nothing relayed.
        client.mail("a@example.org")
        client.rcpt("b@example.com")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 60)
        assert (code, text[:6]) == (552, b"5.3.4 ")
    assert smtp_sink.messages() == []


def test_too_many_recipients(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, limits="max_recipients = 2")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.mail("a@example.org")
        assert client.rcpt("x@example.com")[0] == 250
        assert client.rcpt("y@example.com")[0] == 250
        assert client.rcpt("z@example.com") == (452, b"4.5.3 Too many recipients")
        assert client.data(b"Subject: two\r\n\r\nok\r\n")[0] == 250
    (got,) = smtp_sink.messages()
    assert got.rcpt_args == ["<x@example.com>", "<y@example.com>"]


def test_skipped_clients_get_no_results_and_a_log_line(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra='[checks]\nskip_clients = ["127.0.0.8/32"]')
    with smtplib.SMTP(
        "127.0.0.1", proxy.port, timeout=30, source_address=("127.0.0.8", 0)
    ) as client:
        client.sendmail("a@sender.test", ["b@example.com"], b"Subject: s\r\n\r\nb\r\n")
    assert smtp_sink.messages()[0].message.startswith(
        b"Authentication-Results: example.com; none\n"
    )
    assert "client=127.0.0.8 checks skipped (checks.skip_clients)" in proxy.log


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.starttls(context=context)
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return der


def test_sighup_reloads_the_certificate(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, "old.example.com")
    proxy = make_arproxy(smtp_sink.url, extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"')
    before = served_certificate(proxy.port)
    make_self_signed(cert, key, "new.example.com")
    proxy.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: TLS certificate" in proxy.log, "the reload")
    after = served_certificate(proxy.port)
    assert before != after
    assert b"new.example.com" in after


def test_passwd_command_from_a_pipe(tmp_path: Path) -> None:
    users = tmp_path / "users"
    result = subprocess.run(
        [sys.executable, "-m", "arproxy", "passwd", str(users), "carol"],
        input="s3cret passphrase\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert users.stat().st_mode & 0o777 == 0o600
    loaded = UsersFile.load(users)
    assert "carol" in loaded
    assert asyncio.run(loaded.verify("carol", "s3cret passphrase"))
    assert not asyncio.run(loaded.verify("carol", "wrong"))
