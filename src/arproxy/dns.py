"""The one DNS resolver every check uses: aiodns (and dnspython), a TTL cache, typed outcomes.

Checks never see a DNS exception. A query ends in exactly one `Lookup` whose
`status` says what the RFCs need to tell apart: an answer, NXDOMAIN, no data
(both "void" for SPF), or a temporary failure (SERVFAIL, refusal, timeout), which
the checks turn into temperror.

The cache is ours, bounded in size and honouring each answer's TTL; negative
answers are kept for a short fixed time. pyspf (synchronous, in a worker thread)
and dkimpy (asynchronous) are both served through `Resolver.lookup`, so there is
one place that talks to the network and one cache.

One resolver, two transports. c-ares (aiodns) refuses to send names holding `:` `/` `%`
`+` `=` space and others ("Misformatted domain name"), and reads a backslash as an escape; all of
these are legal in the DNS (RFC 2181 section 11: a label is any octets) and in SPF (RFC 7208
section 7.1: a domain-spec may hold any visible character), and SPF macros build them from
a sender's local-part (`bob+tag`, SRS `SRS0=...=bob`). Such names go out through dnspython,
which sends any octets, to the same nameservers with the same time bound, through the same
cache and in-flight sharing. Only a name the DNS cannot carry at all (an empty label, a
label over 63 octets, a name over 253: RFC 1035 sections 2.3.4 and 3.1) is answered
NXDOMAIN without a query: no such name can exist.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import aiodns
import aiodns.error
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
import pycares

from arproxy.config import DnsConfig, HostPort
from arproxy.names import MAX_LABEL_OCTETS, MAX_NAME_OCTETS, ip_address

log = logging.getLogger("arproxy.dns")

RecordData = str | bytes | tuple[int, str]

# The answer for a name no DNS can carry (`Resolver.cached`): made anew at each ask, never
# cached, and the same for the same name whatever the time.
NOT_A_DNS_NAME = "not a name the DNS can carry"
# Values derived from cached answers (`AnswerMemo`, SPF evaluations) kept per resolver.
MEMO_SIZE = 4096
# Negative answers and failures: how long they may be reused.
NEGATIVE_TTL = 60
# A failure is never cached: the next message asks again.
MAX_TTL = 86400  # answers are re-asked at least daily whatever their TTL says
SUPPORTED_TYPES = ("A", "AAAA", "PTR", "TXT", "MX", "CNAME")
# RFC 1035 section 2.3.4: 63 octets a label, 255 a name on the wire (253 in text, without
# the length octet of the first label and the root).
# What c-ares sends as written: letters, digits, "-" and "_" (c-ares reads "\" as an
# escape and refuses most other characters). Every other name goes through dnspython.
_C_ARES_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")
# DNS compares names ignoring ASCII case only (RFC 4343); str.lower() would also fold
# non-ASCII letters, which are different octets to the DNS.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Status(enum.Enum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Lookup:
    """The outcome of one query. `records` is empty unless `status` is ANSWER.

    Record data by type: A/AAAA the address text, PTR/CNAME the name without the
    trailing dot, TXT the bytes of one record with its strings joined, MX a
    (preference, exchange) pair.
    """

    name: str
    rtype: str
    status: Status
    records: tuple[RecordData, ...] = ()
    ttl: int = 0
    reason: str = ""

    @property
    def is_void(self) -> bool:
        """NXDOMAIN or NODATA: RFC 7208 section 4.6.4's "void lookup"."""
        return self.status in (Status.NXDOMAIN, Status.NODATA)

    def texts(self) -> list[bytes]:
        return [r for r in self.records if isinstance(r, bytes)]

    def names(self) -> list[str]:
        return [r for r in self.records if isinstance(r, str)]


_ARES_STATUS = {
    pycares.errno.ARES_ENOTFOUND: Status.NXDOMAIN,
    pycares.errno.ARES_ENODATA: Status.NODATA,
}


def wire_labels(name: str) -> tuple[bytes, ...] | None:
    """The labels of `name` (text, dots between labels, no trailing dot) as the octets
    the DNS carries (UTF-8), or None when no DNS name can hold it: an empty label, a label
    over 63 octets or a name over 253 (RFC 1035 section 2.3.4)."""
    try:
        labels = tuple(label.encode("utf-8", errors="surrogateescape") for label in name.split("."))
    except UnicodeEncodeError:  # a lone surrogate: no octets to send
        return None
    if any(not 0 < len(label) <= MAX_LABEL_OCTETS for label in labels):
        return None
    if sum(len(label) + 1 for label in labels) - 1 > MAX_NAME_OCTETS:
        return None
    return labels


class Resolver:
    """aiodns behind a bounded TTL cache; one per worker process and event loop."""

    def __init__(
        self,
        nameservers: Sequence[HostPort] = (),
        timeout: float = 2.0,
        *,
        tries: int = 2,
        cache_size: int = 10_000,
        memo_size: int = MEMO_SIZE,
    ) -> None:
        self.timeout = timeout
        self.tries = tries
        self.cache_size = cache_size
        servers = [_server_text(ns) for ns in nameservers]
        # c-ares retries within its own per-try timeout; an outer wait_for bounds
        # the whole query so a dead server costs `timeout`, not tries x timeout.
        self._resolver = aiodns.DNSResolver(
            nameservers=servers or None, timeout=timeout / tries, tries=tries
        )
        self._servers = tuple(nameservers)
        self._dnspython: dns.asyncresolver.Resolver | None = None  # made at first need
        self._cache: OrderedDict[tuple[str, str], tuple[float, Lookup]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Lookup]] = {}
        self.queries_sent = 0
        self.lookups = 0  # lookups asked of the cache (metrics: hit ratio)
        self.cache_hits = 0
        # Values computed from this cache's answers (checks.spf: whole SPF evaluations),
        # each valid only while every answer it read is still the cached one.
        self.memo = AnswerMemo(self, memo_size)

    @classmethod
    def from_config(cls, config: DnsConfig) -> Resolver:
        return cls(config.nameservers, config.timeout)

    async def lookup(self, name: str, rtype: str) -> Lookup:
        """Resolve `name`/`rtype` through the cache; never raises for DNS trouble.

        `name` is text, any characters, labels separated by dots. A name the DNS cannot
        carry is NXDOMAIN without a query; raise ValueError only for an unsupported type.
        """
        cached = self.cached(name, rtype)
        if cached is not None:
            return cached
        key = (name.translate(_ASCII_LOWER).removesuffix("."), rtype)
        # Concurrent checks often ask the same question (SPF and DMARC both want
        # the From domain's TXT): share one query instead of sending two. The query
        # is a task of its own, so a waiter that is cancelled (its client went
        # away) never cancels it for the others.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._query(key[0], rtype))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._query_done, key))
        return await asyncio.shield(task)

    def cached(self, name: str, rtype: str) -> Lookup | None:
        """What `lookup` would answer at once, without a query and without awaiting: the
        cached answer, NXDOMAIN for a name the DNS cannot carry, or None (not cached).

        Synchronous, for the loop thread only (SPF's cache-only evaluation). Raise
        ValueError for an unsupported type, as `lookup` does.
        """
        if rtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported record type {rtype!r}")
        key = (name.translate(_ASCII_LOWER).removesuffix("."), rtype)
        # The cache first: only names the DNS can carry are ever queried, so only they
        # are cached, and a hit needs no check of the name (`wire_labels`, the larger
        # part of a cached answer's cost).
        found = self._cache_get(key)
        if found is None and wire_labels(key[0]) is None:
            return Lookup(name, rtype, Status.NXDOMAIN, reason=NOT_A_DNS_NAME)
        self.lookups += 1  # asked of our cache (metrics: the hit ratio)
        if found is not None:
            self.cache_hits += 1
        return found

    def still_answers(self, reads: Sequence[Read]) -> bool:
        """Whether `cached` answers each (name, type) of `reads` with its recorded `Lookup`
        now: the very same cached object (not expired, not replaced), or for a name no DNS
        can carry the same synthesised NXDOMAIN (it depends on the name alone).

        Asks through `cached`, stopping at the first difference, so each ask counts in
        `lookups` / `cache_hits` exactly as the evaluation it stands for would count it.
        """
        for name, rtype, answer in reads:
            now = self.cached(name, rtype)
            if now is not answer and not (now is not None and _synthesised(now) and now == answer):
                return False
        return True

    def _query_done(self, key: tuple[str, str], task: asyncio.Future[Lookup]) -> None:
        del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            self._cache_put(key, task.result())

    def _cache_get(self, key: tuple[str, str]) -> Lookup | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, result = entry
        if expires <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return result

    def _cache_put(self, key: tuple[str, str], result: Lookup) -> None:
        if result.status is Status.TEMPFAIL:
            return
        ttl = min(result.ttl, MAX_TTL) if result.status is Status.ANSWER else NEGATIVE_TTL
        if ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, result)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _query(self, name: str, rtype: str) -> Lookup:
        self.queries_sent += 1
        # One bound for the whole query, whichever transport carries it.
        try:
            return await asyncio.wait_for(self._send(name, rtype), self.timeout)
        except TimeoutError:
            return Lookup(name, rtype, Status.TEMPFAIL, reason="timeout")

    async def _send(self, name: str, rtype: str) -> Lookup:
        if _C_ARES_NAME.fullmatch(name) is None:
            return await self._query_dnspython(name, rtype)
        try:
            result = await self._resolver.query_dns(name, rtype)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            if code == pycares.errno.ARES_EBADNAME:
                # c-ares refused to send a name the DNS can carry: the other transport.
                return await self._query_dnspython(name, rtype)
            status = _ARES_STATUS.get(code, Status.TEMPFAIL)
            reason = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
            return Lookup(name, rtype, status, reason=reason)
        wanted = pycares.__dict__[f"QUERY_TYPE_{rtype}"]
        records = [r for r in result.answer if r.type == wanted]
        if not records:
            return Lookup(name, rtype, Status.NODATA, reason="no records of that type")
        return Lookup(
            name,
            rtype,
            Status.ANSWER,
            tuple(_record_data(r.data) for r in records),
            ttl=min(r.ttl for r in records),
        )

    async def _query_dnspython(self, name: str, rtype: str) -> Lookup:
        """The query through dnspython, for a name c-ares will not send."""
        labels = wire_labels(name)
        if labels is None:  # lookup() checked; kept so this method stands on its own
            return Lookup(name, rtype, Status.NXDOMAIN, reason=NOT_A_DNS_NAME)
        qname = dns.name.Name((*labels, b""))
        try:
            resolver = self._dnspython_resolver()  # may read /etc/resolv.conf: can fail
            answer = await resolver.resolve(qname, rtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Lookup(name, rtype, Status.NXDOMAIN, reason="NXDOMAIN")
        except dns.resolver.NoAnswer:
            return Lookup(name, rtype, Status.NODATA, reason="no records of that type")
        except dns.exception.Timeout:
            return Lookup(name, rtype, Status.TEMPFAIL, reason="timeout")
        except (dns.exception.DNSException, OSError) as exc:
            # SERVFAIL, REFUSED, no server answered, no resolver configuration, no route.
            return Lookup(name, rtype, Status.TEMPFAIL, reason=str(exc) or type(exc).__name__)
        rrset = answer.rrset
        if rrset is None or not len(rrset):
            return Lookup(name, rtype, Status.NODATA, reason="no records of that type")
        records = tuple(_dnspython_data(rdata) for rdata in rrset)
        return Lookup(name, rtype, Status.ANSWER, records, ttl=rrset.ttl)

    def _dnspython_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dnspython is None:
            # The nameservers given, else the system's (as c-ares does); no cache of its
            # own (ours serves both transports), the same bound as c-ares per try.
            resolver = dns.asyncresolver.Resolver(configure=not self._servers)
            if self._servers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in self._servers
                ]
            resolver.timeout = self.timeout / self.tries
            resolver.lifetime = self.timeout
            resolver.cache = None
            self._dnspython = resolver
        return self._dnspython

    async def close(self) -> None:
        """Cancel the queries still in flight, then close the channel.

        A query outlives the waiters that asked for it (it is shared and shielded), so at
        shutdown one may still be pending, or not yet started: left alone, it would ask a
        destroyed channel after this returns and end with an error nobody reads.
        """
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._resolver.close()


# One answer a derived value read: (name as asked, type, the `Lookup` `cached` gave).
Read = tuple[str, str, Lookup]


class AnswerMemo:
    """Values computed from a resolver's cached answers alone, a bounded LRU (`size`
    entries; per worker, like the resolver that owns it).

    An entry is (value, the reads it was computed from). `get` gives the value only while
    `Resolver.still_answers(reads)` holds: then recomputing would read the same answers, so
    a pure computation gives the same value; else the entry is dropped. What may be
    memoised (nothing that reads the clock) is the caller's rule: checks.spf.bridge.
    """

    def __init__(self, resolver: Resolver, size: int = MEMO_SIZE) -> None:
        self._resolver = resolver
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[object, tuple[Read, ...]]] = OrderedDict()
        self.hits = 0  # values given (tests, diagnostics)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> object | None:
        """The value kept for `key` if every answer it read is still cached, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, reads = entry
        if not self._resolver.still_answers(reads):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: object, reads: tuple[Read, ...]) -> None:
        """Keep `value` (not None) for `key`, computed from `reads`; the oldest goes past `size`."""
        self._entries[key] = (value, reads)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every value (the next `get`s recompute)."""
        self._entries.clear()


def _synthesised(answer: Lookup) -> bool:
    return answer.status is Status.NXDOMAIN and answer.reason == NOT_A_DNS_NAME


def _server_text(server: HostPort) -> str:
    """c-ares' server syntax: "IP", "IP:PORT", or "[IPv6]:PORT"."""
    if server.port == 53:
        return server.host
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}"


def _record_data(data: object) -> RecordData:
    if isinstance(data, pycares.TXTRecordData):
        return bytes(data.data)
    if isinstance(data, pycares.ARecordData | pycares.AAAARecordData):
        return str(data.addr)
    if isinstance(data, pycares.PTRRecordData):
        return str(data.dname).rstrip(".")
    if isinstance(data, pycares.CNAMERecordData):
        return str(data.cname).rstrip(".")
    if isinstance(data, pycares.MXRecordData):
        return (int(data.priority), str(data.exchange).rstrip("."))
    raise TypeError(f"unexpected record data {data!r}")


def _dnspython_data(rdata: dns.rdata.Rdata) -> RecordData:
    """dnspython's record data in the shapes `Lookup` documents."""
    rtype = rdata.rdtype.name
    if rtype == "TXT":
        return b"".join(rdata.strings)  # type: ignore[attr-defined]
    if rtype in ("A", "AAAA"):
        return str(rdata.address)  # type: ignore[attr-defined]
    if rtype in ("PTR", "CNAME"):
        return _name_text(rdata.target)  # type: ignore[attr-defined]
    if rtype == "MX":
        return (int(rdata.preference), _name_text(rdata.exchange))  # type: ignore[attr-defined]
    raise TypeError(f"unexpected record data {rdata!r}")


def _name_text(name: dns.name.Name) -> str:
    """A name as the labels' text joined by dots (no escapes, no trailing dot), the form
    `lookup` takes, so a name read from an answer can be asked as it is."""
    return ".".join(
        label.decode("utf-8", errors="surrogateescape") for label in name.labels if label
    )


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name for a PTR query; raise ValueError for text
    that is no IP address."""
    return ip_address(ip).reverse_pointer
