"""pyspf in a worker thread, its DNS through the event loop's resolver.

pyspf is synchronous and blocking. Each evaluation is first tried on the event loop thread
from the resolver's cache alone (`evaluate_cached`: no query, no await, no thread hop; with
a warm cache, the common case, that is the answer); at the first record the cache does not
hold, the attempt is dropped and the evaluation runs in the thread pool the caller passes
(the worker's `resources.spf_pool`), where it may wait for DNS. There its DNS
queries hop back to the loop and go through our `Resolver`: `_Query.dns` (our subclass of
pyspf's query) asks the evaluation's `DnsBridge` instead of pyspf's module global
`spf.DNSLookup`, which arproxy never replaces. A worker waits at most one lookup timeout
per query, pyspf's `querytime` bounds the whole evaluation, a closed event loop or an
unanswered query ends it as temperror, and a cancelled check stops at its next query.

A cache-only evaluation's outcome is remembered per worker (`Resolver.memo`) with the
cached answers it read, and given again while the cache still holds each of them; never
when a record read holds the %{t} macro or the time budget ran out (`_memoisable`).

Names built by macros (RFC 7208 section 7.3) may hold any visible character (section 7.1:
`bob+tag`, SRS `SRS0=...`, `foo:bar`): the resolver sends them all (dns.py), so they are
asked like any other name. A name no DNS can carry (a label over 63 octets, a name over
253) is not asked and counts as a void lookup (section 4.6.4), as the NXDOMAIN it would
be: `_Query.dns` (pyspf alone returns no records without counting it). pyspf shortens a
macro expansion over 253 octets from the left, as section 7.3 says, before that.

The `ptr` mechanism and the %{p} macro (sections 5.5, 7.3): a DNS error on the PTR lookup
makes the mechanism not match, and one on the A/AAAA lookup of one PTR name skips that name
and the search goes on; pyspf raises temperror for both, so `_Query.validated_ptrs` (a
method pyspf calls for both uses) catches the error of each lookup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import Executor
from typing import Protocol, cast

import spf

from arproxy.checks.spf.rules import SpfRequest
from arproxy.dns import Lookup, Read, Resolver, Status, wire_labels

# RFC 7208 section 4.6.4: a limit on the total time of one evaluation, if any, SHOULD be at
# least 20 seconds; exceeding it gives temperror. The message budget of the runner usually
# ends the wait sooner; then the cancelled evaluation stops at its next query.
DEFAULT_QUERY_TIME = 20.0
# A worker waits for one query this much longer than the resolver's own bound on it.
LOOKUP_MARGIN = 1.0
_QUERY_TYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT"})
# The %{t} macro (RFC 7208 section 7.3, letters case-insensitive), in lowered record bytes.
_TIME_MACRO = b"%{t"
# Keys of SPF evaluations in the resolver's `AnswerMemo`, apart from any other user's.
_MEMO_TAG = "spf-evaluation"


class CheckAborted(spf.TempError):  # type: ignore[misc]
    """The evaluation was cancelled, lost its event loop, or spent its time budget
    (section 4.6.4): no further lookup can be answered.

    Not a DNS error about one name, so the ptr mechanism never skips past it.
    """


class _CacheMiss(Exception):
    """A lookup of a cache-only evaluation that the cache cannot answer.

    Deliberately no pyspf exception: pyspf must not turn it into a result. pyspf swallows
    every exception around an exp= lookup, so `CacheOnlyBridge.missed` records it too.
    """


async def evaluate(
    dns: Resolver, request: SpfRequest, query_time: float, pool: Executor | None = None
) -> tuple[str, str, str]:
    """pyspf's (result, explanation, top-level mechanism) for `request`, evaluated in a
    thread of `pool` (None: the loop's default executor) with its DNS through `dns`.

    First tried on the loop thread from the resolver's cache alone (`evaluate_cached`):
    with a warm cache, no thread hop at all; on the first lookup the cache cannot answer,
    that attempt is dropped and the evaluation starts over in the pool, as it always did.
    """
    cached = evaluate_cached(dns, request, query_time)
    if cached is not None:
        return cached
    loop = asyncio.get_running_loop()
    bridge = DnsBridge(loop, dns, lookup_timeout=dns.timeout + LOOKUP_MARGIN)
    try:
        return await loop.run_in_executor(pool, evaluate_blocking, bridge, request, query_time)
    except asyncio.CancelledError:
        bridge.cancel()
        raise


def evaluate_cached(
    dns: Resolver, request: SpfRequest, query_time: float
) -> tuple[str, str, str] | None:
    """pyspf's answer for `request` if the resolver's cache holds every record the
    evaluation reads, else None; on the calling (loop) thread, no query, no await.

    Exact: the evaluation reads the same cached `Lookup`s the pooled one would get from
    `Resolver.lookup`, and any lookup the cache cannot answer discards the attempt (the
    CPU cost of a cold-cache attempt is one partial pyspf run, microseconds).

    Memoised in `dns.memo` (per worker, LRU): an outcome is a pure function of the request
    (every field feeds a macro, RFC 7208 section 7.3), of the records read and of the time
    budget, which a cache-only run never spends. A hit stands while every (name, type) the
    evaluation read is still answered by the very `Lookup` it read (`Resolver.still_answers`;
    each of those asks counts in `lookups` / `cache_hits` as the evaluation's own ask
    would, so the DNS cache's metrics read the same with or without the memo). See
    `_memoisable` for what is never kept.
    """
    key = (_MEMO_TAG, request)
    if query_time >= 0:  # a negative budget is spent before the first lookup: temperror
        known = dns.memo.get(key)
        if known is not None:
            return cast(tuple[str, str, str], known)
    bridge = CacheOnlyBridge(dns)
    query = _new_query(bridge, request, query_time)
    try:
        outcome = _outcome(query)
    except _CacheMiss:
        return None
    if bridge.missed:
        return None
    if _memoisable(bridge, query):
        dns.memo.put(key, outcome, tuple(bridge.reads))
    return outcome


def _memoisable(bridge: CacheOnlyBridge, query: _Query) -> bool:
    """Whether this cache-only evaluation's outcome is the same at any time.

    Not if a record read holds the %{t} macro (RFC 7208 section 7.3: the current time,
    pyspf's `query.t`; in an SPF record or in an exp= explanation, any case), nor if the
    query-time budget ran out (section 4.6.4: temperror by the clock, `_Query._ask`). pyspf
    reads the clock nowhere else (`query.t` at construction, the budget in our `_ask`) and
    uses no randomness; %{r} is the constant "unknown" (no `receiver` is passed). Every
    other way out of `_run_query` is an exception (`_CacheMiss`, a caller bug), and nothing
    is kept then; the TempError of a TEMPFAIL answer cannot happen (failures are never
    cached).
    """
    return not bridge.reads_time and query.querytime >= 0


def evaluate_blocking(
    bridge: DnsBridge, request: SpfRequest, query_time: float
) -> tuple[str, str, str]:
    """Run pyspf for `request` in this (worker) thread: (result, explanation, the
    mechanism that matched at the top level, "" if none).

    Every query pyspf makes goes through `bridge`; `query_time` is its total time budget.
    """
    return _run_query(bridge, request, query_time)


def _run_query(
    bridge: LookupBridge, request: SpfRequest, query_time: float
) -> tuple[str, str, str]:
    return _outcome(_new_query(bridge, request, query_time))


def _new_query(bridge: LookupBridge, request: SpfRequest, query_time: float) -> _Query:
    query = _Query(
        bridge, i=request.ip, s=request.sender, h=request.helo, strict=True, querytime=query_time
    )
    # pyspf splits <sender> at its first "@", wrong for a quoted local-part holding one;
    # these attributes are its macro variables (RFC 7208 section 7.3), so set them.
    query.l, query.o, query.d = request.local_part, request.domain, request.domain
    return query


def _outcome(query: _Query) -> tuple[str, str, str]:
    outcome, _code, explanation = query.check()
    return str(outcome), str(explanation), str(query.mechanism or "")


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query, its lookups through a `DnsBridge`, with the DNS errors of the ptr
    mechanism handled as section 5.5 says and names no DNS can carry counted as void
    lookups.

    pyspf (2.0.x) sends every lookup through `query.dns`, whose own version calls the
    module global `spf.DNSLookup`; ours is the same algorithm (cache, CNAME chain, void
    lookups, the querytime budget) asking `self.bridge` instead, so the global is never
    touched and two evaluations never share anything. pyspf calls `validated_ptrs` for
    the `ptr` mechanism and for %{p}; its own lets a TempError of any lookup end the
    whole evaluation as temperror. Tests (test_ptr_hook_is_called,
    test_names_no_dns_can_carry_are_void) fail if pyspf stops calling these methods;
    pyproject pins pyspf below 2.1 for that reason.
    """

    def __init__(self, bridge: LookupBridge | None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.bridge = bridge

    def dns(
        self, name: str, qtype: str, cnames: dict[str, str] | None = None, ignore_void: bool = False
    ) -> list[object]:
        """The records of `name`/`qtype` (pyspf's cached lookup, CNAMEs followed); []
        and a void lookup (section 4.6.4) for none, or for a name no DNS can carry.

        Raise spf.PermError past the void lookup or CNAME limit, spf.TempError on DNS
        failure or when the evaluation's time is spent, CheckAborted without a bridge.
        """
        if not name:
            raise ValueError("Invalid query")  # as pyspf: a caller bug, not a result
        name = str(name).removesuffix(".")
        if wire_labels(name) is None:
            return self._void([], ignore_void)
        name = name.lower()
        result: list[object] = self.cache.get((name, qtype), [])
        if result:
            return result
        cname_key = (name, "CNAME")
        cached_cname = self.cache.get(cname_key)
        cname: str | None = cached_cname[0] if cached_cname else None
        if cname is None:
            cname = self._ask(name, qtype, cname_key)
            result = self.cache.get((name, qtype), [])
        if not result and cname:
            result = self._follow(name, qtype, cname, cnames)
        return self._void(result, ignore_void)

    def _ask(self, name: str, qtype: str, cname_key: tuple[str, str]) -> str | None:
        """One lookup through the bridge, its answers cached as pyspf caches them."""
        if self.bridge is None:
            # pyspf's own blocking DNS is what this module exists to prevent.
            raise CheckAborted("DNS lookup outside an arproxy SPF evaluation")
        if self.querytime < 0:
            raise spf.TempError("DNS Error: exceeded max query lookup time")
        timeout = self.querytime if 0 < self.querytime < self.timeout else self.timeout
        started = time.time()
        cname: str | None = None
        for (owner, rtype), value in self.bridge.lookup(name, qtype, timeout):
            # Cached case-insensitively: DNS servers often answer in random case.
            key = (owner.lower(), rtype)
            if key == cname_key:
                cname = str(value)
                if self.cache.get((cname, qtype), []):
                    break
            if key[1] == "CNAME" or (qtype, key[1]) in spf.query.SAFE2CACHE:
                self.cache.setdefault(key, []).append(value)
        if self.querytime > 0:
            self.querytime -= time.time() - started
        return cname

    def _follow(
        self, name: str, qtype: str, cname: str, cnames: dict[str, str] | None
    ) -> list[object]:
        if not cnames:
            cnames = {}
        elif len(cnames) >= spf.MAX_CNAME:
            raise spf.PermError(f"Length of CNAME chain exceeds {spf.MAX_CNAME}")
        cnames[name] = cname
        if cname.lower().rstrip(".") in cnames:
            return []  # a CNAME loop: no data
        result = self.dns(cname, qtype, cnames=cnames)
        if result:
            self.cache[(name, qtype)] = result
        return result

    def _void(self, result: list[object], ignore_void: bool) -> list[object]:
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result

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


class LookupBridge(Protocol):
    """Where `_Query` gets its records: pyspf's DNSLookup contract."""

    def lookup(self, name: str, qtype: str, timeout: float) -> list[PyspfRecord]:
        """Records, [] for a void lookup; raise spf.TempError when DNS failed."""


class CacheOnlyBridge:
    """An evaluation on the loop thread: answers from the resolver's cache only.

    Records what it read for the memo (`evaluate_cached`): `reads`, each (name, type) asked
    with the `Lookup` the cache gave, in order; `reads_time`, whether a TXT record read
    holds the %{t} macro (RFC 7208 section 7.3; only TXT records are expanded by pyspf).
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.missed = False
        self.reads: list[Read] = []
        self.reads_time = False

    def lookup(self, name: str, qtype: str, timeout: float) -> list[PyspfRecord]:
        """As `DnsBridge.lookup`; raise _CacheMiss when the cache cannot answer."""
        if qtype not in _QUERY_TYPES:
            return []
        found = self.resolver.cached(name, qtype)
        if found is None:
            self.missed = True
            raise _CacheMiss(f"{qtype} {name}")
        self.reads.append((name, qtype, found))
        if qtype == "TXT" and not self.reads_time:
            self.reads_time = any(_TIME_MACRO in text.lower() for text in found.texts())
        return _pyspf_records(name, found)


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
