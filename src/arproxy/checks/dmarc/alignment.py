"""DMARC identifier alignment (RFC 7489 section 3.1): which SPF- and DKIM-authenticated
domains of the same message align with the author domain."""

from __future__ import annotations

from arproxy.checks.base import CheckContext, Value, is_dkim_outcome, is_spf_outcome
from arproxy.checks.dmarc.author import to_a_label
from arproxy.checks.dmarc.discovery import organizational_domain
from arproxy.checks.dmarc.record import DmarcRecord
from arproxy.checks.dmarc.result import AlignmentMode

_NULL_SENDERS = frozenset({"<>", ""})
_NULL_IDENTITIES = frozenset({"mailfrom", "helo"})
_MAILFROM_IDENTITY = frozenset({"mailfrom"})


def aligned(identifier: str | None, author: str, mode: AlignmentMode) -> bool:
    """Section 3.1: strict means the same domain, relaxed the same organizational domain."""
    domain = to_a_label(identifier.rstrip(".")) if identifier else None
    if domain is None:
        return False
    if mode == "s":
        return domain == author
    return organizational_domain(domain) == organizational_domain(author)


def aligned_dkim_domain(ctx: CheckContext, author: str, mode: AlignmentMode) -> str | None:
    """The d= of a passing DKIM signature aligned with `author` (section 3.1.1), if any."""
    for result in ctx.prior_of("dkim"):
        if (
            is_dkim_outcome(result)
            and result.value == Value.PASS
            and aligned(result.domain, author, mode)
        ):
            return result.domain
    return None


def aligned_spf_domain(ctx: CheckContext, author: str, mode: AlignmentMode) -> str | None:
    """The SPF-authenticated domain aligned with `author` (section 3.1.2), if any.

    That is the MAIL FROM identity. The HELO identity counts only for the null sender:
    section 3.1.2 excludes HELO "except when required to 'fake' an otherwise null
    reverse-path", which is what RFC 7208 section 2.4 does (postmaster@<HELO name>).
    """
    for result in ctx.prior_of("spf"):
        if (
            is_spf_outcome(result)
            and result.identity in _spf_identities(ctx)
            and result.value == Value.PASS
            and aligned(result.domain, author, mode)
        ):
            return result.domain
    return None


def aligned_temperrors(ctx: CheckContext, author: str, record: DmarcRecord) -> list[str]:
    """The identities that could have aligned with `author` but ended in temperror, e.g.
    ``["dkim d=example.com", "spf example.com"]``.

    Section 6.6.2 builds DMARC on the SPF and DKIM results; a temperror one might still
    pass on a later attempt (RFC 8601 section 2.7.1: "A later attempt may produce a final
    result"; RFC 7208 section 2.6.6), so without an aligned pass the DMARC result cannot
    be final either: temperror, which section 11.2 defines as the same ("A later attempt
    might produce a final result"). Same identities and alignment as the pass checks.
    """
    found: list[str] = []
    for result in ctx.prior_of("dkim"):
        if (
            is_dkim_outcome(result)
            and result.value == Value.TEMPERROR
            and aligned(result.domain, author, record.adkim)
        ):
            found.append(f"dkim d={result.domain}")
    for result in ctx.prior_of("spf"):
        if (
            is_spf_outcome(result)
            and result.identity in _spf_identities(ctx)
            and result.value == Value.TEMPERROR
            and aligned(result.domain, author, record.aspf)
        ):
            found.append(f"spf {result.domain}")
    return found


def _spf_identities(ctx: CheckContext) -> frozenset[str]:
    """Section 3.1.2: MAIL FROM; HELO only when it stands in for the null sender."""
    return _NULL_IDENTITIES if ctx.mail_from in _NULL_SENDERS else _MAILFROM_IDENTITY
