"""Reading AUTHSERV out of EHLO, IMAP CAPABILITY and POP3 CAPA replies (no network)."""

from __future__ import annotations

import pytest

from arproxy.client import (
    Authserv,
    ProbeProtocolError,
    parse_ehlo_keywords,
    parse_imap_capabilities,
    parse_pop3_capa,
)

# The draft's appendix B examples, as the lines a client library hands over.
DRAFT_EHLO = [
    "ENHANCEDSTATUSCODES",
    "PIPELINING",
    "8BITMIME",
    "SIZE",
    "DSN",
    "DELIVERBY",
    "AUTHSERV=authserver.example.com",
    "HELP",
]
DRAFT_IMAP_BEFORE = ["CAPABILITY", "IMAP4", "IMAP4rev1", "UIDPLUS", "AUTHSERV"]
DRAFT_IMAP_AFTER = [*DRAFT_IMAP_BEFORE[:-1], "AUTHSERV=authserv.example.com"]
DRAFT_POP3_BEFORE = ["TOP", "USER", "SASL CRAM-MD5", "RESP-CODES", "AUTHSERV"]
DRAFT_POP3_AFTER = ["TOP", "USER", "SASL CRAM-MD5", "RESP-CODES", "AUTHSERV authserv.example.com"]


def test_the_drafts_smtp_example_gives_its_id() -> None:
    assert parse_ehlo_keywords(DRAFT_EHLO) == Authserv(True, "authserver.example.com")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("AUTHSERV example.com", Authserv(True, "example.com")),
        ("AUTHSERV=example.com", Authserv(True, "example.com")),
        ("authserv example.com", Authserv(True, "example.com")),
        ("AuthServ=Example.COM", Authserv(True, "Example.COM")),
        ("AUTHSERV", Authserv(True, None)),
        ("AUTHSERV   example.com  ", Authserv(True, "example.com")),
    ],
)
def test_ehlo_keyword_forms(line: str, expected: Authserv) -> None:
    assert parse_ehlo_keywords(["PIPELINING", line, "8BITMIME"]) == expected


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["PIPELINING", "SIZE 10240000", "STARTTLS"],
        ["AUTHSERVX example.com"],  # another keyword that only starts the same
        ["X-AUTHSERV example.com"],
        ["AUTH PLAIN LOGIN"],
    ],
)
def test_no_authserv_keyword_is_no_promise(lines: list[str]) -> None:
    assert parse_ehlo_keywords(lines) == Authserv(False, None)


@pytest.mark.parametrize(
    "line",
    [
        "AUTHSERV example.com example.net",  # one id only
        "AUTHSERV=example.com extra",
        "AUTHSERV=",  # an '=' with nothing after it
        'AUTHSERV "example.com"',  # a quoted-string is no plain id
        "AUTHSERV exa;mple.com",  # tspecials would end the id inside a field
        "AUTHSERV example.com(comment)",
        "AUTHSERV ex\\xe4mple.com",  # how a non-ASCII byte reaches the parser
        "AUTHSERV==example.com",
    ],
)
def test_malformed_authserv_is_a_protocol_error(line: str) -> None:
    with pytest.raises(ProbeProtocolError, match=r"AUTHSERV|authserv-id"):
        parse_ehlo_keywords([line])


def test_two_different_ids_are_a_protocol_error() -> None:
    with pytest.raises(ProbeProtocolError, match="different ids"):
        parse_ehlo_keywords(["AUTHSERV example.com", "AUTHSERV=example.net"])


def test_the_same_id_twice_is_that_id() -> None:
    lines = ["AUTHSERV", "AUTHSERV example.com", "AUTHSERV=EXAMPLE.COM."]
    assert parse_ehlo_keywords(lines) == Authserv(True, "example.com")


def test_imap_bare_capability_before_login_and_id_after() -> None:
    assert parse_imap_capabilities(DRAFT_IMAP_BEFORE) == Authserv(True, None)
    assert parse_imap_capabilities(DRAFT_IMAP_AFTER) == Authserv(True, "authserv.example.com")


@pytest.mark.parametrize(
    ("atoms", "expected"),
    [
        (["IMAP4rev1", "authserv=example.com"], Authserv(True, "example.com")),
        (["IMAP4rev1", "XAUTHSERV=example.com", "AUTH=PLAIN"], Authserv(False, None)),
        (["IMAP4rev1", "IDLE"], Authserv(False, None)),
    ],
)
def test_imap_capability_atoms(atoms: list[str], expected: Authserv) -> None:
    assert parse_imap_capabilities(atoms) == expected


@pytest.mark.parametrize("atom", ["AUTHSERV=", "AUTHSERV=a;b", "AUTHSERV=a=b"])
def test_imap_malformed_authserv_is_a_protocol_error(atom: str) -> None:
    with pytest.raises(ProbeProtocolError):
        parse_imap_capabilities(["IMAP4rev1", atom])


def test_pop3_bare_capability_before_login_and_id_after() -> None:
    assert parse_pop3_capa(DRAFT_POP3_BEFORE) == Authserv(True, None)
    assert parse_pop3_capa(DRAFT_POP3_AFTER) == Authserv(True, "authserv.example.com")


def test_pop3_dovecots_capa_makes_no_promise() -> None:
    lines = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
    assert parse_pop3_capa(lines) == Authserv(False, None)


def test_pop3_knows_only_the_space_form() -> None:
    # RFC 2449 capability lines are a tag and parameters: "AUTHSERV=x" is some other tag.
    assert parse_pop3_capa(["AUTHSERV=example.com"]) == Authserv(False, None)
    with pytest.raises(ProbeProtocolError):
        parse_pop3_capa(["AUTHSERV example.com example.net"])
