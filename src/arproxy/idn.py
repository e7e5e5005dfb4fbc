"""Internationalized domain names: the one A-label form arproxy compares and writes.

RFC 8616 section 3: in internationalized mail a domain may be written as U-labels or
A-labels, and the two spellings name the same domain; the DNS and every comparison
use A-labels. Python's "idna" codec implements IDNA 2003, whose mapping step (e.g.
"ß" to "ss") differs from the IDNA 2008 a downstream may use. So a label is converted
only if it is already in its canonical form, the one both agree on: a U-label that
IDNA 2003 would change is refused rather than taken for another name. That keeps a
relay decision from ever depending on which IDNA version a reader applies. The
conversion itself is `arproxy.names.to_a_labels`, re-exported here.
"""

from __future__ import annotations

from arproxy.names import to_a_labels

__all__ = ["address_with_a_labels", "to_a_labels"]


def address_with_a_labels(address: str) -> str | None:
    """An address (local-part@domain) with its domain in A-labels; the local part is
    left alone (RFC 6531: it is UTF-8, with no ASCII form). None if the domain cannot
    be converted; an address without "@" is returned as it is."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    a_domain = to_a_labels(domain)
    return None if a_domain is None else f"{local}@{a_domain}"
