"""DMARC (RFC 7489): does an identifier that SPF or DKIM authenticated align with the author?

The author domain comes from the message's single RFC5322.From field (section 6.6.1), its
policy from `_dmarc.<domain>` or else `_dmarc.<organizational domain>` (section 6.6.3), and
the result from the SPF and DKIM results reported for the same message (section 3.1, read
from `ctx.prior`). Reported as RFC 7489 section 11.2 registers it: `dmarc=<result>
header.from=<domain>`, plus the common `policy.dmarc=<none|quarantine|reject>`.

Files: `evaluate` (this check: the result of section 6.6.2, pct= sampling, several author
domains), `author` (the From field), `record` (the policy record), `discovery` (where the
record is, the organizational domain), `alignment` (section 3.1), `result`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from arproxy.checks import eager
from arproxy.checks.base import Check, CheckContext, Disposition, Stage, Value
from arproxy.checks.dmarc.alignment import (
    aligned_dkim_domain,
    aligned_spf_domain,
    aligned_temperrors,
)
from arproxy.checks.dmarc.author import AuthorError, author_domains
from arproxy.checks.dmarc.discovery import PolicyTempError, discover_policy
from arproxy.checks.dmarc.record import DmarcRecord, RecordError
from arproxy.checks.dmarc.result import DmarcResult
from arproxy.dns import Resolver

_SEVERITY: dict[Disposition, int] = {"none": 0, "quarantine": 1, "reject": 2}
# Section 6.6.4: a failing message left out of the pct= sample gets the next weaker policy.
_WEAKER: dict[Disposition, Disposition] = {
    "reject": "quarantine",
    "quarantine": "none",
    "none": "none",
}


def system_draw() -> float:
    """A pct= sample in [0, 1) from the OS source: no reproducibility needed, and
    unpredictable to senders (53 random bits, a float's precision)."""
    return secrets.randbits(53) / (1 << 53)


def sampled(requested: Disposition, pct: int | None, draw: Callable[[], float]) -> Disposition:
    """Section 6.6.4: the policy applies to pct percent of failing mail; the rest gets the
    next weaker one (reject -> quarantine, quarantine -> none)."""
    if pct is None or pct >= 100:
        return requested
    return requested if draw() * 100 < pct else _WEAKER[requested]


async def evaluate(
    ctx: CheckContext, dns: Resolver, author: str, draw: Callable[[], float]
) -> DmarcResult:
    """The DMARC result for one author domain (section 6.6.2).

    pass: an aligned identity passed. temperror: the policy lookup failed temporarily, or
    no aligned identity passed and one that could have aligned ended in temperror (a
    retry may pass it); such a result carries no disposition. fail: no aligned pass, with
    the domain's policy after pct= sampling (section 6.6.4).
    """
    try:
        found = await discover_policy(author, dns)
    except PolicyTempError as exc:
        return DmarcResult(Value.TEMPERROR, author, reason=str(exc))
    except RecordError as exc:
        return DmarcResult(Value.PERMERROR, author, reason=str(exc))
    if found is None:
        return DmarcResult(Value.NONE, author, reason="no single DMARC policy record")
    record, requested = found.record, found.requested()
    via = _aligned_pass(ctx, author, record)
    pending = aligned_temperrors(ctx, author, record) if via is None else []
    if via is not None:
        value, policy, reason = Value.PASS, requested, via
    elif pending:
        value, policy = Value.TEMPERROR, None
        reason = f"no aligned pass; temperror of {', '.join(pending)}"
    else:
        value, policy = Value.FAIL, sampled(requested, record.pct, draw)
        reason = f"no aligned pass; policy of {found.domain}"
    return DmarcResult(
        value, author, policy, p=record.p, sp=record.sp, pct=record.pct, reason=reason
    )


def _aligned_pass(ctx: CheckContext, author: str, record: DmarcRecord) -> str | None:
    dkim_domain = aligned_dkim_domain(ctx, author, record.adkim)
    if dkim_domain is not None:
        return f"aligned DKIM d={dkim_domain}"
    spf_domain = aligned_spf_domain(ctx, author, record.aspf)
    if spf_domain is not None:
        return f"aligned SPF {spf_domain}"
    return None


def strictest(results: Sequence[DmarcResult]) -> DmarcResult:
    """One result for a From field of several domains (section 6.6.1): the failing one
    with the strictest policy, unless a temperror might hide a stricter failure (then the
    temperror, so the message is tried again rather than judged by the weaker policy);
    else an error, which might hide a failure; else a pass."""
    failing = [r for r in results if r.value is Value.FAIL]
    if failing:
        worst = max(failing, key=lambda r: _SEVERITY[r.policy or "none"])
        for result in results:
            if (
                result.value is Value.TEMPERROR
                and _SEVERITY[_possible_policy(result)] > (_SEVERITY[worst.policy or "none"])
            ):
                return result
        return worst
    for value in (Value.TEMPERROR, Value.PERMERROR, Value.PASS):
        for result in results:
            if result.value is value:
                return result
    return results[0]


def _possible_policy(result: DmarcResult) -> Disposition:
    """The strictest disposition a temperror could turn into on a later attempt: the
    stricter of its record's p= and sp=, or reject when the record itself is unknown."""
    if result.p is None:
        return "reject"
    return max((result.p, result.sp or result.p), key=_SEVERITY.__getitem__)


async def check(
    ctx: CheckContext, dns: Resolver, *, draw: Callable[[], float] = system_draw
) -> tuple[DmarcResult, ...]:
    """The DMARC result of the message in `ctx`; `draw` gives the pct= sample in [0, 1)."""
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    results = await eager.gather(*(evaluate(ctx, dns, d, draw) for d in domains))
    return (strictest(results),)


def _on_timeout(ctx: CheckContext) -> tuple[DmarcResult, ...]:
    # A From field that gives no domain is a permerror whatever the DNS would have said.
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    return (DmarcResult(Value.TEMPERROR, domains[0], reason="timeout"),)


def _on_crash(ctx: CheckContext) -> tuple[DmarcResult, ...]:
    """The evaluation raised: the same message would make it raise again, so nothing about
    it is temporary (RFC 7489 section 11.2 permerror, never temperror)."""
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    return (DmarcResult(Value.PERMERROR, domains[0], reason="evaluation failed"),)


CHECK = Check("dmarc", Stage.AFTER_CHECKS, check, on_timeout=_on_timeout, on_crash=_on_crash)
