"""arc (RFC 8617): the chain validation status of the message, `none`, `pass` or `fail`.

RFC 8617 section 5.2, step by step: the structure (steps 1 to 3, `chain`) is checked on
our header reader's fields before any DNS lookup; then every ARC-Seal and
ARC-Message-Signature key is fetched through our resolver, all at once, within the
message's budget, and judged as DKIM keys are (RFC 8617 section 4.1.2 and 4.1.3 use
RFC 6376's key records: checks.dkim.keys); then dkimpy's ARC code does the hashing and
RSA of each instance, its key lookups answered from what we fetched (its `dnsfunc`
replays them). dkimpy has no async ARC API: its CPU work runs on the loop for a small
message and in the worker's `dkim_pool` otherwise, as DKIM's does.

A DNS failure: RFC 8617 registers only none / pass / fail for `arc` (section 10.1), so a
key that could not be fetched makes the status `fail`, written with the reason, and the
result is marked `temporary`. It never becomes a permanent decision: the only decision
built on `arc` (the trusted-sealer override, arproxy.policy) needs a pass, and policy
answers 4xx when the override could have applied but for the DNS (RFC 8601 section
2.7.1: a later attempt may give a final result).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import dkim

from arproxy import authres, names
from arproxy.checks import eager
from arproxy.checks.arc.chain import (
    ARC_FIELDS,
    ArcSet,
    ChainError,
    has_arc_fields,
    read_chain,
)
from arproxy.checks.arc.result import ArcResult
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.checks.dkim.dkimpy import dkimpy_message, runs_inline
from arproxy.checks.dkim.keys import MIN_RSA_BITS, key_for, key_name
from arproxy.checks.dkim.rsa import install as use_openssl_rsa
from arproxy.checks.dkim.types import DKIMPY_INPUT_ERRORS, Key, KeyQuery, Unverifiable
from arproxy.dns import Resolver
from arproxy.header import Header, Message, read_header

log = logging.getLogger("arproxy.checks.arc")


class _DkimpyLog:
    """dkimpy's logger: it logs every signature that does not verify at error level;
    for us that is a result, which the message's one log line carries. Debug only."""

    def _debug(self, message: object, *args: object, **kwargs: object) -> None:
        log.debug("dkimpy: %s", message)

    debug = info = warning = error = _debug


class KeyTempError(Exception):
    """A key lookup failed temporarily; not a dkimpy exception, so it goes through."""


@dataclass(frozen=True)
class InstanceVerdict:
    """dkimpy's verdict on one ARC set: does its AMS, does its seal validate."""

    instance: int
    ams_valid: bool
    as_valid: bool


async def check(
    ctx: CheckContext, dns: Resolver, *, pool: Executor | None = None
) -> tuple[ArcResult, ...]:
    """One `arc` result for the message (RFC 8617 section 5.2); the CPU work in `pool`
    (the worker's `dkim_pool`; None: the loop's default executor)."""
    if ctx.message is None:
        raise ValueError("the arc check runs on a complete message")
    message, ip = ctx.message, client_address(ctx)
    inline = runs_inline(message)
    loop = asyncio.get_running_loop()
    if isinstance(message, Message) or inline:
        header = ctx_header(ctx)  # intake's one reading for a Message: nothing to walk
    else:
        # Reading the header walks it: off the loop for a large message, as DKIM does.
        header = await loop.run_in_executor(pool, read_header, message)
    if not has_arc_fields(header):
        return (ArcResult(Value.NONE, ip),)
    try:
        chain = read_chain(header)
    except ChainError as problem:
        return (ArcResult(Value.FAIL, ip, reason=str(problem)),)
    sealer, sealer_results = _sealer(chain[-1])
    base = ArcResult(Value.FAIL, ip, sealer=sealer, sealer_results=sealer_results, sets=len(chain))
    keys = await fetch_keys(dns, chain)
    if inline:
        await asyncio.sleep(0)
        verdicts = validate(message, header, chain, keys)
    else:
        verdicts = await loop.run_in_executor(pool, validate, message, header, chain, keys)
    return (status(verdicts, base),)


def status(
    verdicts: tuple[InstanceVerdict, ...] | KeyTempError | str, base: ArcResult
) -> ArcResult:
    """RFC 8617 section 5.2 steps 4 to 7 on dkimpy's verdicts (newest first); `base`
    carries what is known of the chain already."""
    if isinstance(verdicts, str):
        return replace(base, value=Value.FAIL, reason=verdicts)
    if isinstance(verdicts, KeyTempError):
        return replace(
            base, value=Value.FAIL, reason="key lookup failed temporarily", temporary=True
        )
    if not verdicts[0].ams_valid:
        # Step 4: the newest AMS must validate.
        reason = f"ARC-Message-Signature i={verdicts[0].instance} did not verify"
        return replace(base, value=Value.FAIL, reason=reason)
    for verdict in verdicts:
        if not verdict.as_valid:
            # Step 6: every seal, newest to oldest.
            reason = f"ARC-Seal i={verdict.instance} did not verify"
            return replace(base, value=Value.FAIL, reason=reason)
    return replace(base, value=Value.PASS, oldest_pass=oldest_pass(verdicts))


def oldest_pass(verdicts: tuple[InstanceVerdict, ...]) -> int:
    """RFC 8617 section 5.2 step 5: walking the AMSs from the newest down, the instance
    after the first one that fails to validate; 0 when all validate."""
    for verdict in verdicts:
        if not verdict.ams_valid:
            return verdict.instance + 1
    return 0


def _sealer(newest: ArcSet) -> tuple[str | None, tuple[authres.ResInfo, ...] | None]:
    """The newest seal's d= as a checked A-label, and what its hop recorded (its AAR's
    payload read by our strict RFC 8601 parser; None if it does not parse)."""
    raw = newest.seal.get(b"d", b"").strip()
    try:
        sealer = names.idna2003_host_name(raw.decode("utf-8"), min_labels=2)
    except UnicodeError:
        sealer = None
    try:
        parsed = authres.parse(newest.results.decode("utf-8"))
    except (UnicodeError, authres.AuthResSyntaxError):
        return sealer, None
    return sealer, parsed.results


async def fetch_keys(dns: Resolver, chain: tuple[ArcSet, ...]) -> dict[str, Key | Unverifiable]:
    """Every seal's and message signature's key, through our resolver, all at once,
    judged by RFC 6376 6.1.2 and RFC 8301 (checks.dkim.keys). Keyed by key name."""
    queries: dict[str, KeyQuery] = {}
    for arc_set in chain:
        for tags in (arc_set.seal, arc_set.signature):
            # i= of ARC is an instance, not an identity: judge the key without it.
            judged = {tag: value for tag, value in tags.items() if tag != b"i"}
            if b"a" not in judged or b"s" not in judged or b"d" not in judged:
                continue  # dkimpy refuses the signature itself: no lookup
            name = key_name(judged)
            if name is not None and name not in queries:
                queries[name] = KeyQuery(name, judged)
    found = await eager.gather(*(key_for(dns, query) for query in queries.values()))
    return dict(zip(queries, found, strict=True))


def validate(
    message: bytes,
    header: Header,
    chain: tuple[ArcSet, ...],
    keys: Mapping[str, Key | Unverifiable],
) -> tuple[InstanceVerdict, ...] | KeyTempError | str:
    """dkimpy's verdict on every ARC set, newest first; KeyTempError if a key could not
    be fetched; a reason (str) if dkimpy reads the chain otherwise than we did. CPU only."""
    use_openssl_rsa()
    arc = dkim.ARC(b"", logger=_DkimpyLog(), minkey=MIN_RSA_BITS)
    arc.headers, arc.body = dkimpy_message(message, header)

    def replay_key(name: bytes, timeout: float = 0.0) -> bytes | None:
        try:
            ours = names.idna2003_host_name(
                name.decode("utf-8").rstrip("."), min_labels=1, underscores=True
            )
        except UnicodeError:
            return None
        key = keys.get(ours) if ours is not None else None
        if isinstance(key, Key):
            return key.record
        if isinstance(key, Unverifiable) and key.value is Value.TEMPERROR:
            raise KeyTempError(key.reason)
        # No usable key: dkimpy turns None into KeyFormatError, the signature is invalid.
        return None

    try:
        max_instance, indexed = arc.sorted_arc_headers()
    except DKIMPY_INPUT_ERRORS as exc:
        return f"ARC fields unreadable: {type(exc).__name__}"
    if not _same_reading(indexed, chain, header):
        return "ARC instance tags ambiguous"
    verdicts = []
    for instance in range(max_instance, 0, -1):
        try:
            output = arc.verify_instance(indexed, instance, dnsfunc=replay_key)
        except KeyTempError as exc:
            return exc
        except Exception as exc:
            # dkimpy parsing hostile input fails in more ways than its own exceptions
            # (see DKIMPY_INPUT_ERRORS); the same set would fail again: not temporary.
            log.info("arc: set %d: %r", instance, exc)
            log.debug("arc: set %d: traceback", instance, exc_info=True)
            verdicts.append(InstanceVerdict(instance, False, False))
            continue
        verdicts.append(
            InstanceVerdict(instance, bool(output["ams-valid"]), bool(output["as-valid"]))
        )
    return tuple(verdicts)


def _same_reading(
    indexed: list[tuple[int, tuple[bytes, bytes]]], chain: tuple[ArcSet, ...], header: Header
) -> bool:
    """Whether dkimpy assigns the ARC fields to the instances we did: it finds i= with a
    looser pattern, and must not verify a set other than the one we checked."""
    ours = sorted((arc_set.instance, name) for arc_set in chain for name in ARC_FIELDS)
    theirs = sorted((instance, bytes(name).lower().decode()) for instance, (name, _) in indexed)
    arc_fields = sum(1 for field in header.fields if field.lower_name in ARC_FIELDS)
    return ours == theirs and len(theirs) == arc_fields


def client_address(ctx: CheckContext) -> str | None:
    """smtp.remote-ip (RFC 8617 section 10.1): the client's address; None for the
    unspecified address, which `arproxy check` uses when no --client-ip was given."""
    return _remote_ip(ctx.client_ip)


@functools.lru_cache(maxsize=1024)
def _remote_ip(client_ip: str) -> str | None:
    # Cached per worker: a client sends many messages, each parsed the address again.
    try:
        unspecified = ipaddress.ip_address(client_ip).is_unspecified
    except ValueError:
        return None
    return None if unspecified else client_ip


def ctx_header(ctx: CheckContext) -> Header:
    """The header of the context's message (which the caller has made sure is there)."""
    header = ctx.header
    if header is None:
        raise ValueError("the arc check runs on a complete message")
    return header


def _on_timeout(ctx: CheckContext) -> tuple[ArcResult, ...]:
    """Out of budget: the keys did not come in time, like a failed lookup (temporary)."""
    if ctx.header is None or not has_arc_fields(ctx.header):
        return (ArcResult(Value.NONE, client_address(ctx)),)
    return (ArcResult(Value.FAIL, client_address(ctx), reason="timeout", temporary=True),)


def _on_crash(ctx: CheckContext) -> tuple[ArcResult, ...]:
    """The check raised on this message: the same message would again (not temporary)."""
    if ctx.header is None or not has_arc_fields(ctx.header):
        return (ArcResult(Value.NONE, client_address(ctx)),)
    return (ArcResult(Value.FAIL, client_address(ctx), reason="chain could not be processed"),)


CHECK = Check("arc", Stage.DATA, check, on_timeout=_on_timeout, on_crash=_on_crash)
