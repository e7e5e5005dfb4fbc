"""Local policy: what arproxy accepts, decided from facts the pipeline hands it.

Relay control (no open relay), the trusted ARC sealer override, and the `[policy]`
decisions taken on authentication results. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arproxy import names
from arproxy.authres import ResInfo
from arproxy.checks.base import (
    ArcOutcome,
    ArcOverride,
    MethodResult,
    Value,
    is_arc_outcome,
    is_dmarc_outcome,
)
from arproxy.checks.dmarc.discovery import organizational_domain
from arproxy.config import PolicyConfig
from arproxy.replies import (
    IPREV_REJECTED,
    SPF_REJECTED,
    Reply,
    dmarc_rejected,
    temporary_dns_error,
)


def recipient_domain(address: str) -> str | None:
    """The domain of an RFC 5321 forward-path, lower-cased, or None if it has none."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.lower().rstrip(".")


_SOURCE_ROUTING = ("%", "!", "@")


def may_relay_to(address: str, local_domains: Iterable[str], *, authenticated: bool) -> bool:
    """Whether a recipient may be accepted: a local domain, or any after SMTP AUTH.

    Only exact local domains count, never their subdomains: an administrator who
    wants those lists them, which keeps "not an open relay" easy to audit.
    """
    if authenticated:
        return True
    if address.lower() == "postmaster":
        return True  # RFC 5321 section 4.5.1: the bare Postmaster must always be accepted
    local_part = address.rpartition("@")[0]
    if any(router in local_part for router in _SOURCE_ROUTING):
        # "victim%evil.example@example.com", "evil.example!victim@..." and a quoted
        # "victim@evil.example": a downstream that trusts us may route on these
        # (Postfix's allow_percent_hack), which would make us an open relay.
        return False
    domain = recipient_domain(address)
    return domain is not None and domain in set(local_domains)


# --- decisions on authentication results ---------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What local policy makes of a message's results: accept, or refuse with a reply."""

    reply: Reply | None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.reply is None


ACCEPT = Verdict(None)

# RFC 7372 codes (5.7.23 SPF, 5.7.25 reverse DNS); DMARC rejections use 5.7.1 in
# common practice (RFC 7489 section 6.7 names no code).
_TEMPFAIL_CODES = {"spf": "4.7.24", "iprev": "4.7.25", "dkim": "4.7.20", "dmarc": "4.7.1"}


def decide(results: Sequence[MethodResult], config: PolicyConfig) -> Verdict:
    """Apply the `[policy]` switches: a 4xx or 5xx Verdict, or ACCEPT.

    A temporary error is never turned into a permanent refusal: a later attempt might give
    a final result (RFC 8601 section 2.7.1, RFC 7208 section 2.6.6, RFC 7489 section
    11.2), so with `tempfail_on_temperror` any temperror gives 451 before any
    `reject_*` switch is looked at, and the `reject_*` switches act only on final fail
    results (a verdict built on other results, DMARC's, carries their temperror itself:
    checks/dmarc/). Without `tempfail_on_temperror` a temperror is delivered, written in
    the field.
    """
    temporary = _tempfail(results) if config.tempfail_on_temperror else None
    if temporary is not None:
        return temporary
    return _refusal(results, config) or ACCEPT


def _tempfail(results: Sequence[MethodResult]) -> Verdict | None:
    for result in results:
        if result.value is Value.TEMPERROR:
            code = _TEMPFAIL_CODES.get(result.method, "4.7.0")
            return Verdict(
                temporary_dns_error(result.method, code),
                f"{result.method}=temperror",
            )
    return None


def _refusal(results: Sequence[MethodResult], config: PolicyConfig) -> Verdict | None:
    """The first `reject_*` switch whose final fail result matches, or None."""
    by_method = {r.method: r for r in results}
    dmarc = by_method.get("dmarc")
    if config.reject_dmarc and _dmarc_would_reject(dmarc):
        assert is_dmarc_outcome(dmarc)
        if _override_pending(results, config):
            # A trusted sealer vouches for the author but its chain could not be checked
            # (a key lookup failed): a retry may pass it, so no permanent refusal.
            return Verdict(
                temporary_dns_error("arc", "4.7.1"), "arc=fail (temporary) for trusted sealer"
            )
        return Verdict(dmarc_rejected(dmarc.from_domain), "dmarc=fail p=reject")
    spf = by_method.get("spf")
    if config.reject_spf_fail and spf is not None and spf.value is Value.FAIL:
        return Verdict(SPF_REJECTED, "spf=fail")
    iprev = by_method.get("iprev")
    if config.reject_iprev_fail and iprev is not None and iprev.value is Value.FAIL:
        return Verdict(IPREV_REJECTED, "iprev=fail")
    return None


def _dmarc_would_reject(dmarc: MethodResult | None) -> bool:
    """DMARC fail with p=reject after pct= sampling, and no override of local policy."""
    return (
        dmarc is not None
        and dmarc.value is Value.FAIL  # before the costlier protocol check (arc_override)
        and is_dmarc_outcome(dmarc)
        and dmarc.policy == "reject"  # the disposition after pct= sampling
        and dmarc.override is None
    )


# --- the trusted ARC sealer override (RFC 8617 section 7.2, RFC 7489 section 6.7) --------


def with_arc_override(
    results: Sequence[MethodResult], config: PolicyConfig
) -> tuple[MethodResult, ...]:
    """`results` with the DMARC result marked overridden (`DmarcOutcome.override`) when a
    trusted sealer vouches for the message (`arc_override`); else unchanged. Call it
    before formatting the field (the DMARC comment says the policy was not applied) and
    before `decide` (which then does not apply `reject_dmarc`)."""
    override = arc_override(results, config.trusted_arc_sealers)
    if override is None:
        return tuple(results)
    return tuple(r.with_override(override) if is_dmarc_outcome(r) else r for r in results)


def arc_override(
    results: Sequence[MethodResult], trusted_sealers: Sequence[str]
) -> ArcOverride | None:
    """The override, when every condition holds, else None.

    RFC 7489 section 6.7 lets the receiver's local policy set a failing domain's policy
    aside ("Final disposition of a message is always a matter of local policy") and RFC
    8617 section 7.2 names this use of ARC: DMARC fails (a list changed the message),
    the chain passes, the newest ARC-Seal's d= is one of `trusted_sealers` (exact match,
    case-insensitive, A-labels), and that hop's ARC-Authentication-Results record a
    DMARC pass for the From domain or a DKIM/SPF pass aligned with it (`sealer_vouches`).
    The DMARC result itself is not changed: it stays RFC 7489's fail.
    """
    by_method = {r.method: r for r in results}
    dmarc, arc = by_method.get("dmarc"), by_method.get("arc")
    # The values first: every MethodResult has one, and nearly every message stops here
    # (DMARC did not fail), before the isinstance of a runtime-checkable protocol, which
    # on Python 3.11 lists the protocol's members again at each check.
    if dmarc is None or arc is None or dmarc.value is not Value.FAIL or arc.value is not Value.PASS:
        return None
    if not is_dmarc_outcome(dmarc) or not is_arc_outcome(arc):
        return None
    if dmarc.from_domain is None:
        return None
    return _vouching_sealer(arc, dmarc.from_domain, trusted_sealers)


def _override_pending(results: Sequence[MethodResult], config: PolicyConfig) -> bool:
    """Whether the override would apply but for a temporary failure of the ARC check."""
    by_method = {r.method: r for r in results}
    dmarc, arc = by_method.get("dmarc"), by_method.get("arc")
    return (
        is_dmarc_outcome(dmarc)
        and dmarc.from_domain is not None
        and is_arc_outcome(arc)
        and arc.temporary
        and _vouching_sealer(arc, dmarc.from_domain, config.trusted_arc_sealers) is not None
    )


def _vouching_sealer(
    arc: ArcOutcome, author: str, trusted_sealers: Sequence[str]
) -> ArcOverride | None:
    if arc.sealer is None or arc.sealer not in trusted_sealers:
        return None
    basis = sealer_vouches(arc.sealer_results or (), author)
    return None if basis is None else ArcOverride(arc.sealer, basis)


def sealer_vouches(recorded: Sequence[ResInfo], author: str) -> str | None:
    """What the sealer's hop recorded that authenticates `author` (the From domain, an
    A-label), or None: ``dmarc=pass`` with header.from the author, or ``dkim=pass`` whose
    header.d, or ``spf=pass`` whose smtp.mailfrom domain, has the author's organizational
    domain (RFC 7489 section 3.1, relaxed alignment: the record's adkim=/aspf= are the
    sealer's business, it saw the message as sent)."""
    passes = [r for r in recorded if r.result.lower() == "pass"]
    for wanted in ("dmarc", "dkim", "spf"):  # the strongest statement first
        for resinfo in passes:
            if resinfo.method.lower() == wanted and _authenticates(resinfo, author):
                return f"{wanted}=pass " + (
                    f"header.from={author}" if wanted == "dmarc" else f"aligned with {author}"
                )
    return None


def _authenticates(resinfo: ResInfo, author: str) -> bool:
    found = {(p.ptype.lower(), p.name.lower()): p.value for p in resinfo.properties}
    method = resinfo.method.lower()
    if method == "dmarc":
        return _domain(found.get(("header", "from"))) == author
    if method == "dkim":
        return _aligned(found.get(("header", "d")), author)
    mailfrom = found.get(("smtp", "mailfrom"))
    return mailfrom is not None and _aligned(mailfrom.rpartition("@")[2], author)


def _domain(text: str | None) -> str | None:
    """`text` as a lower-case A-label host name, or None."""
    if text is None:
        return None
    return names.idna2003_host_name(text.rstrip("."), min_labels=2)


def _aligned(text: str | None, author: str) -> bool:
    domain = _domain(text)
    return domain is not None and organizational_domain(domain) == organizational_domain(author)
