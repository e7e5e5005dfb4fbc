"""dkim (RFC 6376; RFC 8601 section 2.7.1; RFC 6008): verify every signature of the message.

One result per DKIM-Signature field, in header order, up to `max_signatures` (RFC 6376
section 6.1 lets a verifier limit how many it tries; a message can carry any number). dkimpy
does the canonicalisation, hashing and RSA arithmetic; everything that decides a result
value is ours, because dkimpy reports most outcomes as `False` or as one exception class:

- keys are fetched through our resolver before dkimpy runs (all signatures' keys at once) and
  judged here (RFC 6376 6.1.2, RFC 8301); dkimpy's `dnsfunc` then only replays the outcome,
  raising our own exception for "no usable key" or "DNS failed", which dkimpy lets through;
- the rules dkimpy does not enforce are checked before it runs: From must be signed (6.1.1),
  rsa-sha1 is refused (RFC 8301 section 3.1);
- dkimpy's `ValidationError` is told apart by its message (body hash versus syntax).

How RFC 6376's SUCCESS / PERMFAIL / TEMPFAIL become RFC 8601 values: a signature that was
checked and did not verify (signature or body hash) is `fail`; a signature that could not be
checked because of something permanent (syntax, missing tag, unusable or absent key, expiry)
is `permerror`; a DNS failure is `temperror`.

Files: `verify` (this check and the rules checked before DNS), `keys` (key fetching and
judging), `dkimpy` (dkimpy's verifier off the event loop, its verdicts as outcomes),
`types` (the shared types).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from collections.abc import Sequence
from concurrent.futures import Executor

from arproxy.checks import eager
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.checks.dkim.dkimpy import Verifier, runs_inline, verify_signature
from arproxy.checks.dkim.keys import key_for, key_name
from arproxy.checks.dkim.types import DkimResult, Key, KeyQuery, Signature, Unverifiable
from arproxy.dns import Resolver

log = logging.getLogger("arproxy.checks.dkim")

DEFAULT_MAX_SIGNATURES = 5
HEADER_B_MIN_LENGTH = 8  # RFC 6008 section 4: at least the first eight characters of b=

_REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # RFC 6376 section 3.5
_ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")  # RFC 6376 3.3, RFC 8463
_BASE64 = re.compile(r"[A-Za-z0-9+/]+=*")


async def check(
    ctx: CheckContext,
    dns: Resolver,
    *,
    max_signatures: int = DEFAULT_MAX_SIGNATURES,
    pool: Executor | None = None,
) -> tuple[DkimResult, ...]:
    """One result per signature (header order), or a single `none` if there is none.

    The CPU work runs in `pool` (the worker's `dkim_pool`; None: the loop's default
    executor, for tests and one-shot tools)."""
    if ctx.message is None:
        raise ValueError("the dkim check runs on a complete message")
    # Building dkimpy's view of the message (and, for plain bytes, reading the header and
    # normalising the body's line ends) walks the whole message: off the loop too, unless
    # the message is small (dkimpy.INLINE_MAX_BYTES). Intake's Message is not read again.
    if runs_inline(ctx.message):
        verifier = Verifier(ctx.message, pool)
    else:
        loop = asyncio.get_running_loop()
        verifier = await loop.run_in_executor(pool, Verifier, ctx.message, pool)
    signatures = verifier.signatures()
    if not signatures:
        return (DkimResult(Value.NONE),)
    checked = signatures[:max_signatures]
    # Unique among all the message's signatures, checked or not (RFC 6008 section 4).
    prefixes = header_b_prefixes([sig.b_value for sig in signatures])[: len(checked)]
    queries = [key_query(sig) for sig in checked]
    # All keys at once (dkimpy's own checks of the signatures come later, so a signature it
    # rejects may cost a lookup); the verifications, CPU work, one after the other.
    keys = await eager.gather(*(key_for(dns, query) for query in queries))
    results: list[DkimResult] = []
    for sig, query, key, prefix in zip(checked, queries, keys, prefixes, strict=True):
        outcome = (
            query if isinstance(query, Unverifiable) else await verify_signature(verifier, sig, key)
        )
        result = _result(sig, prefix, outcome, key)
        # Debug: the message's one info line (outcome.log_line) carries every result.
        log.debug(
            "dkim=%s d=%r s=%r b=%r: %s",
            result.value,
            result.domain,
            result.selector,
            result.b_prefix,
            result.reason or "verified",
        )
        results.append(result)
    if len(signatures) > max_signatures:
        results.append(_over_limit_result(len(signatures) - max_signatures, max_signatures))
    return tuple(results)


def _over_limit_result(unchecked: int, limit: int) -> DkimResult:
    """One `policy` result for all the signatures beyond the limit, none of them verified.

    RFC 8601 2.7.1: "policy: The message was signed, but some aspect of the signature or
    signatures was not acceptable to the ADMD". Our limit is such an aspect (RFC 6376 6.1
    lets a verifier limit the signatures it tries). `neutral` would suggest a defect in the
    signatures, which we never looked at. One aggregate result, not one per signature, so
    that a message with thousands of signatures cannot make our header field huge.
    """
    return DkimResult(
        Value.POLICY, reason=f"signatures over the limit of {limit} not verified: {unchecked}"
    )


def key_query(sig: Signature) -> KeyQuery | Unverifiable:
    """The checks made before any DNS lookup that dkimpy does not make itself."""
    if sig.tags is None:
        return Unverifiable(Value.PERMERROR, "signature syntax error")  # RFC 6376 6.1.1
    if any(tag not in sig.tags for tag in _REQUIRED_TAGS):
        return Unverifiable(Value.PERMERROR, "signature missing required tag")
    signed = {name.strip().lower() for name in sig.tags[b"h"].split(b":")}
    if b"from" not in signed:
        # RFC 6376 6.1.1: MUST ignore the signature, PERMFAIL (From field not signed).
        return Unverifiable(Value.PERMERROR, "From field not signed")
    algorithm = sig.tags[b"a"]
    if algorithm == b"rsa-sha1":
        # RFC 8301 section 3.1: rsa-sha1 MUST NOT be used for signing or verifying.
        return Unverifiable(Value.PERMERROR, "rsa-sha1 not accepted")
    if algorithm not in _ACCEPTED_ALGORITHMS:
        return Unverifiable(Value.PERMERROR, "unknown algorithm")
    name = key_name(sig.tags)
    if name is None:
        return Unverifiable(Value.PERMERROR, "d= or s= not a domain name")
    return KeyQuery(name, sig.tags)


def _result(
    sig: Signature,
    b_prefix: str | None,
    outcome: Unverifiable | None,
    key: Key | Unverifiable,
) -> DkimResult:
    return DkimResult(
        value=Value.PASS if outcome is None else outcome.value,
        domain=sig.text(b"d"),
        identity=sig.text(b"i"),
        selector=sig.text(b"s"),
        algorithm=sig.text(b"a"),
        b_prefix=b_prefix,
        keysize=key.keysize if isinstance(key, Key) else None,
        reason=None if outcome is None else outcome.reason,
    )


def header_b_prefixes(b_values: Sequence[str | None]) -> list[str | None]:
    """header.b for each signature: the shortest prefix of its b= (at least 8 characters)
    that no other signature's b= starts with (RFC 6008 section 4), or all of b= if none is.

    None for a signature without b=, or whose b= is not base64 (nothing sensible to
    write). In sorted order the b= sharing the longest prefix with a value is its
    neighbour, so a message with many signatures costs a sort, not a comparison of all
    pairs.
    """
    others = sorted(value for value in b_values if value)
    prefixes: list[str | None] = []
    for value in b_values:
        if not value or _BASE64.fullmatch(value) is None:
            prefixes.append(None)
            continue
        prefixes.append(value[: _unique_length(value, others)])
    return prefixes


def _unique_length(value: str, all_values: list[str]) -> int:
    first = bisect.bisect_left(all_values, value)
    last = bisect.bisect_right(all_values, value)
    if last - first > 1:
        return len(value)  # the same b= twice: no prefix tells them apart
    neighbours = all_values[first - 1 : first] + all_values[last : last + 1]
    shared = max((_shared_prefix_length(value, other) for other in neighbours), default=0)
    return min(len(value), max(HEADER_B_MIN_LENGTH, shared + 1))


def _shared_prefix_length(one: str, other: str) -> int:
    for position, (a, b) in enumerate(zip(one, other, strict=False)):
        if a != b:
            return position
    return min(len(one), len(other))


def _on_timeout(ctx: CheckContext) -> tuple[DkimResult, ...]:
    return (DkimResult(Value.TEMPERROR, reason="timeout"),)


def _on_crash(ctx: CheckContext) -> tuple[DkimResult, ...]:
    """The check raised on this message: the same message would make it raise again, so
    nothing about it is temporary (RFC 8601 section 2.7.1 permerror, never temperror)."""
    header = ctx.header
    if header is None or not header.named("dkim-signature"):
        return (DkimResult(Value.NONE),)
    return (DkimResult(Value.PERMERROR, reason="message could not be processed"),)


CHECK = Check("dkim", Stage.DATA, check, on_timeout=_on_timeout, on_crash=_on_crash)
