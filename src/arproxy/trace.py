"""Our Received: trace field (RFC 5321 section 4.4, RFC 3848 protocol names).

Everything in it that a client chose (HELO name, recipient) is written only when it
is syntactically what the grammar allows at that spot; otherwise it is left out, so
a hostile value can never add a field or a line to the header.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

_LDH_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# A mailbox we are willing to echo in "for <...>": printable ASCII, no angle
# brackets or whitespace, nothing that could close the path or fold the line.
_SAFE_MAILBOX = re.compile(r"[!#-;=?-~]{1,254}@[A-Za-z0-9.\-\[\]:]{1,255}")


@dataclass(frozen=True)
class TraceInfo:
    client_ip: str
    helo: str | None
    esmtp: bool
    tls: bool
    authenticated: bool
    by_host: str
    queue_id: str
    recipients: tuple[str, ...]
    when: datetime
    smtputf8: bool = False  # MAIL FROM carried SMTPUTF8 (RFC 6531)


def address_literal(ip: str) -> str:
    parsed = ipaddress.ip_address(ip)
    return f"[IPv6:{parsed.compressed}]" if parsed.version == 6 else f"[{parsed}]"


def helo_is_presentable(helo: str | None) -> bool:
    """A HELO argument that RFC 5321's Domain or address-literal grammar accepts."""
    if not helo:
        return False
    if _LDH_DOMAIN.fullmatch(helo):
        return True
    if helo.startswith("[") and helo.endswith("]"):
        return _is_address_literal_body(helo[1:-1])
    return False


def _is_address_literal_body(inner: str) -> bool:
    """RFC 5321 section 4.1.3: ``IPv4-address-literal`` is the bare dotted quad;
    ``IPv6-address-literal`` is ``"IPv6:" IPv6-addr`` (the tag is an ABNF string, so
    case-insensitive, RFC 5234 section 2.3). An IPv6 address without the tag, an IPv4
    address behind it, and a zone index (``%eth0``, in no RFC 5321 form) are not literals.
    """
    tag, colon, rest = inner.partition(":")
    if colon and tag.lower() == "ipv6":
        return _parses_as(rest, ipaddress.IPv6Address)
    return _parses_as(inner, ipaddress.IPv4Address)


def _parses_as(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    if "%" in text:  # Python accepts a scope id ("fe80::1%eth0"); RFC 5321 has none
        return False
    try:
        kind(text)
    except ValueError:
        return False
    return True


def protocol_name(info: TraceInfo) -> str:
    """The WITH protocol: RFC 3848's SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, and for a
    transaction whose MAIL carried SMTPUTF8 RFC 6531 section 3.7.3's UTF8SMTP,
    UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA (SMTPUTF8 is only reachable over EHLO)."""
    if not info.esmtp:
        return "SMTP"
    base = "UTF8SMTP" if info.smtputf8 else "ESMTP"
    return base + ("S" if info.tls else "") + ("A" if info.authenticated else "")


def received_field(info: TraceInfo) -> bytes:
    literal = address_literal(info.client_ip)
    from_domain = info.helo if helo_is_presentable(info.helo) else literal
    lines = [
        f"Received: from {from_domain} ({literal})",
        f"\tby {info.by_host} (arproxy) with {protocol_name(info)} id {info.queue_id}",
    ]
    stamp = format_datetime(info.when)
    if len(info.recipients) == 1 and _SAFE_MAILBOX.fullmatch(info.recipients[0]):
        # Only a single recipient is named: listing several would disclose Bcc's.
        lines.append(f"\tfor <{info.recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
