"""dkim (RFC 6376; RFC 8601 section 2.7.1; RFC 6008): verify every signature of the message.

- `verify`: the check, and the rules checked before any DNS lookup;
- `keys`: key records fetched through our resolver and judged (RFC 6376 6.1.2, RFC 8301);
- `dkimpy`: dkimpy's verifier off the event loop, its verdicts turned into outcomes;
- `types`: the result and the values passed between them.
"""

from arproxy.checks.dkim.dkimpy import dkimpy_message
from arproxy.checks.dkim.types import DkimResult
from arproxy.checks.dkim.verify import CHECK, DEFAULT_MAX_SIGNATURES, check, header_b_prefixes

__all__ = [
    "CHECK",
    "DEFAULT_MAX_SIGNATURES",
    "DkimResult",
    "check",
    "dkimpy_message",
    "header_b_prefixes",
]
