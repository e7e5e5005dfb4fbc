"""The two SPF checks as the runner sees them: HELO at EHLO, MAIL FROM at MAIL.

RFC 7208 section 2.3 (HELO identity) and 2.4 (MAIL FROM identity). The rules are in
`rules`, pyspf and its thread hop in `bridge`; this module joins them and declares the
checks, with `keep_reported` as their merge hook: the runner keeps the one SPF result
RFC 8601 section 4 says to write.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor

from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.checks.spf.bridge import DEFAULT_QUERY_TIME, evaluate
from arproxy.checks.spf.rules import (
    SpfResult,
    Target,
    helo_target,
    judge,
    keep_reported,
    mailfrom_target,
)
from arproxy.dns import Resolver

log = logging.getLogger("arproxy.checks.spf")


async def check_helo(
    ctx: CheckContext,
    dns: Resolver,
    *,
    query_time: float = DEFAULT_QUERY_TIME,
    pool: Executor | None = None,
) -> tuple[SpfResult, ...]:
    """SPF for the HELO identity (RFC 7208 section 2.3); a HELO that is not a domain: none.

    pyspf runs in `pool` (the worker's `spf_pool`; None: the loop's default executor)."""
    return await _check(helo_target(ctx), ctx, dns, query_time, pool)


async def check_mailfrom(
    ctx: CheckContext,
    dns: Resolver,
    *,
    query_time: float = DEFAULT_QUERY_TIME,
    pool: Executor | None = None,
) -> tuple[SpfResult, ...]:
    """SPF for the MAIL FROM identity (section 2.4); nothing for the null sender."""
    return await _check(mailfrom_target(ctx), ctx, dns, query_time, pool)


async def _check(
    target: Target | None,
    ctx: CheckContext,
    dns: Resolver,
    query_time: float,
    pool: Executor | None,
) -> tuple[SpfResult, ...]:
    if target is None:
        return ()
    if target.request is None:
        return (_without_lookup(target, ctx),)
    value, explanation = judge(*await evaluate(dns, target.request, query_time, pool))
    result = SpfResult(value, target.identity, target.domain, ctx.client_ip, explanation)
    log.debug("spf %s=%s: %s (%r)", target.identity, target.domain, value, explanation)
    return (result,)


def _without_lookup(target: Target, ctx: CheckContext) -> SpfResult:
    return SpfResult(
        Value.NONE, target.identity, target.domain, ctx.client_ip, reason="not a domain name"
    )


def _on_timeout(target: Target | None, ctx: CheckContext) -> tuple[SpfResult, ...]:
    if target is None:
        return ()
    if target.request is None:
        return (_without_lookup(target, ctx),)  # what the check gives, without DNS
    return (
        SpfResult(Value.TEMPERROR, target.identity, target.domain, ctx.client_ip, reason="timeout"),
    )


def _helo_timeout(ctx: CheckContext) -> tuple[SpfResult, ...]:
    return _on_timeout(helo_target(ctx), ctx)


def _mailfrom_timeout(ctx: CheckContext) -> tuple[SpfResult, ...]:
    return _on_timeout(mailfrom_target(ctx), ctx)


HELO_CHECK = Check("spf", Stage.HELO, check_helo, on_timeout=_helo_timeout, merge=keep_reported)
MAILFROM_CHECK = Check(
    "spf", Stage.MAIL, check_mailfrom, on_timeout=_mailfrom_timeout, merge=keep_reported
)
