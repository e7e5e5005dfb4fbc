from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from arproxy.trace import TraceInfo, helo_is_presentable, received_field

WHEN = datetime(2026, 11, 23, 19, 35, 28, tzinfo=UTC)


def info(**overrides: object) -> TraceInfo:
    base = TraceInfo(
        client_ip="192.0.2.1",
        helo="mail.example.org",
        esmtp=True,
        tls=False,
        authenticated=False,
        by_host="mx.example.com",
        queue_id="ABC123",
        recipients=("bob@example.com",),
        when=WHEN,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_received_field_rfc5321_form() -> None:
    assert received_field(info()) == (
        b"Received: from mail.example.org ([192.0.2.1])\r\n"
        b"\tby mx.example.com (arproxy) with ESMTP id ABC123\r\n"
        b"\tfor <bob@example.com>; Mon, 23 Nov 2026 19:35:28 +0000\r\n"
    )


def test_received_field_ipv6_tls_auth_several_recipients() -> None:
    field = received_field(
        info(
            client_ip="2001:db8::1",
            tls=True,
            authenticated=True,
            recipients=("a@example.com", "b@example.com"),
        )
    )
    assert b"([IPv6:2001:db8::1])" in field
    assert b"with ESMTPSA id ABC123;\r\n\tMon, 23 Nov 2026" in field
    assert b"for" not in field


@pytest.mark.parametrize(
    "helo",
    [
        "bad helo",
        "x\r\nInjected: yes",
        "a..b",
        "",
        "[1.2.3]",
        "(comment)",
        "ex\u00e4mple.com",
        # RFC 5321 section 4.1.3: an IPv6 literal carries the "IPv6:" tag.
        "[2001:db8::1]",
        "[::1]",
        # ... and the tag announces an IPv6 address, not an IPv4 one.
        "[IPv6:192.0.2.1]",
        # No zone index in any RFC 5321 literal (Python's ipaddress accepts one).
        "[IPv6:fe80::1%eth0]",
        "[IPv4:192.0.2.1]",
    ],
)
def test_unpresentable_helo_is_replaced_by_the_address_literal(helo: str) -> None:
    assert not helo_is_presentable(helo)
    field = received_field(info(helo=helo))
    assert field.startswith(b"Received: from [192.0.2.1] ([192.0.2.1])\r\n")
    assert field.count(b"\r\n") == 3


@pytest.mark.parametrize(
    "helo",
    [
        "mail.example.org",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[ipv6:2001:db8::1]",  # RFC 5234 section 2.3: ABNF strings are case-insensitive
        "[IPv6:::ffff:192.0.2.1]",  # RFC 5321 section 4.1.3 IPv6v4-comp form
        "localhost",
    ],
)
def test_presentable_helo(helo: str) -> None:
    assert helo_is_presentable(helo)


def test_hostile_recipient_is_not_echoed() -> None:
    field = received_field(info(recipients=("a>\r\nX-Evil: 1@example.com",)))
    assert b"Evil" not in field


def test_untagged_ipv6_helo_is_not_written_as_a_literal() -> None:
    """``EHLO [2001:db8::1]``: RFC 5321 section 4.1.3 literals only in Received."""
    field = received_field(info(client_ip="2001:db8::1", helo="[2001:db8::1]"))
    assert field.startswith(b"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n")


@pytest.mark.parametrize(
    ("tls", "authenticated", "protocol"),
    [
        (False, False, b"UTF8SMTP"),
        (True, False, b"UTF8SMTPS"),
        (False, True, b"UTF8SMTPA"),
        (True, True, b"UTF8SMTPSA"),
    ],
)
def test_smtputf8_transactions_use_the_rfc6531_protocol_names(
    tls: bool, authenticated: bool, protocol: bytes
) -> None:
    """RFC 6531 section 3.7.3: a message received with SMTPUTF8 is stamped UTF8SMTP,
    with S for TLS and A for SMTP AUTH as in RFC 3848."""
    field = received_field(info(smtputf8=True, tls=tls, authenticated=authenticated))
    assert b"(arproxy) with " + protocol + b" id ABC123" in field


def test_a_utf8_recipient_is_not_named_in_an_ascii_trace_field() -> None:
    field = received_field(info(smtputf8=True, recipients=("jörg@example.com",)))
    assert b"for" not in field
    field.decode("ascii")
