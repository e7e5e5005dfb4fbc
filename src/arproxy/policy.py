"""Local policy: what arproxy accepts, decided from facts the pipeline hands it.

Today this is relay control (no open relay); the checks issue adds the decisions
taken on authentication results. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable


def recipient_domain(address: str) -> str | None:
    """The domain of an RFC 5321 forward-path, lower-cased, or None if it has none."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.lower().rstrip(".")


def may_relay_to(address: str, local_domains: Iterable[str], *, authenticated: bool) -> bool:
    """Whether a recipient may be accepted: a local domain, or any after SMTP AUTH.

    Only exact local domains count, never their subdomains: an administrator who
    wants those lists them, which keeps "not an open relay" easy to audit.
    """
    if authenticated:
        return True
    if address.lower() == "postmaster":
        return True  # RFC 5321 section 4.5.1: the bare Postmaster must always be accepted
    domain = recipient_domain(address)
    return domain is not None and domain in set(local_domains)
