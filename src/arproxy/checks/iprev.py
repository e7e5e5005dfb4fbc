"""iprev (RFC 8601 section 3): does the client's reverse DNS name map back to it?

PTR of the client address, then the forward A/AAAA of at most `max_names` of the
names returned (section 7.4: reverse lookups are a DoS vector, so bounded), all
through the one resolver and its cache. Starts at connect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from arproxy import names
from arproxy.authres import Property, ResInfo
from arproxy.checks import eager
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.dns import Lookup, Resolver, Status, reverse_name

DEFAULT_MAX_NAMES = 10


@dataclass(frozen=True)
class IprevResult:
    value: Value
    ip: str
    name: str | None = None  # the PTR name that mapped back (pass only)
    reason: str = ""

    method = "iprev"

    def to_resinfo(self) -> ResInfo:
        # A PTR name is written in a comment only when it is a plain host name (RFC 1123
        # section 2.1): the reverse zone belongs to whoever holds the address, not to us.
        comment = self.name if self.name and names.is_host_name(self.name) else None
        return ResInfo(
            method="iprev",
            result=self.value.value,
            properties=(Property("policy", "iprev", self.ip, comment=comment),),
        )


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client address, an IPv4-mapped IPv6 address taken as the IPv4 it is."""
    return names.client_address(ip)


async def check_iprev(
    ctx: CheckContext, dns: Resolver, *, max_names: int = DEFAULT_MAX_NAMES
) -> tuple[IprevResult, ...]:
    address = client_address(ctx.client_ip)
    ip = str(address)
    ptr = await dns.lookup(reverse_name(ip), "PTR")
    if ptr.status is Status.TEMPFAIL:
        return (IprevResult(Value.TEMPERROR, ip, reason=f"PTR lookup: {ptr.reason}"),)
    # Sorted, so which names are tried (and logged) does not depend on answer order.
    names = sorted(ptr.names())[:max_names]
    if not names:
        # Section 3: no PTR data published -> permerror, not fail.
        return (IprevResult(Value.PERMERROR, ip, reason="no PTR record"),)
    rtype = "A" if address.version == 4 else "AAAA"
    forward = await eager.gather(*(dns.lookup(name, rtype) for name in names))
    for name, lookup in zip(names, forward, strict=True):
        if _maps_back(lookup, address, ip):
            return (IprevResult(Value.PASS, ip, name=name),)
    if any(lookup.status is Status.TEMPFAIL for lookup in forward):
        return (IprevResult(Value.TEMPERROR, ip, reason="forward lookup failed temporarily"),)
    return (IprevResult(Value.FAIL, ip, reason=f"no name of {len(names)} maps back"),)


def _maps_back(
    lookup: Lookup, address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str
) -> bool:
    """Whether an address of `lookup` is `address` (`text`: its str). An answer written as
    `text` is that address without parsing it (the usual case: one parse fewer a message);
    any other spelling is parsed and compared."""
    for record in lookup.names():
        if record == text:
            return True
        try:
            if ipaddress.ip_address(record) == address:
                return True
        except ValueError:
            continue
    return False


def _on_timeout(ctx: CheckContext) -> tuple[IprevResult, ...]:
    return (IprevResult(Value.TEMPERROR, str(client_address(ctx.client_ip)), reason="timeout"),)


CHECK = Check("iprev", Stage.CONNECT, check_iprev, on_timeout=_on_timeout)
