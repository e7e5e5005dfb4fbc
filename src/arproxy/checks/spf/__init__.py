"""spf (RFC 7208; RFC 8601 section 2.7.2): may the client use the HELO and MAIL FROM domains?

Two checks: the HELO identity starts at EHLO (RFC 7208 section 2.3), the MAIL FROM identity
at MAIL (section 2.4). pyspf evaluates the records: parsing, macros, and the processing
limits of section 4.6.4 (10 DNS-querying terms, 2 void lookups, 10 MX or PTR names per
term), with `strict=True` so that every limit gives permerror as the RFC says.

- `rules`: the method's rules (identities, result values, the local `policy` rule, which
  identity's result is reported), pure;
- `bridge`: pyspf in a worker thread, its DNS through the event loop's resolver;
- `check`: the two checks the runner schedules.
"""

from arproxy.checks.spf.bridge import (
    DEFAULT_QUERY_TIME,
    CheckAborted,
    DnsBridge,
    evaluate_blocking,
)
from arproxy.checks.spf.check import HELO_CHECK, MAILFROM_CHECK, check_helo, check_mailfrom
from arproxy.checks.spf.rules import (
    SpfRequest,
    SpfResult,
    UnexpectedSpfResult,
    identity_domain,
    keep_reported,
    reported,
    spf_value,
)

__all__ = [
    "DEFAULT_QUERY_TIME",
    "HELO_CHECK",
    "MAILFROM_CHECK",
    "CheckAborted",
    "DnsBridge",
    "SpfRequest",
    "SpfResult",
    "UnexpectedSpfResult",
    "check_helo",
    "check_mailfrom",
    "evaluate_blocking",
    "identity_domain",
    "keep_reported",
    "reported",
    "spf_value",
]
