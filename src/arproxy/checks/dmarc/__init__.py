"""DMARC (RFC 7489): does an identifier that SPF or DKIM authenticated align with the author?

- `evaluate`: the check (section 6.6.2), pct= sampling, several author domains;
- `author`: the author domains of the From field (section 6.6.1);
- `record`: the policy record's tags (sections 6.3, 6.4);
- `discovery`: finding the record (6.6.3) and the organizational domain (3.2);
- `alignment`: identifier alignment (3.1);
- `result`: the result as section 11.2 registers it.
"""

from arproxy.checks.dmarc.author import AuthorError, author_domains, to_a_label
from arproxy.checks.dmarc.discovery import (
    DiscoveredPolicy,
    PolicyTempError,
    discover_policy,
    organizational_domain,
)
from arproxy.checks.dmarc.evaluate import CHECK, check, evaluate, sampled, strictest
from arproxy.checks.dmarc.record import DmarcRecord, RecordError, is_dmarc_record, parse_record
from arproxy.checks.dmarc.result import AlignmentMode, DmarcResult

__all__ = [
    "CHECK",
    "AlignmentMode",
    "AuthorError",
    "DiscoveredPolicy",
    "DmarcRecord",
    "DmarcResult",
    "PolicyTempError",
    "RecordError",
    "author_domains",
    "check",
    "discover_policy",
    "evaluate",
    "is_dmarc_record",
    "organizational_domain",
    "parse_record",
    "sampled",
    "strictest",
    "to_a_label",
]
