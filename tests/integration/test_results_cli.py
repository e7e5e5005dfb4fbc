"""`arproxy results` on messages as arproxy delivered them: forged fields arrive, arproxy strips
them and writes its own, and the reader trusts exactly arproxy's field.
"""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest

from arproxy.authres import parse
from arproxy.client import trusted_results

from .conftest import MakeArproxy
from .peers import SmtpSink
from .test_probe import LOCAL, run_arproxy

INCOMING = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: quarterly figures\r\n"
    b"Authentication-Results: example.com; dkim=pass header.d=bank.example\r\n"
    b"Authentication-Results: (trust me) EXAMPLE.COM. 1; dmarc=pass header.from=bank.example\r\n"
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=other.example\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"See the attached message.\r\n"
    b"--b\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Authentication-Results: example.com; dkim=pass header.d=attached.example\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--b--\r\n"
)


@pytest.fixture
def delivered(make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path) -> tuple[Path, int]:
    """INCOMING relayed by arproxy, as the downstream stored it; and arproxy's port."""
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP(LOCAL, proxy.port, timeout=30) as client:
        client.ehlo("mail.sender.test")
        client.sendmail("alice@sender.test", ["bob@example.com"], INCOMING)
    (got,) = smtp_sink.messages()
    path = tmp_path / "delivered.eml"
    path.write_bytes(got.message)
    return path, proxy.port


def our_field_results(message: bytes) -> list[dict[str, object]]:
    """The results of the field arproxy wrote on top, in the JSON shape of the command."""
    first_field = message.split(b"\nReceived:")[0].removeprefix(b"Authentication-Results:")
    header = parse(first_field.replace(b"\n", b"\r\n").decode())
    return [
        {
            "method": res.method,
            "method_version": res.method_version,
            "result": res.result,
            "reason": res.reason,
            "properties": [
                {"ptype": p.ptype, "property": p.name, "value": p.value} for p in res.properties
            ],
        }
        for res in header.results
    ]


def test_only_arproxys_own_results_are_trusted(delivered: tuple[Path, int]) -> None:
    path, _ = delivered
    completed = run_arproxy("results", "--trust", "example.com", "--json", str(path))
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout)
    assert results == our_field_results(path.read_bytes())
    # Not the forged dkim=pass and dmarc=pass for bank.example, nor the attached message's
    # dkim=pass: what arproxy found for a sender.test message sent from 127.0.0.1.
    assert [(res["method"], res["result"]) for res in results] == [
        ("iprev", "pass"),
        ("spf", "fail"),
        ("dkim", "none"),
        ("dmarc", "fail"),
        ("arc", "none"),  # RFC 8617: one arc= result per message
    ]


def test_text_output_is_one_line_per_result(delivered: tuple[Path, int]) -> None:
    path, _ = delivered
    completed = run_arproxy("results", "--trust", "EXAMPLE.COM.", str(path))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == (
        "iprev=pass policy.iprev=127.0.0.1\n"
        "spf=fail smtp.mailfrom=sender.test\n"
        "dkim=none\n"
        "dmarc=fail header.from=sender.test policy.dmarc=reject\n"
        "arc=none smtp.remote-ip=127.0.0.1\n"
    )
    assert len(trusted_results(path.read_bytes(), "example.com")) == 5  # the Python API


def test_probe_learns_the_id_from_arproxy(delivered: tuple[Path, int]) -> None:
    path, port = delivered
    by_probe = run_arproxy(
        "results", "--probe", f"{LOCAL}:{port}", "--json", "-", stdin=path.read_bytes()
    )
    assert by_probe.returncode == 0, by_probe.stderr
    assert json.loads(by_probe.stdout) == our_field_results(path.read_bytes())


def test_fields_of_another_id_are_that_ids_to_vouch_for(delivered: tuple[Path, int]) -> None:
    path, _ = delivered
    completed = run_arproxy("results", "--trust", "other.example", str(path))
    assert (completed.returncode, completed.stdout) == (0, "spf=pass smtp.mailfrom=other.example\n")


def test_no_field_of_the_id_is_exit_1(delivered: tuple[Path, int]) -> None:
    path, _ = delivered
    completed = run_arproxy("results", "--trust", "mx.example.com", "--json", str(path))
    assert (completed.returncode, json.loads(completed.stdout)) == (1, [])


def test_a_subdomain_pattern_is_refused(delivered: tuple[Path, int]) -> None:
    path, _ = delivered
    completed = run_arproxy("results", "--trust", ".example.com", str(path))
    assert completed.returncode == 2
    assert "subdomain pattern" in completed.stderr


def test_probing_a_server_without_authserv_gives_no_id(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(INCOMING)
    completed = run_arproxy("results", "--probe", f"{LOCAL}:{smtp_sink.port}", str(path))
    assert completed.returncode == 2
    assert "no AUTHSERV" in completed.stderr
    assert "no authserv-id to trust" in completed.stderr
    assert completed.stdout == ""


def test_an_unreadable_file_is_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.eml"
    completed = run_arproxy("results", "--trust", "example.com", str(missing))
    assert completed.returncode == 2
    assert (
        completed.stderr == f"arproxy results: cannot read {missing}: No such file or directory\n"
    )
