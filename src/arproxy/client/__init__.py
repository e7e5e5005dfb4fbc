"""The mail-client side: ask a server for its authserv-id (the client procedures of
draft-kucherawy-sender-auth-caps over SMTP, IMAP and POP3), then believe only the
Authentication-Results fields that carry it (RFC 8601 section 5).

Border code (the proxy's session, checks, rewrite, relay) never imports this package.
"""

from .capabilities import (
    is_plain_authserv_id,
    parse_ehlo_keywords,
    parse_imap_capabilities,
    parse_pop3_capa,
)
from .connection import default_port, parse_target
from .dispatch import probe
from .model import (
    Authserv,
    Credentials,
    Phase,
    ProbeConnectionError,
    ProbeError,
    ProbeLoginError,
    ProbeOptions,
    ProbeProtocolError,
    ProbeResult,
    Protocol,
    Security,
)
from .output import describe, result_as_dict, result_as_text
from .probe_imap import probe_imap
from .probe_pop3 import probe_pop3
from .probe_smtp import probe_smtp
from .trusted import trusted_results

__all__ = [
    "Authserv",
    "Credentials",
    "Phase",
    "ProbeConnectionError",
    "ProbeError",
    "ProbeLoginError",
    "ProbeOptions",
    "ProbeProtocolError",
    "ProbeResult",
    "Protocol",
    "Security",
    "default_port",
    "describe",
    "is_plain_authserv_id",
    "parse_ehlo_keywords",
    "parse_imap_capabilities",
    "parse_pop3_capa",
    "parse_target",
    "probe",
    "probe_imap",
    "probe_pop3",
    "probe_smtp",
    "result_as_dict",
    "result_as_text",
    "trusted_results",
]
