"""Internationalized domain names: the one A-label form arproxy compares and writes.

RFC 8616 section 3: in internationalized mail a domain may be written as U-labels or
A-labels, and the two spellings name the same domain; the DNS and every comparison
use A-labels. Python's "idna" codec implements IDNA 2003, whose mapping step (e.g.
"ß" to "ss") differs from the IDNA 2008 a downstream may use. So a label is converted
only if it is already in its canonical form, the one both agree on: a U-label that
IDNA 2003 would change is refused rather than taken for another name. That keeps a
relay decision from ever depending on which IDNA version a reader applies.
"""

from __future__ import annotations

import re

_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def to_a_labels(domain: str) -> str | None:
    """`domain` with every non-ASCII label as its A-label ("xn--..."), lower-cased and
    without a trailing dot; None if a label, lower-cased, is not a canonical U-label
    (RFC 5890 section 2.3.2.1) or its A-label is not letters, digits and hyphens.
    ASCII labels are only lower-cased."""
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
        if not _LDH.fullmatch(a_label.lower()):
            return None  # white space, "_" and the like: no host name label
        converted.append(a_label.lower())
    return ".".join(converted)


def address_with_a_labels(address: str) -> str | None:
    """An address (local-part@domain) with its domain in A-labels; the local part is
    left alone (RFC 6531: it is UTF-8, with no ASCII form). None if the domain cannot
    be converted; an address without "@" is returned as it is."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    a_domain = to_a_labels(domain)
    return None if a_domain is None else f"{local}@{a_domain}"
