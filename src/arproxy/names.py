"""Domain names, address literals and IPv4-mapped addresses: one implementation of each.

Pure functions, no I/O. Every part of arproxy that asks "is this a host name?", "is this
an RFC 5321 address literal?", "what A-label form does this name have?" or "which IPv4
address is this IPv4-mapped IPv6 address?" asks here, so the answers never disagree.

- LDH host names: RFC 1035 section 2.3.1 (letters, digits, hyphen; a letter or digit at
  each end), RFC 1123 section 2.1 (a label may start with a digit), RFC 1035 section
  2.3.4 (labels of at most 63 octets, a name of at most 255 on the wire: 253 as text).
- Address literals: RFC 5321 section 4.1.3 (`[192.0.2.1]`, `[IPv6:2001:db8::1]`; the
  "IPv6" tag is an ABNF string, so case-insensitive, RFC 5234 section 2.3; no zone index).
- IPv4-mapped IPv6 addresses: RFC 4291 section 2.5.5.2 (`::ffff:192.0.2.1`), as a
  dual-stack socket reports an IPv4 peer; they are the IPv4 address they carry.
- A-labels: RFC 5890 section 2.3.2.1, RFC 8616 section 3 (see `to_a_labels`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from ipaddress import IPv4Address, IPv6Address

MAX_LABEL_OCTETS = 63  # RFC 1035 section 2.3.4
MAX_NAME_OCTETS = 253  # 255 octets on the wire, less the first length octet and the root

_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# RFC 8552: service names such as DKIM's "_domainkey" (RFC 6376 section 3.6.2.1) use "_".
_UNDERSCORED_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_ldh_label(label: str, *, underscores: bool = False) -> bool:
    """RFC 1123 section 2.1: 1-63 letters, digits and hyphens, not starting or ending
    with a hyphen (any case); `underscores` also allows "_" (RFC 8552 names)."""
    pattern = _UNDERSCORED_LABEL if underscores else _LDH_LABEL
    return pattern.fullmatch(label) is not None


def is_host_name(
    name: str, *, min_labels: int = 1, numeric_top: bool = True, underscores: bool = False
) -> bool:
    """Whether `name` (no trailing dot) is an LDH host name of at most 253 octets with at
    least `min_labels` labels. `numeric_top=False` also refuses an all-digit top label
    (RFC 7208 section 7.1 toplabel; RFC 1123 section 2.1: a dotted quad is no name);
    `underscores` allows "_" in labels (`is_ldh_label`)."""
    if not name.isascii() or len(name) > MAX_NAME_OCTETS:
        return False
    labels = name.split(".")
    if len(labels) < min_labels:
        return False
    if not numeric_top and labels[-1].isdigit():
        return False
    return all(is_ldh_label(label, underscores=underscores) for label in labels)


def to_a_labels(domain: str) -> str | None:
    """`domain` with every non-ASCII label as its A-label ("xn--..."), lower-cased and
    without a trailing dot; None if a label, lower-cased, is not a canonical U-label
    (RFC 5890 section 2.3.2.1) or its A-label is not letters, digits and hyphens.
    ASCII labels are only lower-cased.

    Python's "idna" codec implements IDNA 2003, whose mapping step (e.g. "ß" to "ss")
    differs from the IDNA 2008 a downstream may use. So a label is converted only if it
    is already in its canonical form, the one both agree on: a U-label that IDNA 2003
    would change is refused rather than taken for another name.
    """
    labels = domain.rstrip(".").split(".")
    converted: list[str] = []
    # Lower-cased first, as ASCII labels are; UTS 46 maps case the same way.
    for label in (raw.lower() for raw in labels):
        if label.isascii():
            converted.append(label)
            continue
        try:
            a_label = label.encode("idna").decode("ascii")
            round_trip = a_label.encode("ascii").decode("idna")
        except UnicodeError:
            return None
        if round_trip != label:
            return None  # mapped by IDNA 2003 ("ß", compatibility forms): ambiguous
        if not is_ldh_label(a_label):
            return None  # white space, "_" and the like: no host name label
        converted.append(a_label.lower())
    return ".".join(converted)


def idna2003_host_name(
    text: str, *, min_labels: int = 2, numeric_top: bool = True, underscores: bool = False
) -> str | None:
    """`text` as a lower-case A-label host name by Python's IDNA 2003 codec (its mapping
    included, e.g. full-width dots and letters), or None if it is not one.

    Only non-ASCII text goes through the codec; an ASCII "xn--" label must also decode
    (a label that only looks like an A-label names nothing). The host name rules are
    `is_host_name`'s. Used where the RFC in force names IDNA 2003 conversion of a
    domain taken from a header or a command (RFC 7489 section 6.6.1, RFC 7208 4.3).
    """
    name = text
    try:
        if not name.isascii():
            name = name.encode("idna").decode("ascii")
        name = name.lower()
        for label in name.split("."):
            if label.startswith("xn--"):
                label.encode("ascii").decode("idna")
    except UnicodeError:
        return None
    valid = is_host_name(
        name, min_labels=min_labels, numeric_top=numeric_top, underscores=underscores
    )
    return name if valid else None


def parse_address_literal(text: str) -> IPv4Address | IPv6Address | None:
    """The address of an RFC 5321 section 4.1.3 address literal ("[192.0.2.1]",
    "[IPv6:2001:db8::1]"), or None. An IPv6 address without the tag, an IPv4 address
    behind it, and a zone index (in no RFC 5321 form) are not literals."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if "%" in inner:  # Python accepts a scope id ("fe80::1%eth0"); RFC 5321 has none
        return None
    tag, colon, rest = inner.partition(":")
    try:
        if colon and tag.lower() == "ipv6":
            return IPv6Address(rest)
        return IPv4Address(inner)
    except ValueError:
        return None


def format_address_literal(address: IPv4Address | IPv6Address | str) -> str:
    """The RFC 5321 section 4.1.3 literal of an address: "[192.0.2.1]" or
    "[IPv6:2001:db8::1]" (compressed form). Raise ValueError for text that is no address."""
    parsed = ip_address(address) if isinstance(address, str) else address
    return f"[IPv6:{parsed.compressed}]" if parsed.version == 6 else f"[{parsed}]"


def unmapped(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """An IPv4-mapped IPv6 address (RFC 4291 section 2.5.5.2) as the IPv4 address it
    carries; any other address as it is."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(ip: str) -> IPv4Address | IPv6Address:
    """The address in `ip`, IPv4-mapped IPv6 taken as the IPv4 it is; raise ValueError
    for text that is no IP address."""
    return unmapped(ip_address(ip))


@functools.lru_cache(maxsize=1024)
def ip_address(text: str) -> IPv4Address | IPv6Address:
    """`ipaddress.ip_address(text)`, cached per worker: the client's address is read
    by the session, the Received line and several checks, for each message (12 parses
    a message under the bench load; the objects are immutable). Raise ValueError for
    text that is no IP address (not cached)."""
    return ipaddress.ip_address(text)
