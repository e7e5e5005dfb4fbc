"""ARC end to end (RFC 8617; issue items 1 and 2): a message signed by its author's domain
(arc.test, p=reject), changed by a mailing list (Subject tag, footer) that sealed it,
sent on from the list's server 127.0.0.2 -> arproxy (reject_dmarc = true, Knot serving
the zones) -> smtp-sink. The delivered field is parsed back by our parser and by the
`authres` package, and the log line is asserted.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import authres as authres_package

from arproxy.authres import AuthenticationResults, parse

from ..arcmail import UNTRUSTED, list_message
from .conftest import MakeArproxy
from .peers import SmtpSink, swaks

POLICY = '[policy]\nreject_dmarc = true\ntrusted_arc_sealers = ["lists.example"]\n'


def deliver(port: int, message: bytes) -> tuple[int, bytes]:
    """The list's server hands the message over: the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("mail.sender.test")
        client.mail("team-bounces@lists.example")
        assert client.rcpt("bob@example.com")[0] == 250
        return client.data(message)


def delivered_field(sink: SmtpSink) -> tuple[AuthenticationResults, str]:
    """Our field of the one delivered message, parsed by us, and its text."""
    (got,) = sink.messages()
    first = got.message.split(b"\nReceived: ", 1)[0].decode()
    assert first.startswith("Authentication-Results: example.com;")
    text = first.replace("\r\n", "\n").replace("\n", "\r\n")
    return parse(text.split(":", 1)[1]), text


def results_of(field: AuthenticationResults) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        r.method: (r.result, {f"{p.ptype}.{p.name}": p.value for p in r.properties})
        for r in field.results
    }


def test_trusted_sealer_delivers_with_arc_pass_and_dmarc_fail(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    proxy = make_arproxy(smtp_sink.url, policy=POLICY)
    # swaks as the list's server, the sealed message as DATA.
    data = tmp_path / "list-copy.eml"
    data.write_bytes(list_message())
    run = swaks(
        "--server",
        f"127.0.0.1:{proxy.port}",
        "--local-interface",
        "127.0.0.2",
        "--ehlo",
        "mail.sender.test",
        "--from",
        "team-bounces@lists.example",
        "--to",
        "bob@example.com",
        "--data",
        str(data),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    field, text = delivered_field(smtp_sink)
    results = results_of(field)
    # The author's signature is broken by the list, SPF is the list's: DMARC fails (RFC 7489).
    assert results["dkim"][0] == "fail"
    assert results["dmarc"] == ("fail", {"header.from": "arc.test", "policy.dmarc": "reject"})
    assert results["arc"] == ("pass", {"smtp.remote-ip": "127.0.0.2"})
    # The comment says why the policy was not applied.
    assert "policy not applied: ARC sealed by lists.example" in text.replace("\r\n", "")
    # An independent parser reads the same results.
    theirs = authres_package.AuthenticationResultsHeader.parse(text.rstrip("\r\n"))
    assert [(r.method, r.result) for r in theirs.results][-2:] == [
        ("dmarc", "fail"),
        ("arc", "pass"),
    ]
    (line,) = [line for line in proxy.log.splitlines() if "results=[" in line]
    assert "arc override by lists.example" in line
    assert "arc=pass" in line and "relayed" in line


def test_untrusted_sealer_is_rejected_by_the_dmarc_policy(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, policy=POLICY)
    code, text = deliver(proxy.port, list_message(UNTRUSTED))
    assert code == 550
    assert text.startswith(b"5.7.1 DMARC")
    assert smtp_sink.messages() == []
    (line,) = [line for line in proxy.log.splitlines() if "results=[" in line]
    assert "reject by policy (dmarc=fail p=reject)" in line
    assert "arc=pass" in line and "arc override" not in line


def test_a_chain_tampered_after_the_seal_fails_and_is_rejected(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, policy=POLICY)
    tampered = list_message().replace(b"See you at noon.", b"Wire the money today.")
    code, text = deliver(proxy.port, tampered)
    assert code == 550
    assert text.startswith(b"5.7.1 DMARC")
    assert smtp_sink.messages() == []
    (line,) = [line for line in proxy.log.splitlines() if "results=[" in line]
    assert "arc=fail (ARC-Message-Signature i=1 did not verify)" in line
    assert "arc override" not in line


def test_without_reject_the_failed_chain_is_delivered_and_parses(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    tampered = list_message().replace(b"See you at noon.", b"Wire the money today.")
    assert deliver(proxy.port, tampered)[0] == 250
    field, text = delivered_field(smtp_sink)
    result, props = results_of(field)["arc"]
    assert (result, props) == ("fail", {"smtp.remote-ip": "127.0.0.2"})
    (arc,) = [r for r in field.results if r.method == "arc"]
    assert arc.reason == "ARC-Message-Signature i=1 did not verify"
    theirs = authres_package.AuthenticationResultsHeader.parse(text.rstrip("\r\n"))
    assert [r.result for r in theirs.results if r.method == "arc"] == ["fail"]
