"""Our Received: trace field (RFC 5321 section 4.4, RFC 3848 protocol names).

Everything in it that a client chose (HELO name, recipient) is written only when it
is syntactically what the grammar allows at that spot; otherwise it is left out, so
a hostile value can never add a field or a line to the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from arproxy import names

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
    """The client address as an RFC 5321 section 4.1.3 address literal."""
    return names.format_address_literal(ip)


def helo_is_presentable(helo: str | None) -> bool:
    """A HELO argument that RFC 5321's Domain or address-literal grammar accepts."""
    if not helo:
        return False
    return names.is_host_name(helo) or names.parse_address_literal(helo) is not None


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
