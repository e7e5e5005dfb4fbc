"""Local policy: what arproxy accepts, decided from facts the pipeline hands it.

Relay control (no open relay) and the `[policy]` decisions taken on authentication
results. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arproxy.checks.base import DmarcOutcome, MethodResult, Value
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
    if (
        config.reject_dmarc
        and isinstance(dmarc, DmarcOutcome)
        and dmarc.value is Value.FAIL
        and dmarc.policy == "reject"  # the disposition after pct= sampling
    ):
        return Verdict(
            dmarc_rejected(dmarc.from_domain),
            "dmarc=fail p=reject",
        )
    spf = by_method.get("spf")
    if config.reject_spf_fail and spf is not None and spf.value is Value.FAIL:
        return Verdict(SPF_REJECTED, "spf=fail")
    iprev = by_method.get("iprev")
    if config.reject_iprev_fail and iprev is not None and iprev.value is Value.FAIL:
        return Verdict(IPREV_REJECTED, "iprev=fail")
    return None
