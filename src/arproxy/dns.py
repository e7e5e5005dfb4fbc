"""The one DNS resolver every check uses: aiodns, a TTL cache, typed outcomes.

Checks never see a DNS exception. A query ends in exactly one `Lookup` whose
`status` says what the RFCs need to tell apart: an answer, NXDOMAIN, no data
(both "void" for SPF), or a temporary failure (SERVFAIL, refusal, timeout), which
the checks turn into temperror.

The cache is ours, bounded in size and honouring each answer's TTL; negative
answers are kept for a short fixed time. pyspf (synchronous, in a worker thread)
and dkimpy (asynchronous) are both served through `Resolver.lookup`, so there is
one place that talks to the network and one cache.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import aiodns
import aiodns.error
import pycares

from arproxy.config import DnsConfig, HostPort

log = logging.getLogger("arproxy.dns")

RecordData = str | bytes | tuple[int, str]

# Negative answers and failures: how long they may be reused.
NEGATIVE_TTL = 60
# A failure is never cached: the next message asks again.
MAX_TTL = 86400  # answers are re-asked at least daily whatever their TTL says
SUPPORTED_TYPES = ("A", "AAAA", "PTR", "TXT", "MX", "CNAME")


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
    # A name c-ares will not even send (a space, "@", a control character) cannot
    # exist in the DNS: asking again would never help, so it is not a tempfail.
    pycares.errno.ARES_EBADNAME: Status.NXDOMAIN,
}


class Resolver:
    """aiodns behind a bounded TTL cache; one per worker process and event loop."""

    def __init__(
        self,
        nameservers: Sequence[HostPort] = (),
        timeout: float = 2.0,
        *,
        tries: int = 2,
        cache_size: int = 10_000,
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
        self._cache: OrderedDict[tuple[str, str], tuple[float, Lookup]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Lookup]] = {}
        self.queries_sent = 0

    @classmethod
    def from_config(cls, config: DnsConfig) -> Resolver:
        return cls(config.nameservers, config.timeout)

    async def lookup(self, name: str, rtype: str) -> Lookup:
        """Resolve `name`/`rtype` through the cache; never raises for DNS trouble."""
        if rtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported record type {rtype!r}")
        key = (name.lower().rstrip("."), rtype)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
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
        try:
            result = await asyncio.wait_for(self._resolver.query_dns(name, rtype), self.timeout)
        except TimeoutError:
            return Lookup(name, rtype, Status.TEMPFAIL, reason="timeout")
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
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

    async def close(self) -> None:
        await self._resolver.close()


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


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name for a PTR query."""
    return ipaddress.ip_address(ip).reverse_pointer
