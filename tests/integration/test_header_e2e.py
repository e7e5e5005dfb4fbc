"""The header as arproxy reads it, end to end: smtplib -> arproxy -> Postfix's smtp-sink.

A header whose first line starts with white space continues no field (RFC 5322 section
2.2.3); behind the fields arproxy prepends, every reader would fold it into the last of them.
arproxy refuses such a message at intake with a permanent content error (550 5.6.0, RFC 3463)
and one log line. Messages it delivers start with its own fields, which parse back, through
the same reader, exactly as arproxy wrote them, followed by the sender's fields unchanged,
obsolete ``Name :`` syntax (RFC 5322 section 4.5) included.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from arproxy.authres import parse
from arproxy.header import read_header

from ..unit.checks.test_dkim import MESSAGE, sign
from .conftest import MakeArproxy
from .peers import SmtpSink

ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject : hello\r\n"
    b"Authentication-Results: example.com; dkim=pass header.d=example.org\r\n"
    b"\r\n"
    b"Body.\r\n"
)
LEADING = b" (authenticated sender)\r\n" + ORIGINAL


def send(port: int, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.sendmail("alice@example.org", ["bob@example.com"], message)


@pytest.mark.parametrize("bare_newline", ["reject", "normalize"])
def test_a_header_starting_with_white_space_is_refused_with_550_5_6_0(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, bare_newline: str
) -> None:
    proxy = make_arproxy(smtp_sink.url, limits=f'bare_newline = "{bare_newline}"')
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(proxy.port, LEADING)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.6.0 ")
    assert b"continuation line" in refused.value.smtp_error
    assert smtp_sink.messages() == []
    assert proxy.log.count("header starts with white space") == 1
    # The listener goes on: the same message without the stray line is delivered.
    send(proxy.port, ORIGINAL)
    assert len(smtp_sink.messages()) == 1


def test_delivered_fields_parse_back_as_arproxy_wrote_them(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    send(proxy.port, ORIGINAL)
    (got,) = smtp_sink.messages()
    delivered = got.message  # smtp-sink writes LF line ends; the reader reads them alike
    header = read_header(delivered)
    ours, received, *rest = header.fields
    assert ours.lower_name == "authentication-results"
    parsed = parse(ours.with_crlf()[ours.colon + 1 :].decode())
    assert parsed.authserv_id == "example.com"
    assert [r.method for r in parsed.results] == ["iprev", "spf", "dkim", "dmarc", "arc"]
    assert received.lower_name == "received"
    assert received.raw.startswith(
        b"Received: from client.example.org ([127.0.0.1])\n\tby mx.example.com (arproxy) with"
    )
    assert b"\n\tfor <bob@example.com>; " in received.raw
    assert received.raw.count(b"\n") == 3  # our three lines, nothing folded into them
    # Our Received field ends where we ended it: the next field is the sender's first one.
    sent = read_header(ORIGINAL)
    expected_rest = [f.raw.replace(b"\r\n", b"\n") for f in sent.fields[:3]]
    assert [f.raw for f in rest] == expected_rest  # the forged field is gone
    assert header.strays == ()
    assert delivered[header.body_start :] == b"Body.\n"


@pytest.mark.parametrize(
    ("canonicalize", "edit"),
    [
        # RFC 6376 3.4.2: relaxed removes the white space before the colon.
        ((b"relaxed", b"relaxed"), lambda m: m.replace(b"Subject: Lunch", b"Subject : Lunch")),
        # RFC 6376 5.4: a field not in h= is not hashed, whatever its syntax.
        ((b"simple", b"simple"), lambda m: b"X-Scanned : clean\r\n" + m),
    ],
)
def test_a_legitimate_message_with_name_space_colon_passes_reject_dmarc(
    make_arproxy: MakeArproxy,
    smtp_sink: SmtpSink,
    canonicalize: tuple[bytes, bytes],
    edit: Callable[[bytes], bytes],
) -> None:
    """The issue's chain: dkim=permerror made dmarc=fail (SPF not aligned) and reject_dmarc
    refused a legitimate message. Right: dkim=pass, dmarc=pass (RFC 7489 4.2), delivered."""
    proxy = make_arproxy(smtp_sink.url, policy="[policy]\nreject_dmarc = true")
    message = edit(sign(MESSAGE, "s2048", canonicalize=canonicalize))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("mail.sender.test")
        c.sendmail("bounce@sender.test", ["bob@example.com"], message)
    (got,) = smtp_sink.messages()
    ours = read_header(got.message).fields[0]
    results = parse(ours.with_crlf()[ours.colon + 1 :].decode()).results
    assert {r.method: r.result for r in results} == {
        "iprev": "pass",
        "spf": "pass",
        "dkim": "pass",
        "dmarc": "pass",
        "arc": "none",
    }
