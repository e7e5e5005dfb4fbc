"""DKIM signing of submitted mail (RFC 6376 section 5; RFC 8463 for Ed25519).

Only mail from an authenticated session whose single author (From) domain is one of
`[dkim_sign] domains` is signed, with d= that domain; the signature goes on top of the
message as it will be relayed (our Authentication-Results and Received included, though
not signed: they are not in h=).
"""

from __future__ import annotations

from dataclasses import dataclass

from arproxy.signing.keys import SigningKey
from arproxy.signing.signature import (
    Body,
    Fields,
    body_hash,
    header_list,
    select,
    sign_field,
)

DKIM_SIGNATURE = b"DKIM-Signature"


@dataclass(frozen=True)
class DkimSigner:
    """`domains`: lower-case A-labels signed for; `headers`: the field names to sign when
    present (From is also over-signed, RFC 6376 section 8.15); `canonicalization`:
    the c= value, e.g. b"relaxed/relaxed"."""

    domains: frozenset[str]
    selector: str
    key: SigningKey
    headers: tuple[str, ...]
    canonicalization: bytes = b"relaxed/relaxed"

    def signs_for(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def signature(self, fields: Fields, body: bytes | Body, domain: str, timestamp: int) -> bytes:
        """The DKIM-Signature field (ending in CRLF) for the message read into `fields`
        and `body`, with d=`domain` and t=`timestamp` (seconds since the epoch)."""
        names = header_list(fields, self.headers, oversign=("From",))
        tags = [
            (b"v", b"1"),
            (b"a", self.key.algorithm),
            (b"c", self.canonicalization),
            (b"d", domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
            (b"t", str(timestamp).encode("ascii")),
            (b"h", b":".join(names)),
            (b"bh", body_hash(body, self.canonicalization)),
        ]
        return sign_field(
            DKIM_SIGNATURE, tags, select(fields, names), self.canonicalization, self.key
        )
