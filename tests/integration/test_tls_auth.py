"""STARTTLS, implicit TLS and SMTP AUTH from real clients (swaks, smtplib)."""

from __future__ import annotations

import base64
import smtplib
import ssl
from pathlib import Path

import pytest

from arproxy.tls import make_self_signed
from arproxy.users import set_password

from .conftest import MakeArproxy
from .peers import SmtpSink, free_port, swaks


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    cert, key, users = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "users"
    make_self_signed(cert, key, "mx.example.com")
    set_password(users, "alice", "correct horse")
    return cert, key, users


def security_options(
    files: tuple[Path, Path, Path], *, plaintext: bool = False, implicit: int | None = None
) -> str:
    cert, key, users = files
    return (
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        + (f'implicit_listen = "127.0.0.1:{implicit}"\n' if implicit else "")
        + f'\n[auth]\nusers_file = "{users}"\nallow_plaintext = {str(plaintext).lower()}\n'
        + "max_failures = 3\n"
    )


def plain(user: str, password: str) -> str:
    """The argument of an AUTH PLAIN command with an initial response."""
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def delivered_header(sink: SmtpSink) -> bytes:
    """The header block of the first message the downstream received."""
    return sink.messages()[0].message.split(b"\n\n")[0]


def client_context(cert: Path) -> ssl.SSLContext:
    # The chain is verified against our test certificate; its name is
    # mx.example.com while the tests dial 127.0.0.1, so names are not compared.
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


def test_auth_is_offered_only_after_starttls_and_relays_anywhere(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), "no AUTH before TLS"
        assert client.docmd("AUTH", "PLAIN")[0] == 538
        client.starttls(context=client_context(tls_files[0]))
        client.ehlo("client.example.org")
        assert client.has_extn("auth")
        client.login("alice", "correct horse")
        refused = client.sendmail(
            "alice@example.org",
            ["someone@elsewhere.example"],
            b"From: alice@example.org\r\nSubject: out\r\n\r\nhi\r\n",
        )
    assert refused == {}
    (got,) = smtp_sink.messages()
    assert got.rcpt_args == ["<someone@elsewhere.example>"]
    header = got.message.split(b"\n\n")[0]
    assert b"auth=pass smtp.auth=alice" in header
    assert b"with ESMTPSA id" in header


def test_swaks_tls_and_auth(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files))
    result = swaks(
        "--server",
        f"127.0.0.1:{proxy.port}",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "correct horse",
        "--from",
        "alice@example.org",
        "--to",
        "friend@elsewhere.example",
    )
    assert result.returncode == 0, result.stdout
    assert "235 2.7.0" in result.stdout
    assert b"auth=pass smtp.auth=alice" in smtp_sink.messages()[0].message


def test_failed_auth_is_rate_limited_then_disconnected(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files, plaintext=True))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        plain = base64.b64encode(b"\0alice\0wrong").decode()
        assert client.docmd("AUTH", f"PLAIN {plain}") == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        assert client.docmd("AUTH", f"PLAIN {plain}")[0] == 535
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 421
        assert text.startswith(b"4.7.0 ")
    assert "auth failed user=alice" in proxy.log


def test_failed_then_successful_auth_writes_only_pass(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files, plaintext=True))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.docmd("AUTH", plain("alice", "nope"))[0] == 535
        client.login("alice", "correct horse")
        client.sendmail("alice@example.org", ["x@elsewhere.example"], b"Subject: s\r\n\r\nb\r\n")
    header = delivered_header(smtp_sink)
    assert b"auth=pass smtp.auth=alice" in header
    assert b"auth=fail" not in header


def test_authserv_after_auth_mode(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(
        smtp_sink.url,
        server='advertise_authserv = "after-auth"',
        extra=security_options(tls_files, plaintext=True),
    )
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        lines = client.ehlo("client.example.org")[1].decode().split("\n")
        assert "AUTHSERV" in lines
        client.login("alice", "correct horse")
        lines = client.ehlo("client.example.org")[1].decode().split("\n")
        assert "AUTHSERV example.com" in lines


def test_implicit_tls_listener(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    port = free_port()
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files, implicit=port))
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, timeout=30, context=client_context(tls_files[0])
    ) as client:
        client.ehlo("client.example.org")
        version = client.sock.version()  # type: ignore[union-attr]
        client.login("alice", "correct horse")
        client.sendmail("alice@example.org", ["x@elsewhere.example"], b"Subject: s\r\n\r\nb\r\n")
    assert version in ("TLSv1.2", "TLSv1.3")
    assert b"with ESMTPSA" in smtp_sink.messages()[0].message
    assert proxy.port != port


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=old)


def test_auth_inside_a_transaction_is_refused(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files, plaintext=True))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.mail("a@example.org")
        plain = base64.b64encode(b"\0alice\0correct horse").decode()
        assert client.docmd("AUTH", f"PLAIN {plain}") == (
            503,
            b"5.5.1 AUTH not permitted during a mail transaction",
        )


def test_failed_auth_only_writes_auth_fail(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(smtp_sink.url, extra=security_options(tls_files, plaintext=True))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.docmd("AUTH", plain("alice", "nope"))[0] == 535
        # Still unauthenticated: a local recipient is fine, a foreign one is not.
        assert client.sendmail("a@example.org", ["b@example.com"], b"Subject: s\r\n\r\nb\r\n") == {}
    header = delivered_header(smtp_sink)
    assert b"auth=fail smtp.auth=alice" in header
