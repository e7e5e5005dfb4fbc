"""SMTP extensions end to end: the parameters a client may use, and what reaches the
downstream (Postfix's smtp-sink, with and without 8BITMIME, SMTP and LMTP; a second
arproxy as a downstream that offers SMTPUTF8, which smtp-sink never does).

Every expected reply comes from the RFC cited next to it.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from arproxy.authres import parse
from arproxy.users import set_password

from ..dnsserver import KnotServer
from .conftest import MakeArproxy, arproxy_config
from .peers import Arproxy, SmtpSink, sink
from .test_hostile import Raw

UTF8_SENDER = "jürgen@bücher.example"
EIGHT_BIT_BODY = "Subject: plain\r\n\r\nGrüße\r\n".encode()
SEVEN_BIT_BODY = b"Subject: plain\r\n\r\nhello\r\n"


def session(port: int) -> Raw:
    raw = Raw(port)
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    return raw


def code_of(reply: bytes) -> bytes:
    """'555 5.5.4' from a reply: the code and the enhanced code."""
    return reply[:9]


# --- which parameters a client may use ---------------------------------------------

# (MAIL parameters, expected code and enhanced code, why)
MAIL_PARAMETERS = [
    (b"SIZE=1000", b"250 2.1.0", "RFC 1870: offered"),
    (b"SIZE=999999999999", b"552 5.3.4", "RFC 1870 section 6: over our limit"),
    (b"SIZE=many", b"501 5.5.4", "RFC 1870: size-value is digits"),
    (b"BODY=8BITMIME", b"250 2.1.0", "RFC 6152: offered"),
    (b"BODY=7BIT", b"250 2.1.0", "RFC 6152: offered"),
    (b"BODY=BINARYMIME", b"501 5.5.4", "RFC 3030: BINARYMIME is not offered"),
    (b"SMTPUTF8", b"250 2.1.0", "RFC 6531: offered"),
    (b"SMTPUTF8=YES", b"501 5.5.4", "RFC 6531 section 3.4: no value"),
    (b"AUTH=<>", b"555 5.5.4", "RFC 4954 section 5: AUTH is not offered here"),
    (b"RET=HDRS", b"555 5.5.4", "RFC 3461: DSN is not offered"),
    (b"ENVID=QQ314159", b"555 5.5.4", "RFC 3461: DSN is not offered"),
    (b"MT-PRIORITY=3", b"555 5.5.4", "RFC 6710: not offered; the keyword has a hyphen"),
    (b"REQUIRETLS", b"555 5.5.4", "RFC 8689: not offered"),
    (b"BY=120;R", b"555 5.5.4", "RFC 2852: DELIVERBY is not offered"),
    (b"HOLDFOR=60", b"555 5.5.4", "RFC 4865: FUTURERELEASE is not offered"),
    (b"X-FOO=bar", b"555 5.5.4", "RFC 5321 section 4.1.1.11: unknown"),
    (b"X_FOO=bar", b"501 5.5.4", "RFC 5321 section 4.1.2: '_' is no esmtp-keyword"),
    (b"FOO=", b"501 5.5.4", "RFC 5321 section 4.1.2: esmtp-value is 1*char"),
    (b"SIZE=1 SIZE=2", b"501 5.5.4", "a parameter given twice"),
]


@pytest.mark.parametrize(
    ("parameters", "expected", "why"), MAIL_PARAMETERS, ids=[p[0].decode() for p in MAIL_PARAMETERS]
)
def test_mail_parameter_replies(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, parameters: bytes, expected: bytes, why: str
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = session(proxy.port)
    reply = raw.command(b"MAIL FROM:<alice@example.org> " + parameters)
    assert code_of(reply) == expected, (why, reply)
    assert raw.command(b"RSET").startswith(b"250 ")
    raw.close()
    if expected.startswith(b"555"):
        assert "MAIL parameter" in proxy.log, "our refusal is logged"


RCPT_PARAMETERS = [
    b"NOTIFY=NEVER",  # RFC 3461: DSN is not offered
    b"ORCPT=rfc822;bob@example.com",
    b"X-FOO=bar",
]


@pytest.mark.parametrize("parameter", RCPT_PARAMETERS, ids=[p.decode() for p in RCPT_PARAMETERS])
def test_rcpt_parameters_are_not_offered(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, parameter: bytes
) -> None:
    """RFC 5321 section 4.1.1.11: RCPT parameters of no offered extension get 555."""
    proxy = make_arproxy(smtp_sink.url)
    raw = session(proxy.port)
    assert raw.command(b"MAIL FROM:<alice@example.org>").startswith(b"250 ")
    assert code_of(raw.command(b"RCPT TO:<bob@example.com> " + parameter)) == b"555 5.5.4"
    assert raw.command(b"RCPT TO:<bob@example.com>").startswith(b"250 "), "session goes on"
    raw.close()
    assert "RCPT parameter" in proxy.log


def test_auth_parameter_is_taken_when_auth_is_offered(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """RFC 4954 section 5: with AUTH offered, MAIL takes AUTH=<mailbox> as xtext; it is
    not passed on to the downstream, which does not authenticate us."""
    users = tmp_path / "users"
    set_password(users, "alice", "correct horse")
    proxy = make_arproxy(
        smtp_sink.url, extra=f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\n'
    )
    raw = session(proxy.port)
    assert raw.command(b"MAIL FROM:<a@example.org> AUTH=<a+2Bb@example.org>").startswith(b"250 ")
    assert raw.command(b"RSET").startswith(b"250 ")
    assert code_of(raw.command(b"MAIL FROM:<a@example.org> AUTH=<a b>")) == b"501 5.5.4"
    assert raw.command(b"MAIL FROM:<a@example.org> AUTH=<>").startswith(b"250 ")
    assert raw.command(b"RCPT TO:<bob@example.com>").startswith(b"250 ")
    assert raw.command(b"DATA").startswith(b"354 ")
    assert raw.command(SEVEN_BIT_BODY + b".").startswith(b"250 ")
    raw.close()
    (got,) = smtp_sink.messages()
    assert "AUTH=" not in got.mail_args


def test_ehlo_offers_8bitmime_and_smtputf8(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        assert not client.has_extn("dsn")


# --- 8BITMIME to the downstream -----------------------------------------------------


def transaction(port: int, mail_parameters: bytes, content: bytes) -> tuple[bytes, bytes]:
    """(RCPT reply, DATA reply) of one transaction to bob@example.com."""
    raw = session(port)
    assert raw.command(b"MAIL FROM:<alice@example.org>" + mail_parameters).startswith(b"250 ")
    rcpt = raw.command(b"RCPT TO:<bob@example.com>")
    if not rcpt.startswith(b"250 "):
        raw.close()
        return rcpt, b""
    assert raw.command(b"DATA").startswith(b"354 ")
    data = raw.command(content + b".")
    raw.close()
    return rcpt, data


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_body_8bitmime_is_carried_to_a_downstream_that_offers_it(
    make_arproxy: MakeArproxy, tmp_path: Path, lmtp: bool
) -> None:
    with sink(tmp_path / "s", ["-L"] if lmtp else []) as downstream:
        scheme = "lmtp" if lmtp else "smtp"
        proxy = make_arproxy(f"{scheme}://127.0.0.1:{downstream.port}")
        rcpt, data = transaction(proxy.port, b" BODY=8BITMIME", EIGHT_BIT_BODY)
        assert rcpt.startswith(b"250 ") and data.startswith(b"250 "), data
        (got,) = downstream.messages()
    assert "BODY=8BITMIME" in got.mail_args
    assert "Grüße".encode() in got.message


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@pytest.mark.parametrize("declared", [b" BODY=8BITMIME", b""], ids=["declared", "undeclared"])
def test_8bit_content_to_a_downstream_without_8bitmime_is_refused(
    make_arproxy: MakeArproxy, tmp_path: Path, lmtp: bool, declared: bytes
) -> None:
    """RFC 6152 section 3: no 8-bit data to a server that did not offer 8BITMIME; we
    refuse at the end of DATA (RFC 3463 X.6.3), never a silent downgrade."""
    options = ["-8", "-L"] if lmtp else ["-8"]
    with sink(tmp_path / "s", options) as downstream:
        scheme = "lmtp" if lmtp else "smtp"
        proxy = make_arproxy(f"{scheme}://127.0.0.1:{downstream.port}")
        rcpt, data = transaction(proxy.port, declared, EIGHT_BIT_BODY)
        assert rcpt.startswith(b"250 ")
        assert code_of(data) == b"554 5.6.3", data
        assert downstream.messages() == []
        # A 7-bit message goes on, without the BODY= the downstream did not offer.
        rcpt, data = transaction(proxy.port, declared, SEVEN_BIT_BODY)
        assert data.startswith(b"250 "), data
        (got,) = downstream.messages()
    assert "BODY=" not in got.mail_args
    assert "8BITMIME" in proxy.log


# --- SMTPUTF8 -----------------------------------------------------------------------


def test_utf8_address_without_smtputf8_is_refused(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """RFC 6531 section 3.5: a non-ASCII address needs SMTPUTF8: 553 with X.6.7."""
    proxy = make_arproxy(smtp_sink.url)
    raw = session(proxy.port)
    assert code_of(raw.command(f"MAIL FROM:<{UTF8_SENDER}>".encode())) == b"553 5.6.7"
    assert raw.command(b"MAIL FROM:<alice@example.org>").startswith(b"250 ")
    assert code_of(raw.command("RCPT TO:<josé@example.com>".encode())) == b"553 5.6.7"
    # Bytes that are not UTF-8 are no address at all, SMTPUTF8 or not.
    assert raw.command(b"RSET").startswith(b"250 ")
    assert code_of(raw.command(b"MAIL FROM:<j\xfcrgen@example.org> SMTPUTF8")) == b"553 5.1.7"
    raw.close()
    assert smtp_sink.messages() == []


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_smtputf8_to_a_downstream_without_it_is_refused_at_rcpt(
    make_arproxy: MakeArproxy, tmp_path: Path, lmtp: bool
) -> None:
    """smtp-sink never offers SMTPUTF8. RFC 6531 section 3.4: a relay may not downgrade:
    553 5.6.7 for a non-ASCII address, 550 5.6.9 for an ASCII envelope."""
    with sink(tmp_path / "s", ["-L"] if lmtp else []) as downstream:
        scheme = "lmtp" if lmtp else "smtp"
        proxy = make_arproxy(f"{scheme}://127.0.0.1:{downstream.port}")
        _refused_at_rcpt(proxy.port)
        assert downstream.messages() == []
    assert "SMTPUTF8" in proxy.log


def _refused_at_rcpt(port: int) -> None:
    raw = session(port)
    assert raw.command(f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8".encode()).startswith(b"250 ")
    assert code_of(raw.command(b"RCPT TO:<bob@example.com>")) == b"553 5.6.7"
    assert raw.command(b"RSET").startswith(b"250 ")
    assert raw.command(b"MAIL FROM:<alice@example.org> SMTPUTF8").startswith(b"250 ")
    assert code_of(raw.command(b"RCPT TO:<bob@example.com>")) == b"550 5.6.9"
    raw.close()


@pytest.fixture
def utf8_chain(tmp_path: Path, dns_server: KnotServer) -> Iterator[tuple[Arproxy, Arproxy]]:
    """arproxy (local domains example.com and bücher.example, as an A-label) relaying to a
    second arproxy that delivers to a Maildir: a downstream offering SMTPUTF8."""
    final_dir = tmp_path / "final"
    final_dir.mkdir()
    final = Arproxy(
        final_dir,
        arproxy_config("maildir:mail", nameserver=dns_server.address)
        .replace('authserv_id = "example.com"', 'authserv_id = "final.example"')
        .replace(
            'local = ["example.com", "example.net"]',
            'local = ["example.com", "xn--bcher-kva.example"]',
        ),
    )
    border_dir = tmp_path / "border"
    border_dir.mkdir()
    border = Arproxy(
        border_dir,
        arproxy_config(f"smtp://127.0.0.1:{final.port}", nameserver=dns_server.address).replace(
            'local = ["example.com", "example.net"]',
            'local = ["example.com", "xn--bcher-kva.example"]',
        ),
    )
    yield border, final
    for proxy in (border, final):
        assert proxy.stop() == 0, proxy.log
        assert "Traceback" not in proxy.log, proxy.log


def test_smtputf8_end_to_end(utf8_chain: tuple[Arproxy, Arproxy]) -> None:
    """RFC 6531: UTF-8 addresses and a UTF-8 header (RFC 6532) reach the downstream as
    they were sent, and our field parses back with our parser. A U-label recipient
    domain is local by its A-label."""
    border, final = utf8_chain
    message = (
        f"From: Jürgen <{UTF8_SENDER}>\r\nTo: bob@bücher.example\r\n"
        "Subject: Grüße aus Köln\r\n\r\nGrüße\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", border.port, timeout=30) as client:
        refused = client.sendmail(
            UTF8_SENDER,
            ["bob@bücher.example", "josé@example.com", "carol@BÜCHER.example"],
            message,
            mail_options=["SMTPUTF8"],
        )
    assert refused == {}
    (delivered,) = list((final.workdir / "mail" / "new").iterdir())
    raw = delivered.read_bytes()
    assert raw.endswith(message), "header and body byte-exact"
    header = raw.split(b"\r\n\r\n")[0].decode("utf-8")
    fields = header.replace("\r\n\t", "\t").split("\r\n")
    ours = [f for f in fields if f.startswith("Authentication-Results: example.com;")]
    assert len(ours) == 1, header
    parsed = parse(ours[0].split(":", 1)[1].replace("\t", "\r\n\t"))
    values = {(r.method, p.ptype, p.name): p.value for r in parsed.results for p in r.properties}
    # The SPF and DMARC checks report the domain, in A-labels (RFC 8616 sections 4 and 6:
    # the same domain as the U-labels; the DNS knows only A-labels).
    assert values[("spf", "smtp", "mailfrom")] == "xn--bcher-kva.example", ours[0]
    assert values[("dmarc", "header", "from")] == "xn--bcher-kva.example", ours[0]
    # RFC 6531 section 3.7.3: each hop stamps the transaction UTF8SMTP.
    received = [f for f in fields if f.startswith("Received: ")]
    assert len(received) == 2, header
    assert all(" with UTF8SMTP id " in f for f in received), received


def test_u_label_domain_that_idna_versions_disagree_on_is_not_local(
    utf8_chain: tuple[Arproxy, Arproxy],
) -> None:
    """ "faß" is "fass" in IDNA 2003 but "xn--fa-hia" in IDNA 2008: a name whose A-label
    depends on the reader is never taken for a local domain (no open relay by IDNA)."""
    border, _ = utf8_chain
    raw = session(border.port)
    assert raw.command(b"MAIL FROM:<alice@example.org> SMTPUTF8").startswith(b"250 ")
    assert code_of(raw.command("RCPT TO:<bob@faß.example>".encode())) == b"550 5.7.1"
    assert raw.command(b"RCPT TO:<bob@xn--bcher-kva.example>").startswith(b"250 ")
    raw.close()


def test_utf8_subject_without_smtputf8_flows_by_default(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """limits.eight_bit_header defaults to "accept", as Postfix does: a UTF-8 Subject
    from a client that did not say SMTPUTF8 is relayed as it came."""
    proxy = make_arproxy(smtp_sink.url)
    subject = "Subject: caf\u00e9\r\n\r\nbody\r\n".encode()
    _rcpt, data = transaction(proxy.port, b" BODY=8BITMIME", subject)
    assert data.startswith(b"250 "), data
    (got,) = smtp_sink.messages()
    assert "Subject: café\n".encode() in got.message


@pytest.mark.parametrize("helo", ["bücher.example".encode(), b"caf\xe9.example"])
def test_non_ascii_ehlo_is_refused_and_session_continues(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, helo: bytes
) -> None:
    """Commands are read as UTF-8 since SMTPUTF8 is offered, but it is asked for on MAIL
    (RFC 6531 section 3.4): the EHLO domain stays ASCII (RFC 5321 section 4.1.1.1)."""
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert code_of(raw.command(b"EHLO " + helo)) == b"501 5.5.4"
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    raw.close()
