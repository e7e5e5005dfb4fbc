"""`arproxy probe` and arproxy.client against real servers: arproxy itself, Postfix's
smtp-sink (no AUTHSERV) and Dovecot from Debian with and without the deploy/dovecot recipe.

Exit codes and printed lines are checked through the command, as a user runs it; the TLS and
login variants through the Python API, which the command only wraps.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from arproxy.client import (
    Credentials,
    ProbeLoginError,
    ProbeOptions,
    ProbeResult,
    probe_imap,
    probe_pop3,
    probe_smtp,
)
from arproxy.tls import make_self_signed
from arproxy.users import set_password

from .conftest import MakeArproxy
from .dovecot import PASSWORD, RECIPE, USER, Dovecot
from .peers import SmtpSink, free_port

LOCAL = "127.0.0.1"
ALICE = Credentials(USER, PASSWORD)


def run_arproxy(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-m", "arproxy", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed


def probe_json(*args: str) -> tuple[int, dict[str, object]]:
    completed = run_arproxy("probe", "--json", *args)
    return completed.returncode, json.loads(completed.stdout)


@pytest.fixture(scope="module")
def dovecot_with_recipe() -> Iterator[Dovecot]:
    server = Dovecot(authserv=True)
    yield server
    server.close()


@pytest.fixture(scope="module")
def dovecot_without_recipe() -> Iterator[Dovecot]:
    server = Dovecot(authserv=False)
    yield server
    server.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 (so the probe can verify it) and a users file."""
    cert, key, users = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "users"
    make_self_signed(cert, key, LOCAL)
    set_password(users, USER, PASSWORD)
    return cert, key, users


def tls_and_auth(files: tuple[Path, Path, Path], implicit_port: int | None = None) -> str:
    cert, key, users = files
    implicit = f'implicit_listen = "{LOCAL}:{implicit_port}"\n' if implicit_port else ""
    return f'[tls]\ncert = "{cert}"\nkey = "{key}"\n{implicit}\n[auth]\nusers_file = "{users}"\n'


# --- arproxy ------------------------------------------------------------------------------


def test_arproxy_space_form_prints_the_id_and_exits_0(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    completed = run_arproxy("probe", f"{LOCAL}:{proxy.port}")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == (
        f"{LOCAL}:{proxy.port} (smtp, pre-auth): AUTHSERV, authserv-id example.com\n"
    )
    code, result = probe_json(f"{LOCAL}:{proxy.port}")
    assert code == 0
    assert result["authserv_id"] == "example.com"
    assert "AUTHSERV example.com" in result["capabilities"]  # type: ignore[operator]


def test_arproxy_equals_form(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, server='authserv_form = "equals"')
    code, result = probe_json(f"{LOCAL}:{proxy.port}")
    assert code == 0
    assert result["advertised"] is True
    assert result["authserv_id"] == "example.com"
    assert "AUTHSERV=example.com" in result["capabilities"]  # type: ignore[operator]


def test_arproxy_after_auth_names_its_id_only_to_a_logged_in_client(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    proxy = make_arproxy(
        smtp_sink.url, server='advertise_authserv = "after-auth"', extra=tls_and_auth(tls_files)
    )
    target, cafile = f"{LOCAL}:{proxy.port}", str(tls_files[0])

    before = run_arproxy("probe", target, "--starttls", "--cafile", cafile)
    assert before.returncode == 0, before.stderr
    assert "AUTHSERV without an authserv-id; it may name it after login" in before.stdout

    after = run_arproxy(
        "probe", target, "--starttls", "--cafile", cafile, "--user", USER, "--password", PASSWORD
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout == f"{target} (smtp, post-auth): AUTHSERV, authserv-id example.com\n"

    refused = run_arproxy(
        "probe", target, "--starttls", "--cafile", cafile, "--user", USER, "--password", "wrong"
    )
    assert refused.returncode == 2
    assert "AUTH refused: 535" in refused.stderr


def test_arproxy_over_implicit_tls_verifies_the_certificate_by_default(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tls_files: tuple[Path, Path, Path]
) -> None:
    implicit_port = free_port()
    proxy = make_arproxy(smtp_sink.url, extra=tls_and_auth(tls_files, implicit_port))
    cafile = str(tls_files[0])

    result = probe_smtp(LOCAL, implicit_port, ProbeOptions("tls", cafile=cafile))
    assert result == ProbeResult(
        "smtp", LOCAL, implicit_port, True, "example.com", "pre-auth", result.capabilities
    )
    assert probe_smtp(LOCAL, proxy.port, ProbeOptions("starttls", ALICE, cafile)).phase == (
        "post-auth"
    )

    untrusted = run_arproxy("probe", f"{LOCAL}:{implicit_port}", "--tls")
    assert untrusted.returncode == 2
    assert "certificate not accepted" in untrusted.stderr
    insecure = run_arproxy("probe", f"{LOCAL}:{proxy.port}", "--starttls", "--insecure")
    assert insecure.returncode == 0, insecure.stderr


def test_starttls_demanded_of_a_server_without_it_is_an_error(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    completed = run_arproxy("probe", f"{LOCAL}:{proxy.port}", "--starttls")
    assert completed.returncode == 2
    assert "does not offer STARTTLS" in completed.stderr


# --- Postfix and unreachable servers -------------------------------------------------------


def test_postfix_smtp_sink_makes_no_promise_exit_1(smtp_sink: SmtpSink) -> None:
    completed = run_arproxy("probe", f"{LOCAL}:{smtp_sink.port}")
    assert completed.returncode == 1, completed.stderr
    assert "no AUTHSERV, the server makes no promise" in completed.stdout
    code, result = probe_json(f"{LOCAL}:{smtp_sink.port}")
    assert (code, result["advertised"], result["error"]) == (1, False, None)
    assert "PIPELINING" in result["capabilities"]  # type: ignore[operator]


def test_nothing_listening_is_exit_2_with_the_reason() -> None:
    target = f"{LOCAL}:{free_port()}"
    completed = run_arproxy("probe", target)
    assert completed.returncode == 2
    assert completed.stderr == f"arproxy probe: {target}: Connection refused\n"
    code, result = probe_json(target)
    assert code == 2
    assert result["error"] == "Connection refused"


def test_speaking_smtp_to_an_imap_server_is_exit_2(dovecot_with_recipe: Dovecot) -> None:
    completed = run_arproxy("probe", f"{LOCAL}:{dovecot_with_recipe.imap_port}")
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"arproxy probe: {LOCAL}:")


# --- Dovecot -----------------------------------------------------------------------------


def test_dovecot_imap_recipe_authserv_before_login_and_its_id_after(
    dovecot_with_recipe: Dovecot,
) -> None:
    target = f"{LOCAL}:{dovecot_with_recipe.imap_port}"
    code, before = probe_json(target, "--protocol", "imap")
    assert code == 0
    assert (before["phase"], before["authserv_id"]) == ("pre-auth", None)
    assert "AUTHSERV" in before["capabilities"]  # type: ignore[operator]

    after = run_arproxy(
        "probe", target, "--protocol", "imap", "--user", USER, "--password", PASSWORD
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout == f"{target} (imap, post-auth): AUTHSERV, authserv-id example.com\n"


def test_dovecot_imap_recipe_over_starttls_and_imaps(dovecot_with_recipe: Dovecot) -> None:
    cafile = str(dovecot_with_recipe.cert)
    over_starttls = probe_imap(
        LOCAL, dovecot_with_recipe.imap_port, ProbeOptions("starttls", ALICE, cafile)
    )
    assert (over_starttls.authserv_id, over_starttls.phase) == ("example.com", "post-auth")
    assert "AUTHSERV" not in over_starttls.capabilities  # replaced by AUTHSERV=<id> after login
    over_imaps = probe_imap(
        LOCAL, dovecot_with_recipe.imaps_port, ProbeOptions("tls", ALICE, cafile)
    )
    assert over_imaps.authserv_id == "example.com"


def test_dovecot_imap_without_recipe_makes_no_promise(dovecot_without_recipe: Dovecot) -> None:
    target = f"{LOCAL}:{dovecot_without_recipe.imap_port}"
    assert run_arproxy("probe", target, "--protocol", "imap").returncode == 1
    after = probe_imap(LOCAL, dovecot_without_recipe.imap_port, ProbeOptions(credentials=ALICE))
    assert (after.advertised, after.phase) == (False, "post-auth")
    assert "IMAP4rev1" in after.capabilities


def test_dovecot_pop3_cannot_advertise_authserv_even_with_the_recipe(
    dovecot_with_recipe: Dovecot,
) -> None:
    """The documented limit: Dovecot's CAPA list is compiled in."""
    server, cafile = dovecot_with_recipe, str(dovecot_with_recipe.cert)
    completed = run_arproxy("probe", f"{LOCAL}:{server.pop3_port}", "--protocol", "pop3")
    assert completed.returncode == 1
    for port, security in ((server.pop3_port, "starttls"), (server.pop3s_port, "tls")):
        after = probe_pop3(LOCAL, port, ProbeOptions(security, ALICE, cafile))  # type: ignore[arg-type]
        assert (after.advertised, after.phase) == (False, "post-auth")
        assert "UIDL" in after.capabilities


def test_dovecot_pop3_without_recipe_makes_no_promise(dovecot_without_recipe: Dovecot) -> None:
    after = probe_pop3(LOCAL, dovecot_without_recipe.pop3_port, ProbeOptions(credentials=ALICE))
    assert (after.advertised, after.phase) == (False, "post-auth")


def test_dovecot_refused_password_is_exit_2(dovecot_with_recipe: Dovecot) -> None:
    imap = run_arproxy(
        "probe", f"{LOCAL}:{dovecot_with_recipe.imap_port}", "--protocol", "imap",
        "--user", USER, "--password", "wrong",
    )  # fmt: skip
    assert imap.returncode == 2
    assert "LOGIN refused: [AUTHENTICATIONFAILED]" in imap.stderr
    wrong = Credentials(USER, "wrong")
    with pytest.raises(ProbeLoginError, match="PASS refused: -ERR"):
        probe_pop3(LOCAL, dovecot_with_recipe.pop3_port, ProbeOptions(credentials=wrong))


# --- POP3 with AUTHSERV: no real server offers it, so a scripted one (the draft's B.3) ---


class ScriptedPop3:
    """One POP3 session following the draft's appendix B.3, recording the client's commands."""

    BEFORE = b"TOP\r\nUSER\r\nSASL CRAM-MD5\r\nRESP-CODES\r\nAUTHSERV\r\n"
    AFTER = b"TOP\r\nUSER\r\nSASL CRAM-MD5\r\nRESP-CODES\r\nAUTHSERV authserv.example.com\r\n"

    def __init__(self, pass_reply: bytes = b"+OK maildrop locked and ready") -> None:
        self.listener = socket.create_server((LOCAL, 0))
        self.port: int = self.listener.getsockname()[1]
        self.pass_reply = pass_reply
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"+OK POP3 server ready\r\n")
            logged_in = False
            for raw in lines:
                command = raw.decode().rstrip("\r\n")
                self.commands.append(command.split()[0])
                if command == "CAPA":
                    listing = self.AFTER if logged_in else self.BEFORE
                    reply = b"+OK Capability list follows\r\n" + listing + b"."
                elif command.startswith("PASS "):
                    reply, logged_in = self.pass_reply, self.pass_reply.startswith(b"+OK")
                else:
                    reply = b"+OK"
                connection.sendall(reply + b"\r\n")
                if command == "QUIT":
                    return

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


def test_pop3_authserv_before_login_and_its_id_after_login() -> None:
    server = ScriptedPop3()
    completed = run_arproxy(
        "probe", f"{LOCAL}:{server.port}", "--protocol", "pop3", "--user", USER, "--password", "x"
    )
    server.close()
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == (
        f"{LOCAL}:{server.port} (pop3, post-auth): AUTHSERV, authserv-id authserv.example.com\n"
    )
    assert server.commands == ["CAPA", "USER", "PASS", "CAPA", "QUIT"]


def test_a_servers_refusal_reaches_the_terminal_escaped() -> None:
    server = ScriptedPop3(pass_reply=b"-ERR \x1b[2J\x1b[31mgo away")
    with pytest.raises(ProbeLoginError) as refused:
        probe_pop3(LOCAL, server.port, ProbeOptions(credentials=ALICE))
    server.close()
    assert str(refused.value) == "PASS refused: -ERR \\x1b[2J\\x1b[31mgo away"
    assert server.commands == ["CAPA", "USER", "PASS", "QUIT"]


def test_the_recipe_installs_into_debians_dovecot_configuration(tmp_path: Path) -> None:
    """The README's steps applied to a copy of the packaged /etc/dovecot: doveconf reads
    AUTHSERV before login and the per-session override after it."""
    etc = tmp_path / "dovecot"
    shutil.copytree("/etc/dovecot", etc)
    for name in ("95-authserv.conf", "authserv-userdb.conf.ext"):
        shutil.copy(RECIPE / name, etc / "conf.d" / name)
    auth_system = etc / "conf.d" / "auth-system.conf.ext"
    text = auth_system.read_text()
    assert text.count("\n  driver = passwd\n") == 1  # the userdb block (the passdb is PAM)
    auth_system.write_text(
        text.replace(
            "\n  driver = passwd\n", "\n  driver = passwd\n  !include authserv-userdb.conf.ext\n"
        )
    )
    doveconf = shutil.which("doveconf") or "/usr/bin/doveconf"

    def config(*args: str) -> str:
        return subprocess.run(
            [doveconf, "-c", str(etc / "dovecot.conf"), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert config("-h", "imap_capability") == "+AUTHSERV\n"
    assert "override_fields = imap_capability=+AUTHSERV=example.com" in config("-n")
