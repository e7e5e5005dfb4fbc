"""The checks end to end: clients bound to 127.0.0.x -> arproxy -> smtp-sink, with a
real DNS server (Knot) serving the test zones. Our delivered field is parsed back
and every result and property asserted."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import dkim

from arproxy.authres import AuthenticationResults, parse

from ..dnsserver import KnotServer
from .conftest import MakeArproxy
from .peers import SmtpSink, swaks

KEYS = Path(__file__).parents[1] / "fixtures" / "keys"


def signed(message: bytes, domain: bytes = b"sender.test", selector: bytes = b"s2048") -> bytes:
    key = (KEYS / "rsa2048.pem").read_bytes()
    signature = dkim.sign(
        message, selector, domain, key, include_headers=[b"from", b"to", b"subject"]
    )
    return signature + message


def message_from(author: str, subject: str = "checks") -> bytes:
    return (
        f"From: {author}\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\r\n"
        "Hello from the test world.\r\n"
    ).encode()


def send(port: int, source: str, helo: str, sender: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo(helo)
        client.sendmail(sender, ["bob@example.com"], message)


def our_field(sink: SmtpSink) -> AuthenticationResults:
    (got,) = sink.messages()
    first = got.message.split(b"\nReceived: ", 1)[0].decode()
    assert first.startswith("Authentication-Results: ")
    return parse(first.split(":", 1)[1].replace("\n", "\r\n"))


def summary(field: AuthenticationResults) -> list[tuple[str, str, dict[str, str]]]:
    return [
        (r.method, r.result, {f"{p.ptype}.{p.name}": p.value for p in r.properties})
        for r in field.results
    ]


def test_good_sender_passes_every_check(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    send(
        proxy.port,
        "127.0.0.2",
        "mail.sender.test",
        "alice@sender.test",
        signed(message_from("Alice <alice@sender.test>")),
    )
    field = our_field(smtp_sink)
    assert field.authserv_id == "example.com"
    results = summary(field)
    assert [r[:2] for r in results] == [
        ("iprev", "pass"),
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
        ("arc", "none"),  # RFC 8617: one arc= result per message
    ]
    assert results[0][2] == {"policy.iprev": "127.0.0.2"}
    assert results[1][2] == {"smtp.mailfrom": "sender.test"}
    assert results[2][2]["header.d"] == "sender.test"
    assert results[2][2]["header.s"] == "s2048"
    assert len(results[2][2]["header.b"]) >= 8
    assert results[3][2]["header.from"] == "sender.test"
    assert results[3][2]["policy.dmarc"] == "reject"


def test_forger_fails_iprev_spf_and_dmarc(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    send(
        proxy.port,
        "127.0.0.3",
        "liar.iprev.test",
        "ceo@sender.test",
        message_from("CEO <ceo@sender.test>"),
    )
    results = summary(our_field(smtp_sink))
    assert [r[:2] for r in results] == [
        ("iprev", "fail"),
        ("spf", "fail"),
        ("dkim", "none"),
        ("dmarc", "fail"),
        ("arc", "none"),  # RFC 8617: one arc= result per message
    ]


def test_dmarc_reject_policy_refuses_the_forgery(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, policy="[policy]\nreject_dmarc = true")
    with smtplib.SMTP(
        "127.0.0.1", proxy.port, timeout=30, source_address=("127.0.0.3", 0)
    ) as client:
        client.ehlo("liar.iprev.test")
        client.mail("ceo@sender.test")
        assert client.rcpt("bob@example.com")[0] == 250
        code, text = client.data(message_from("CEO <ceo@sender.test>"))
    assert code == 550
    assert text.startswith(b"5.7.1 DMARC")
    assert smtp_sink.messages() == []
    assert "reject by policy (dmarc=fail p=reject)" in proxy.log


def test_null_sender_reports_the_helo_identity(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    send(
        proxy.port,
        "127.0.0.2",
        "mail.sender.test",
        "<>",
        message_from("MAILER-DAEMON <postmaster@mail.sender.test>"),
    )
    spf = [r for r in summary(our_field(smtp_sink)) if r[0] == "spf"]
    assert spf == [("spf", "pass", {"smtp.helo": "mail.sender.test"})]


def test_dns_down_gives_temperror_and_the_message_still_flows(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    dead = KnotServer()
    address = dead.address
    dead.close()
    proxy = make_arproxy(smtp_sink.url, nameserver=address)
    send(
        proxy.port,
        "127.0.0.2",
        "mail.sender.test",
        "alice@sender.test",
        signed(message_from("Alice <alice@sender.test>")),
    )
    values = {r[0]: r[1] for r in summary(our_field(smtp_sink))}
    assert values == {
        "iprev": "temperror",
        "spf": "temperror",
        "dkim": "temperror",
        "dmarc": "temperror",
        "arc": "none",  # no ARC field: nothing to look up (RFC 8617 section 5.2 step 1)
    }


def test_swaks_from_a_bound_source_address(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    result = swaks(
        "--server",
        f"127.0.0.1:{proxy.port}",
        "--local-interface",
        "127.0.0.2",
        "--helo",
        "mail.sender.test",
        "--from",
        "alice@sender.test",
        "--to",
        "bob@example.com",
        "--header",
        "From: alice@sender.test",
    )
    assert result.returncode == 0, result.stdout
    values = {r[0]: r[1] for r in summary(our_field(smtp_sink))}
    assert values["iprev"] == "pass"
    assert values["spf"] == "pass"
    assert values["dmarc"] == "pass"  # aligned SPF


def test_arproxy_check_prints_the_same_field(dns_server: KnotServer, tmp_path: Path) -> None:
    message = tmp_path / "message.eml"
    message.write_bytes(signed(message_from("Alice <alice@sender.test>")).replace(b"\r\n", b"\n"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "arproxy",
            "check",
            "--nameserver",
            dns_server.address,
            "--client-ip",
            "127.0.0.2",
            "--helo",
            "mail.sender.test",
            "--mail-from",
            "alice@sender.test",
            str(message),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    field = parse(result.stdout.split(":", 1)[1].rstrip("\n").replace("\n", "\r\n"))
    assert [(r.method, r.result) for r in field.results] == [
        ("iprev", "pass"),
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
        ("arc", "none"),  # RFC 8617: one arc= result per message
    ]
