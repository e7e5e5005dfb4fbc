"""ARC (RFC 8617) verification: one `arc` result per message.

- `chain`: the chain's structure, RFC 8617 section 5.2 steps 1 to 3 (no DNS, no crypto);
- `verify`: the check: keys through our resolver, dkimpy's ARC code for the hashing and
  RSA, steps 4 to 7 (the status and header.oldest-pass);
- `result`: the result as section 10.1 registers it, and the newest hop's sealer and
  results for local policy (the trusted-sealer override, arproxy.policy).
"""

from arproxy.checks.arc.chain import MAX_SETS, ArcSet, ChainError, read_chain
from arproxy.checks.arc.result import ArcResult
from arproxy.checks.arc.verify import CHECK, check, oldest_pass

__all__ = [
    "CHECK",
    "MAX_SETS",
    "ArcResult",
    "ArcSet",
    "ChainError",
    "check",
    "oldest_pass",
    "read_chain",
]
