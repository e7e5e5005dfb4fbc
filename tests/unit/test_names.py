"""arproxy.names: the one implementation of each domain-name, literal and mapped-address
rule, checked against the RFC text that defines it."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

import pytest

from arproxy import names

# RFC 1035 section 2.3.1 / RFC 1123 section 2.1: letters, digits, hyphen; a letter or
# digit first and last (RFC 1123 allows the first to be a digit); at most 63 octets.
LABELS = [
    ("a", True),
    ("3com", True),  # RFC 1123 section 2.1: "the first character ... letter or digit"
    ("A-b", True),
    ("x" * 63, True),
    ("x" * 64, False),  # RFC 1035 section 2.3.4: labels are 63 octets or less
    ("-a", False),
    ("a-", False),
    ("", False),
    ("a_b", False),
    ("bü", False),
]


@pytest.mark.parametrize(("label", "valid"), LABELS)
def test_ldh_label(label: str, valid: bool) -> None:
    assert names.is_ldh_label(label) is valid


def test_underscored_labels_for_service_names() -> None:
    # RFC 8552 / RFC 6376 section 3.6.2.1: "_domainkey" is a label of a key's name.
    assert names.is_ldh_label("_domainkey", underscores=True)
    assert not names.is_ldh_label("_domainkey")


@pytest.mark.parametrize(
    ("name", "kwargs", "valid"),
    [
        ("mail.example.com", {}, True),
        ("localhost", {}, True),
        ("localhost", {"min_labels": 2}, False),
        ("a..b", {}, False),  # an empty label (RFC 1035 section 2.3.1)
        ("example.com.", {}, False),  # callers strip the root's dot themselves
        ("192.0.2.1", {}, True),  # digits are LDH ...
        ("192.0.2.1", {"numeric_top": False}, False),  # ... RFC 7208 7.1 toplabel is not
        (".".join(["a" * 63] * 4), {}, False),  # 255 octets: over 253 (RFC 1035 2.3.4)
        (".".join(["a" * 63] * 3 + ["a" * 61]), {}, True),  # 253 octets exactly
    ],
)
def test_host_name(name: str, kwargs: dict[str, object], valid: bool) -> None:
    assert names.is_host_name(name, **kwargs) is valid  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("Bücher.Example", "xn--bcher-kva.example"),  # RFC 5890 section 2.3.2.1
        ("EXAMPLE.com.", "example.com"),
        ("straße.de", None),  # IDNA 2003 maps "ß" to "ss", IDNA 2008 does not: ambiguous
        ("bü_x.example", None),  # its A-label "xn--b_x-..." is no LDH label
        ("a b.example", "a b.example"),  # ASCII labels are only lower-cased
    ],
)
def test_to_a_labels(domain: str, expected: str | None) -> None:
    assert names.to_a_labels(domain) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("Mail.Example.COM", "mail.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("xn--zz.example", None),  # looks like an A-label, decodes to nothing
        ("example", None),  # not multi-label
        ("under_score.example", None),
    ],
)
def test_idna2003_host_name(text: str, expected: str | None) -> None:
    assert names.idna2003_host_name(text) == expected


# RFC 5321 section 4.1.3: IPv4-address-literal = Snum 3("." Snum);
# IPv6-address-literal = "IPv6:" IPv6-addr; "IPv6" is case-insensitive (RFC 5234 2.3).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[192.0.2.1]", IPv4Address("192.0.2.1")),
        ("[IPv6:2001:db8::1]", IPv6Address("2001:db8::1")),
        ("[ipv6:2001:DB8::1]", IPv6Address("2001:db8::1")),
        ("[2001:db8::1]", None),  # an IPv6 address needs the tag
        ("[IPv6:192.0.2.1]", None),  # an IPv4 address must not carry it
        ("[IPv6:fe80::1%eth0]", None),  # a zone index is in no RFC 5321 form
        ("192.0.2.1", None),  # no brackets
        ("[192.0.2.256]", None),
        ("[]", None),
    ],
)
def test_parse_address_literal(text: str, expected: IPv4Address | IPv6Address | None) -> None:
    assert names.parse_address_literal(text) == expected


def test_format_address_literal() -> None:
    assert names.format_address_literal("192.0.2.1") == "[192.0.2.1]"
    assert names.format_address_literal("2001:DB8:0::1") == "[IPv6:2001:db8::1]"
    assert names.format_address_literal(IPv6Address("::1")) == "[IPv6:::1]"
    with pytest.raises(ValueError):
        names.format_address_literal("not an address")


# RFC 4291 section 2.5.5.2: ::ffff:0:0/96 carries an IPv4 address in its low 32 bits.
@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::ffff:c000:201", "192.0.2.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::192.0.2.1", "::c000:201"),  # IPv4-compatible (deprecated, 2.5.5.1): not mapped
    ],
)
def test_client_address_unwraps_mapped(ip: str, expected: str) -> None:
    assert str(names.client_address(ip)) == expected


def test_client_address_refuses_non_addresses() -> None:
    with pytest.raises(ValueError):
        names.client_address("example.com")


@pytest.mark.parametrize(
    "text", ["192.0.2.1", "2001:DB8:0::1", "::ffff:192.0.2.1", "0.0.0.0", "fe80::1%eth0"]
)
def test_cached_ip_address_is_ipaddress_ip_address(text: str) -> None:
    """names.ip_address, cached per worker, gives what ipaddress.ip_address gives."""
    assert names.ip_address(text) == ipaddress.ip_address(text)
    assert names.ip_address(text) == ipaddress.ip_address(text)  # from the cache


@pytest.mark.parametrize("text", ["not an address", "192.0.2.256", "", "1.2.3"])
def test_cached_ip_address_raises_for_no_address_every_time(text: str) -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            names.ip_address(text)
