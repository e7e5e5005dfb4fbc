"""DMARC policy discovery (RFC 7489 section 6.6.3) through our resolver, and the
organizational domain (section 3.2) from the Public Suffix List.

The list is the bundled, offline copy of publicsuffixlist, loaded on first use (once per
process: read-only data, the same in every worker), never at import.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from arproxy.checks.base import Disposition
from arproxy.checks.dmarc.record import DmarcRecord, is_dmarc_record, parse_record
from arproxy.dns import Resolver, Status
from arproxy.names import MAX_NAME_OCTETS


@functools.cache
def public_suffixes() -> PublicSuffixList:
    """The Public Suffix List, loaded once. Its default "*" rule (accept_unknown) makes
    an unlisted TLD such as .test a public suffix, so sub.example.test belongs to
    example.test."""
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """Section 3.2: the public suffix plus one label; a public suffix is its own.

    Cached per worker: a pure function of the domain while the list stays the same (it is
    loaded once per process), asked three times a message (discovery and alignment) for
    the same few senders' domains."""
    private = public_suffixes().privatesuffix(domain)
    return private if isinstance(private, str) else domain


class PolicyTempError(Exception):
    """A DNS lookup of the policy failed temporarily: temperror (section 11.2)."""


@dataclass(frozen=True)
class DiscoveredPolicy:
    record: DmarcRecord
    domain: str  # where the record was found
    from_org_domain: bool  # found by the fallback of step 3: sp= applies

    def requested(self) -> Disposition:
        """Section 6.3 sp: the policy for subdomains is sp=, or p= when sp= is absent."""
        if self.from_org_domain and self.record.sp is not None:
            return self.record.sp
        return self.record.p


async def discover_policy(author: str, dns: Resolver) -> DiscoveredPolicy | None:
    """Section 6.6.3; None when no policy applies (no record, or several: step 5).

    Raise PolicyTempError or RecordError.
    """
    records = await _dmarc_records(author, dns)
    org_domain = organizational_domain(author)
    from_org_domain = not records and org_domain != author
    if from_org_domain:
        records = await _dmarc_records(org_domain, dns)
    if len(records) != 1:
        return None
    found_at = org_domain if from_org_domain else author
    return DiscoveredPolicy(parse_record(records[0]), found_at, from_org_domain)


async def _dmarc_records(domain: str, dns: Resolver) -> list[str]:
    name = f"_dmarc.{domain}"
    if len(name) > MAX_NAME_OCTETS:
        return []  # a name that long cannot exist in the DNS
    lookup = await dns.lookup(name, "TXT")
    if lookup.status is Status.TEMPFAIL:
        raise PolicyTempError(f"{name} TXT: {lookup.reason}")
    texts = (text.decode("utf-8", errors="replace") for text in lookup.texts())
    return [text for text in texts if is_dmarc_record(text)]
