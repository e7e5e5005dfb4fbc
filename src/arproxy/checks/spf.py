"""spf (RFC 7208; RFC 8601 section 2.7.2): may the client use the HELO and MAIL FROM domains?

Two checks: the HELO identity starts at EHLO (RFC 7208 section 2.3), the MAIL FROM identity
at MAIL (section 2.4). pyspf evaluates the records: parsing, macros, and the processing
limits of section 4.6.4 (10 DNS-querying terms, 2 void lookups, 10 MX or PTR names per
term), with `strict=True` so that every limit gives permerror as the RFC says.

pyspf is synchronous and blocking. Each evaluation runs in a bounded thread pool of its own
(`_WORKER_POOL`), never on the event loop thread. Its DNS queries hop back to the loop and go
through our `Resolver`: `spf.DNSLookup` is replaced once, at import, by `_pyspf_dns_lookup`,
which finds the evaluation's `DnsBridge` in a thread-local set by the worker. A worker waits
at most one lookup timeout per query, pyspf's `querytime` bounds the whole evaluation, a
closed event loop or an unanswered query ends it as temperror, and a cancelled check stops
at its next query.

Which identity is reported (RFC 8601 section 4: "only the parameter that yielded the result
is included"), decided by `reported`:

- a non-null MAIL FROM: its result, whatever the HELO check gave. RFC 7208 section 2.3 lets a
  verifier stop at a definitive HELO result, but the MAIL FROM identity is the one receivers
  and DMARC (RFC 7489 section 4.1) act on, so it is the one we report when we have it;
- the null sender: RFC 7208 section 2.4 makes the MAIL FROM identity postmaster@<HELO>, which
  is exactly the HELO check, so `check_mailfrom` returns nothing and `reported` falls back to
  the HELO result, written as `smtp.helo`.

`policy` (RFC 8601 section 2.7.2: SPF authorized the client, but local policy finds the result
unacceptable) is our local rule for a pass whose deciding mechanism, in the sender domain's own
record, is `all` (`+all`, `all`, `+ALL`): such a record authorizes every host on the Internet,
so the pass says nothing about the sender, and DMARC must not align on it. Only the top-level
record's matching mechanism is looked at, so the rule also fires for `include:other all`
when the include did not match (the client was authorized by `all`, not by the include);
a pass by an `include:` that matched (even through the included record's own `+all`), or by
any other mechanism before `all`, stays a pass.

Names built by macros (section 7.3) may hold any visible character (section 7.1: `bob+tag`,
SRS `SRS0=...`, `foo:bar`): the resolver sends them all (dns.py), so they are asked like any
other name. A name no DNS can carry (a label over 63 octets, a name over 253) is not asked
and counts as a void lookup (section 4.6.4), as the NXDOMAIN it would be: `_Query.dns`
(pyspf alone returns no records without counting it). pyspf shortens a macro expansion
over 253 octets from the left, as section 7.3 says, before that.

The `ptr` mechanism and the %{p} macro (sections 5.5, 7.3): a DNS error on the PTR lookup
makes the mechanism not match, and one on the A/AAAA lookup of one PTR name skips that name
and the search goes on; pyspf raises temperror for both, so `_Query.validated_ptrs` (a
method pyspf calls for both uses) catches the error of each lookup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import spf

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.dns import Lookup, Resolver, Status, wire_labels

log = logging.getLogger("arproxy.checks.spf")

Identity = Literal["helo", "mailfrom"]

# RFC 7208 section 4.6.4: a limit on the total time of one evaluation, if any, SHOULD be at
# least 20 seconds; exceeding it gives temperror. The message budget of the runner usually
# ends the wait sooner; then the cancelled evaluation stops at its next query.
DEFAULT_QUERY_TIME = 20.0
# A worker waits for one query this much longer than the resolver's own bound on it.
LOOKUP_MARGIN = 1.0
# Evaluations mostly wait on DNS; this bounds the threads, not the work (more queue up).
WORKERS = 32

_WORKER_POOL = ThreadPoolExecutor(WORKERS, thread_name_prefix="arproxy-spf")

# RFC 7208 section 2.6, as pyspf spells the results with strict=True. pyspf has "ambiguous"
# only in its harsh mode (strict=2), which we never use.
_RESULT_VALUES = {
    "pass": Value.PASS,
    "fail": Value.FAIL,
    "softfail": Value.SOFTFAIL,
    "neutral": Value.NEUTRAL,
    "none": Value.NONE,
    "permerror": Value.PERMERROR,
    "temperror": Value.TEMPERROR,
}

# A host name label (RFC 1123 section 2.1 LDH), compared lower-cased.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_DOMAIN_LENGTH = 253  # 255 octets on the wire, less the length octet and the root
_QUERY_TYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT"})

_COMMENTS = {
    Value.PASS: "{ip} is authorized",
    Value.FAIL: "{ip} is not authorized",
    Value.SOFTFAIL: "{ip} is probably not authorized",
    Value.NEUTRAL: "{ip} is neither authorized nor refused",
    Value.POLICY: "{ip} is authorized only by +all: not accepted by local policy",
    Value.TEMPERROR: "temporary DNS error",
    Value.PERMERROR: "unusable SPF record",
}


class UnexpectedSpfResult(RuntimeError):
    """pyspf returned a result that RFC 7208 section 2.6 does not define."""


class CheckAborted(spf.TempError):  # type: ignore[misc]
    """The evaluation was cancelled, lost its event loop, or spent its time budget
    (section 4.6.4): no further lookup can be answered.

    Not a DNS error about one name, so the ptr mechanism never skips past it.
    """


@dataclass(frozen=True)
class SpfResult:
    """The SPF result for one identity.

    `domain` is the HELO name or the MAIL FROM domain (no local-part): lower-cased ASCII
    (A-labels) when it is a domain name, else the client's text as received, which is kept
    for logs and never written. `reason` (pyspf's explanation, possibly from an exp= record
    of the domain) is for logs only.
    """

    value: Value
    identity: Identity
    domain: str
    client_ip: str | None = None
    reason: str = ""

    method = "spf"

    def to_resinfo(self) -> ResInfo:
        # Client text is written only once validated as a domain name (or, for HELO, an
        # address literal): anything else could carry characters the formatter refuses,
        # or quoted text that a careless reader takes for more results. Without it the
        # property is dropped; the result still stands.
        identity = _reportable_identity(self.identity, self.domain)
        properties = (Property("smtp", self.identity, identity),) if identity else ()
        return ResInfo("spf", self.value.value, properties=properties, comment=self._comment())

    def _comment(self) -> str:
        if self.value is Value.NONE:
            return "no SPF record" if identity_domain(self.domain) else "no domain name to check"
        return _COMMENTS[self.value].format(ip=_ip_text(self.client_ip) or "the client")


def reported(helo: SpfResult | None, mailfrom: SpfResult | None) -> SpfResult | None:
    """The one SPF result to write: MAIL FROM's when there is one, else HELO's.

    RFC 8601 section 4 reports only the identity that yielded the result. A MAIL FROM result
    exists for every non-null sender (a check that ran out of time still gives temperror);
    for the null sender RFC 7208 section 2.4 makes the identity postmaster@<HELO>, which is
    the HELO check, so its result is the one to report. A definitive HELO result is not
    preferred over the MAIL FROM one, although RFC 7208 section 2.3 would allow it: the MAIL
    FROM identity is what consumers and DMARC alignment (RFC 7489 section 4.1) look at.
    """
    return mailfrom if mailfrom is not None else helo


# --- the identities --------------------------------------------------------------------


def identity_domain(text: str) -> str | None:
    """`text` as a domain SPF can check (lower-case ASCII), or None if it is not one.

    RFC 7208 section 4.3: a malformed domain or one that is not multi-label gives `none`
    without any lookup; so does an address literal or other non-name (sections 2.3, 2.6.1).
    U-labels become A-labels (RFC 8616 section 4). The top label must not be all digits
    (RFC 7208 section 7.1, toplabel), so a bare IPv4 address is not a name either.
    """
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    labels = name.split(".")
    if len(name) > MAX_DOMAIN_LENGTH or len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


def _address_literal(text: str) -> str | None:
    """An RFC 5321 section 4.1.3 IPv4 or IPv6 address literal, normalised, or None."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            address = ipaddress.IPv6Address(inner[5:])
            return None if address.scope_id else f"[IPv6:{address}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        return None


def _reportable_identity(identity: Identity, text: str) -> str | None:
    domain = identity_domain(text)
    if domain is None and identity == "helo":
        return _address_literal(text)
    return domain


def _ip_text(ip: str | None) -> str | None:
    """The client address for a comment, IPv4-mapped IPv6 shown as IPv4, or None."""
    if ip is None:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(frozen=True)
class SpfRequest:
    """One check_host() call (RFC 7208 section 4.1): <ip>, <sender> split, and the HELO name.

    `helo` only feeds the %{h} macro (section 7.3).
    """

    ip: str
    local_part: str
    domain: str
    helo: str

    @property
    def sender(self) -> str:
        return f"{self.local_part}@{self.domain}"


@dataclass(frozen=True)
class _Target:
    """What a check evaluates: the identity, the domain reported, the request (None: none)."""

    identity: Identity
    domain: str
    request: SpfRequest | None


def _helo_for_macros(ctx: CheckContext) -> str:
    # pyspf needs a value for %{h}; an unusable HELO must not become part of a query name.
    return identity_domain(ctx.helo or "") or "unknown"


def _helo_target(ctx: CheckContext) -> _Target | None:
    if ctx.helo is None:
        return None
    domain = identity_domain(ctx.helo)
    if domain is None:
        return _Target("helo", ctx.helo, None)
    # Section 2.3: the HELO identity is checked as <sender> = postmaster@<HELO> (section 4.3).
    return _Target("helo", domain, SpfRequest(ctx.client_ip, "postmaster", domain, domain))


def _mailfrom_target(ctx: CheckContext) -> _Target | None:
    if ctx.mail_from is None:
        return None
    mailbox = _split_reverse_path(ctx.mail_from)
    if mailbox is None:
        return None  # the null sender: the HELO check covers it (section 2.4)
    local_part, domain_text = mailbox
    domain = identity_domain(domain_text)
    if domain is None:
        return _Target("mailfrom", domain_text, None)
    request = SpfRequest(ctx.client_ip, local_part or "postmaster", domain, _helo_for_macros(ctx))
    return _Target("mailfrom", domain, request)


def _split_reverse_path(path: str) -> tuple[str, str] | None:
    """(local-part, domain text) of a MAIL FROM path, or None for the null sender "<>".

    Section 4.3: an empty local-part becomes "postmaster" (done by the caller). A path
    without "@" has no domain: its domain text is empty, which is not a domain (none).
    """
    path = path.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1]
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]  # an RFC 5321 source route (obsolete): drop it
    if not path:
        return None
    local_part, at, domain = path.rpartition("@")
    return (local_part, domain) if at else ("", "")


# --- the checks --------------------------------------------------------------------------


async def check_helo(
    ctx: CheckContext, dns: Resolver, *, query_time: float = DEFAULT_QUERY_TIME
) -> tuple[SpfResult, ...]:
    """SPF for the HELO identity (RFC 7208 section 2.3); a HELO that is not a domain: none."""
    return await _check(_helo_target(ctx), ctx, dns, query_time)


async def check_mailfrom(
    ctx: CheckContext, dns: Resolver, *, query_time: float = DEFAULT_QUERY_TIME
) -> tuple[SpfResult, ...]:
    """SPF for the MAIL FROM identity (section 2.4); nothing for the null sender."""
    return await _check(_mailfrom_target(ctx), ctx, dns, query_time)


async def _check(
    target: _Target | None, ctx: CheckContext, dns: Resolver, query_time: float
) -> tuple[SpfResult, ...]:
    if target is None:
        return ()
    if target.request is None:
        return (_without_lookup(target, ctx),)
    value, explanation = await _evaluate(dns, target.request, query_time)
    result = SpfResult(value, target.identity, target.domain, ctx.client_ip, explanation)
    log.debug("spf %s=%s: %s (%r)", target.identity, target.domain, value, explanation)
    return (result,)


def _without_lookup(target: _Target, ctx: CheckContext) -> SpfResult:
    return SpfResult(
        Value.NONE, target.identity, target.domain, ctx.client_ip, reason="not a domain name"
    )


def _on_timeout(target: _Target | None, ctx: CheckContext) -> tuple[SpfResult, ...]:
    if target is None:
        return ()
    if target.request is None:
        return (_without_lookup(target, ctx),)  # what the check gives, without DNS
    return (
        SpfResult(Value.TEMPERROR, target.identity, target.domain, ctx.client_ip, reason="timeout"),
    )


def _helo_timeout(ctx: CheckContext) -> tuple[SpfResult, ...]:
    return _on_timeout(_helo_target(ctx), ctx)


def _mailfrom_timeout(ctx: CheckContext) -> tuple[SpfResult, ...]:
    return _on_timeout(_mailfrom_target(ctx), ctx)


HELO_CHECK = Check("spf", Stage.HELO, check_helo, on_timeout=_helo_timeout)
MAILFROM_CHECK = Check("spf", Stage.MAIL, check_mailfrom, on_timeout=_mailfrom_timeout)


# --- pyspf in a worker thread, its DNS through the loop -------------------------------


async def _evaluate(dns: Resolver, request: SpfRequest, query_time: float) -> tuple[Value, str]:
    loop = asyncio.get_running_loop()
    bridge = DnsBridge(loop, dns, lookup_timeout=dns.timeout + LOOKUP_MARGIN)
    try:
        outcome, explanation, mechanism = await loop.run_in_executor(
            _WORKER_POOL, evaluate_blocking, bridge, request, query_time
        )
    except asyncio.CancelledError:
        bridge.cancel()
        raise
    value = spf_value(outcome)
    if value is Value.PASS and _authorizes_every_host(mechanism):
        return Value.POLICY, f"pass by {mechanism} only"
    return value, explanation


def _authorizes_every_host(mechanism: str) -> bool:
    """The mechanism that matched in the sender domain's own record (pyspf's, as written)
    is `all` or `+all`, in any case (RFC 7208 section 4.6.1: mechanism names are
    case-insensitive). Only the top-level record counts: `include:x all` whose include did
    not match is a pass by `all` (the rule fires); an include that matched, even through
    the included record's own `+all`, is reported by pyspf as the include (it does not)."""
    return mechanism.lower().removeprefix("+") == "all"


def spf_value(outcome: str) -> Value:
    """The RFC 8601 value of a pyspf result string."""
    try:
        return _RESULT_VALUES[outcome]
    except KeyError:
        raise UnexpectedSpfResult(f"pyspf returned {outcome!r}") from None


def evaluate_blocking(
    bridge: DnsBridge, request: SpfRequest, query_time: float
) -> tuple[str, str, str]:
    """Run pyspf for `request` in this (worker) thread: (result, explanation, the
    mechanism that matched at the top level, "" if none).

    Every query pyspf makes goes through `bridge`; `query_time` is its total time budget.
    """
    _thread_state.bridge = bridge
    try:
        query = _Query(
            i=request.ip, s=request.sender, h=request.helo, strict=True, querytime=query_time
        )
        # pyspf splits <sender> at its first "@", wrong for a quoted local-part holding one;
        # these attributes are its macro variables (RFC 7208 section 7.3), so set them.
        query.l, query.o, query.d = request.local_part, request.domain, request.domain
        outcome, _code, explanation = query.check()
    finally:
        _thread_state.bridge = None
    return str(outcome), str(explanation), str(query.mechanism or "")


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query, with the DNS errors of the ptr mechanism handled as section 5.5 says
    and names no DNS can carry counted as void lookups.

    pyspf (2.0.x) calls `validated_ptrs` for the `ptr` mechanism and for %{p}; its own lets
    a TempError of any lookup end the whole evaluation as temperror. Every lookup goes
    through `dns`. Tests (test_ptr_hook_is_called, test_names_no_dns_can_carry_are_void)
    fail if pyspf stops calling these methods; pyproject pins pyspf below 2.1 for that
    reason.
    """

    def dns(
        self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False
    ) -> list[object]:
        """pyspf's cached lookup; a name no DNS can carry is a void lookup (section 4.6.4).

        Raise spf.PermError past the void lookup limit, spf.TempError on DNS failure.
        """
        if name and wire_labels(str(name).removesuffix(".")) is None:
            if not ignore_void:
                self.void_lookups += 1
                if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                    raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
            return []
        records: list[object] = super().dns(name, qtype, cnames, ignore_void)
        return records

    def validated_ptrs(self) -> list[str]:
        """The client's PTR names (at most 10, section 4.6.4) whose A/AAAA records hold
        the client address (section 5.5), each name's DNS error skipping that name."""
        try:
            names: list[str] = self.dns_ptr(self.i)
        except CheckAborted:
            raise
        except spf.TempError:
            if self.querytime < 0:
                raise  # the evaluation's time is spent: temperror (section 4.6.4)
            return []  # section 5.5: "this mechanism fails to match"
        return [name for name in names[: spf.MAX_PTR] if self._maps_back(name)]

    def _maps_back(self, name: str) -> bool:
        try:
            return bool(self.cidrmatch(self.dns_a(name, self.A), self.cidrmax))
        except CheckAborted:
            raise
        except spf.TempError:
            if self.querytime < 0:
                raise
            return False  # section 5.5: "that domain name is skipped and the search continues"


# pyspf's record data (DNSLookup_dnspython): TXT a list of bytes strings, A/AAAA/PTR text,
# MX a (preference, exchange) pair; each keyed by (name, type).
PyspfRecord = tuple[tuple[str, str], list[bytes] | str | tuple[int, str]]


class DnsBridge:
    """One evaluation's way from its worker thread back to the event loop's resolver."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resolver: Resolver, *, lookup_timeout: float
    ) -> None:
        self.loop = loop
        self.resolver = resolver
        self.lookup_timeout = lookup_timeout
        self._lock = threading.Lock()
        self._cancelled = False
        self._pending: concurrent.futures.Future[Lookup] | None = None

    def cancel(self) -> None:
        """End the query in progress and refuse the next ones (from any thread)."""
        with self._lock:
            self._cancelled = True
            pending = self._pending
        if pending is not None:
            self._cancel_future(pending)

    def lookup(self, name: str, qtype: str, timeout: float) -> list[PyspfRecord]:
        """pyspf's DNSLookup: records, [] for a void lookup; spf.TempError when DNS failed."""
        if qtype not in _QUERY_TYPES:
            return []  # type SPF (99), retired by RFC 7208 section 3.1; pyspf asks only if harsh
        # Any name, whatever its characters (section 7.1): the resolver sends what the DNS
        # can carry and answers NXDOMAIN (a void lookup, section 4.6.4) for what it cannot.
        future = self._submit(name, qtype)
        try:
            found = future.result(max(0.0, min(timeout, self.lookup_timeout)))
        except TimeoutError:
            self._cancel_future(future)
            if timeout < self.lookup_timeout:
                # pyspf gives the rest of its query time when that is the shorter bound:
                # the evaluation is out of time, not just this name out of answers.
                raise CheckAborted(f"DNS {qtype} {name}: query time spent") from None
            raise spf.TempError(f"DNS {qtype} {name}: no answer in time") from None
        except concurrent.futures.CancelledError:
            raise CheckAborted(f"DNS {qtype} {name}: check cancelled") from None
        finally:
            with self._lock:
                self._pending = None
        return _pyspf_records(name, found)

    def _submit(self, name: str, qtype: str) -> concurrent.futures.Future[Lookup]:
        with self._lock:
            if self._cancelled:
                raise CheckAborted("check cancelled")
            coroutine = self.resolver.lookup(name, qtype)
            try:
                future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
            except RuntimeError:  # the loop is closed: nobody waits for this result any more
                coroutine.close()
                raise CheckAborted("event loop closed") from None
            self._pending = future
        return future

    def _cancel_future(self, future: concurrent.futures.Future[Lookup]) -> None:
        # Cancelling asks the loop to cancel its task; a closed loop cannot be asked.
        if not self.loop.is_closed():
            future.cancel()


def _pyspf_records(name: str, found: Lookup) -> list[PyspfRecord]:
    if found.status is Status.TEMPFAIL:
        # RFC 7208 section 4.4 (and 5 for terms): SERVFAIL or timeout -> temperror.
        raise spf.TempError(f"DNS {found.rtype} {name}: {found.reason}")
    key = (name, found.rtype)
    if found.rtype == "TXT":
        return [(key, [text]) for text in found.texts()]
    # NXDOMAIN and NODATA have no records: pyspf counts [] as a void lookup (section 4.6.4).
    return [(key, record) for record in found.records if not isinstance(record, bytes)]


_thread_state = threading.local()


def _pyspf_dns_lookup(
    name: str, qtype: str, strict: object = True, timeout: float = DEFAULT_QUERY_TIME
) -> list[PyspfRecord]:
    """Replaces `spf.DNSLookup`: the query goes to the current evaluation's bridge."""
    bridge: DnsBridge | None = getattr(_thread_state, "bridge", None)
    if bridge is None:
        # pyspf called outside `evaluate_blocking`: no loop to ask, and blocking DNS of its
        # own is what this module exists to prevent.
        raise spf.TempError("DNS lookup outside an arproxy SPF check")
    return bridge.lookup(name, qtype, timeout)


spf.DNSLookup = _pyspf_dns_lookup
