"""arproxy end to end: real clients (smtplib, swaks) -> arproxy -> real downstreams."""

from __future__ import annotations

import re
import smtplib
import socket
from pathlib import Path

import pytest

from arproxy.authres import parse

from .conftest import MakeArproxy
from .peers import WAIT, SmtpSink, free_port, sink, swaks

ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: byte-exact relay\r\n"
    b"Authentication-Results: example.com; dkim=pass header.d=forged.example\r\n"
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=example.org\r\n"
    b'authentication-results :  (comment) "EXAMPLE.COM" 1;\r\n'
    b"\tspf=pass smtp.mailfrom=x.example\r\n"
    b"X-Folded: first part\r\n"
    b"\tsecond part with trailing space \r\n"
    b"Authentication-Results: a.trusted.example; none\r\n"
    b"\r\n"
    b"Body line one\r\n"
    b".a line that starts with a dot\r\n"
    b"Authentication-Results: example.com; body text is not a header\r\n"
    b"\r\n"
    b"last line\r\n"
)
# What must arrive below our two fields: the original, minus the three forgeries.
EXPECTED_REST = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: byte-exact relay\r\n"
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=example.org\r\n"
    b"X-Folded: first part\r\n"
    b"\tsecond part with trailing space \r\n"
    b"\r\n"
    b"Body line one\r\n"
    b".a line that starts with a dot\r\n"
    b"Authentication-Results: example.com; body text is not a header\r\n"
    b"\r\n"
    b"last line\r\n"
)


def split_our_fields(message: bytes, newline: bytes = b"\r\n") -> tuple[bytes, bytes, bytes]:
    """(our Authentication-Results field, our Received field, the rest)."""
    lines = message.split(newline)
    assert lines[0].startswith(b"Authentication-Results: "), message[:200]
    ar_end = 1
    while lines[ar_end][:1] in (b" ", b"\t"):
        ar_end += 1
    assert lines[ar_end].startswith(b"Received: "), message[:400]
    rcv_end = ar_end + 1
    while lines[rcv_end][:1] in (b" ", b"\t"):
        rcv_end += 1
    join = newline.join
    return (
        join(lines[:ar_end]) + newline,
        join(lines[ar_end:rcv_end]) + newline,
        join(lines[rcv_end:]),
    )


def ehlo_lines(port: int) -> list[str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        code, text = client.ehlo("client.example.org")
        assert code == 250
        return text.decode().split("\n")


# --- AUTHSERV in EHLO ------------------------------------------------------------


def test_ehlo_advertises_authserv_in_rfc5321_form_by_default(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    lines = ehlo_lines(proxy.port)
    assert "AUTHSERV example.com" in lines
    assert lines[-1] == "HELP", "AUTHSERV goes before the final line"
    assert "ENHANCEDSTATUSCODES" in lines


def test_ehlo_advertises_authserv_in_equals_form(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, server='authserv_form = "equals"')
    assert "AUTHSERV=example.com" in ehlo_lines(proxy.port)


def test_ehlo_without_authserv_when_never(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, server='advertise_authserv = "never"')
    assert not any(line.upper().startswith("AUTHSERV") for line in ehlo_lines(proxy.port))


# --- relay through Postfix's smtp-sink ---------------------------------------------


def test_relay_is_byte_exact_but_for_our_two_fields(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        refused = client.sendmail("alice@example.org", ["bob@example.com"], ORIGINAL)
    assert refused == {}

    (got,) = smtp_sink.messages()
    assert got.mail_args == "<alice@example.org>"
    assert got.rcpt_args == ["<bob@example.com>"]
    assert got.helo_args == "mx.example.com", "we greet the downstream with our own name"
    ours, received, rest = split_our_fields(got.message, b"\n")
    assert rest == EXPECTED_REST.replace(b"\r\n", b"\n")  # smtp-sink dumps with LF
    field = parse(ours.decode().split(":", 1)[1].rstrip("\n").replace("\n", "\r\n"))
    assert field.authserv_id == "example.com"
    assert [r.method for r in field.results] == ["iprev", "spf", "dkim", "dmarc", "arc"]
    assert received.startswith(
        b"Received: from client.example.org ([127.0.0.1])\n\tby "
        b"mx.example.com (arproxy) with ESMTP id "
    )
    assert b"for <bob@example.com>;" in received
    assert "forged=3" in proxy.log


def test_maildir_delivery_is_byte_exact_and_atomic(make_arproxy: MakeArproxy) -> None:
    proxy = make_arproxy("maildir:mail")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.com"], ORIGINAL)
    maildir = proxy.workdir / "mail"
    assert list((maildir / "tmp").iterdir()) == []
    (delivered,) = list((maildir / "new").iterdir())
    ours, received, rest = split_our_fields(delivered.read_bytes())
    assert parse(ours.decode().split(":", 1)[1]).authserv_id == "example.com"
    assert rest == EXPECTED_REST
    assert received.endswith(b"\r\n")


def test_forged_fields_renamed_when_configured(make_arproxy: MakeArproxy) -> None:
    proxy = make_arproxy("maildir:mail", headers='forged = "rename"')
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.com"], ORIGINAL)
    (delivered,) = list((proxy.workdir / "mail" / "new").iterdir())
    header = delivered.read_bytes().split(b"\r\n\r\n")[0]
    # Counted on the raw bytes: the stdlib parser ends the header at the renamed
    # field that keeps its space before the colon.
    assert re.findall(rb"(?m)^Authentication-Results: (\S+);", header) == [
        b"example.com",
        b"other.example",
    ]
    assert re.findall(
        rb"(?mi)^Original-Authentication-Results\s*:\s*(\(comment\) )?([^\s;]+)", header
    ) == [(b"", b"example.com"), (b"(comment) ", b'"EXAMPLE.COM"'), (b"", b"a.trusted.example")]


def test_swaks_message_lands_in_maildir_with_our_fields_on_top(make_arproxy: MakeArproxy) -> None:
    proxy = make_arproxy("maildir:var/maildir")
    result = swaks(
        "--server",
        f"127.0.0.1:{proxy.port}",
        "--from",
        "alice@example.org",
        "--to",
        "bob@example.com",
        "--helo",
        "client.example.org",
        "--header",
        "Authentication-Results: example.com; spf=pass",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (delivered,) = list((proxy.workdir / "var" / "maildir" / "new").iterdir())
    message = delivered.read_bytes()
    ours, received, _ = split_our_fields(message)
    assert parse(ours.decode().split(":", 1)[1]).authserv_id == "example.com"
    assert received.startswith(b"Received: from client.example.org ([127.0.0.1])\r\n")
    assert message.count(b"Authentication-Results") == 1, "the forged one is gone"


def test_null_sender_relays_as_null_reverse_path(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.sendmail("<>", ["bob@example.com"], b"Subject: bounce\r\n\r\nbody\r\n")
    (got,) = smtp_sink.messages()
    assert got.mail_args == "<>"


def test_several_recipients_and_transactions_in_one_session(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.sendmail(
            "a@example.org", ["x@example.com", "y@example.net"], b"Subject: 1\r\n\r\n1\r\n"
        )
        client.sendmail("a@example.org", ["z@example.com"], b"Subject: 2\r\n\r\n2\r\n")
    # Two dumps written in the same clock tick have no order: sort by content.
    second, first = sorted(smtp_sink.messages(), key=lambda m: m.rcpt_args[0], reverse=True)
    assert first.rcpt_args == ["<x@example.com>", "<y@example.net>"]
    assert b"for <" not in first.message.split(b"\n\n")[0], "no Bcc disclosure"
    assert second.rcpt_args == ["<z@example.com>"]


# --- what the client is told --------------------------------------------------------


def test_relay_to_a_foreign_domain_is_refused_and_nothing_is_sent(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.mail("alice@example.org")
        code, text = client.rcpt("victim@elsewhere.example")
    assert (code, text[:6]) == (550, b"5.7.1 ")
    assert smtp_sink.messages() == []
    assert "reject: 550 5.7.1" in proxy.log


@pytest.mark.parametrize(
    ("sink_options", "stage", "code", "text"),
    [
        (["-r", "."], "data", 450, b"4.3.0 Error: command failed"),
        (["-f", "."], "data", 500, b"5.3.0 Error: command failed"),
        (
            ["-B", "550 5.1.1 No such user here", "-f", "RCPT"],
            "rcpt",
            550,
            b"5.1.1 No such user here",
        ),
        (["-r", "MAIL"], "rcpt", 450, b"4.3.0 Error: command failed"),
    ],
    ids=["data-4xx", "data-5xx", "rcpt-5xx", "mail-4xx"],
)
def test_downstream_refusals_reach_the_client_verbatim(
    make_arproxy: MakeArproxy,
    tmp_path: Path,
    sink_options: list[str],
    stage: str,
    code: int,
    text: bytes,
) -> None:
    with sink(tmp_path / "s", sink_options) as refusing:
        proxy = make_arproxy(refusing.url)
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            client.ehlo("client.example.org")
            assert client.mail("alice@example.org")[0] == 250
            rcpt = client.rcpt("bob@example.com")
            if stage == "rcpt":
                assert rcpt == (code, text)
                return
            assert rcpt[0] == 250
            assert client.data(b"Subject: t\r\n\r\nbody\r\n") == (code, text)


def test_downstream_down_is_a_temporary_failure(make_arproxy: MakeArproxy) -> None:
    proxy = make_arproxy(f"smtp://127.0.0.1:{free_port()}")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.mail("alice@example.org")
        code, text = client.rcpt("bob@example.com")
    assert code == 451
    assert text.startswith(b"4.4.1 ")


def test_slow_downstream_is_a_temporary_failure_never_a_250(
    make_arproxy: MakeArproxy, tmp_path: Path
) -> None:
    with sink(tmp_path / "s", ["-w", "4"]) as slow:
        proxy = make_arproxy(slow.url, relay_timeout=1.0)
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            client.ehlo("client.example.org")
            client.mail("alice@example.org")
            assert client.rcpt("bob@example.com")[0] == 250
            code, text = client.data(b"Subject: t\r\n\r\nbody\r\n")
    assert code == 451
    assert text.startswith(b"4.4.1 ")


def test_lmtp_downstream(make_arproxy: MakeArproxy, tmp_path: Path) -> None:
    with sink(tmp_path / "s", ["-L"]) as lmtp:
        proxy = make_arproxy(f"lmtp://127.0.0.1:{lmtp.port}")
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            refused = client.sendmail(
                "a@example.org",
                ["x@example.com", "y@example.com"],
                b"Subject: lmtp\r\n\r\nbody\r\n",
            )
        assert refused == {}
        (got,) = lmtp.messages()
    assert got.rcpt_args == ["<x@example.com>", "<y@example.com>"]
    assert got.message.startswith(b"Authentication-Results: example.com;\n")


def test_lmtp_failure_of_any_recipient_is_not_acknowledged(
    make_arproxy: MakeArproxy, tmp_path: Path
) -> None:
    with sink(tmp_path / "s", ["-L", "-r", "."]) as lmtp:
        proxy = make_arproxy(f"lmtp://127.0.0.1:{lmtp.port}")
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
            client.ehlo("c.example.org")
            client.mail("a@example.org")
            client.rcpt("x@example.com")
            client.rcpt("y@example.com")
            code, _ = client.data(b"Subject: lmtp\r\n\r\nbody\r\n")
    assert code == 450


def test_enhanced_codes_on_aiosmtpd_own_replies(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert client.docmd("RCPT", "TO:<bob@example.com>") == (
            503,
            b"5.5.1 Error: need MAIL command",
        )
        assert client.docmd("BOGUS")[1].startswith(b"5.5.2 ")
        assert client.docmd("NOOP") == (250, b"2.0.0 OK")


def test_sigterm_closes_idle_sessions_with_421_and_exits_cleanly(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 mx.example.com ESMTP")
        proxy.process.terminate()
        assert stream.readline().startswith(b"421 4.3.2 ")
    assert proxy.process.wait(WAIT) == 0
