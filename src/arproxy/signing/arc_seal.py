"""ARC sealing (RFC 8617): one ARC set on top of every relayed message.

The set is ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results (top to
bottom, section 4.1 / 5.1), instance i = the highest existing instance + 1:

- AAR (section 4.1.1): "i=N; " then our Authentication-Results field's payload exactly
  (same authserv-id, same results);
- AMS (section 4.1.2): a DKIM-style signature (no v=, i= is the instance) over the
  fields RFC 6376 section 5.4.1 recommends and the DKIM-Signature fields present; never
  ARC fields nor Authentication-Results (downstream ADMDs may remove the latter);
- AS (section 4.1.3): over the ARC sets 1..N in instance order (AAR, AMS, AS), relaxed
  header canonicalisation, with cv= the state of the chain found on the message: none
  for instance 1, else pass or fail (section 5.1). A failed chain's new seal covers only
  its own set (section 5.1.2).

No seal is added when the most recent seal already says cv=fail (the chain ended,
section 5.1.1), or when the instance would exceed 50 (section 4.2.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from arproxy.signing.keys import SigningKey
from arproxy.signing.signature import (
    RECOMMENDED_FIELDS,
    Body,
    Fields,
    body_hash,
    header_list,
    select,
    sign_field,
)

MAX_INSTANCE = 50  # RFC 8617 section 4.2.1
ARC_SEAL = b"ARC-Seal"
ARC_MESSAGE_SIGNATURE = b"ARC-Message-Signature"
ARC_AUTHENTICATION_RESULTS = b"ARC-Authentication-Results"
_SET_ORDER = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*([0-9]+)\s*(?:;|$)", re.IGNORECASE)
_CV = re.compile(rb"(?:^|;)\s*cv\s*=\s*([a-zA-Z]+)\s*(?:;|$)", re.IGNORECASE)
_WSP_CRLF = re.compile(rb"\r\n[ \t]")
RELAXED = b"relaxed/relaxed"  # the only canonicalisation of ARC (section 4.1.3)


@dataclass
class Chain:
    """The ARC fields found on a message, by instance: {i: {lower name: [(name, value)]}}.

    `latest` is the highest instance (0: no chain); `latest_cv` the cv= of its seal.
    """

    sets: dict[int, dict[bytes, list[tuple[bytes, bytes]]]] = field(default_factory=dict)
    broken: bool = False  # an ARC field without a readable instance

    @property
    def latest(self) -> int:
        return max(self.sets, default=0)

    @property
    def latest_cv(self) -> bytes | None:
        seals = self.sets.get(self.latest, {}).get(b"arc-seal", [])
        if len(seals) != 1:
            return None
        found = _CV.search(_WSP_CRLF.sub(b" ", seals[0][1]).strip())
        return found.group(1).lower() if found else None

    def complete(self) -> bool:
        """Instances 1..latest, each with exactly one field of each kind (section 4.2)."""
        if self.broken or sorted(self.sets) != list(range(1, self.latest + 1)):
            return False
        return all(
            len(fields.get(kind, [])) == 1 for fields in self.sets.values() for kind in _SET_ORDER
        )

    def in_order(self) -> list[tuple[bytes, bytes]]:
        """The sets' fields for the seal's hash: instance 1 first, AAR, AMS, AS each."""
        return [self.sets[i][kind][0] for i in sorted(self.sets) for kind in _SET_ORDER]


def read_chain(fields: Fields) -> Chain:
    """The ARC fields of the message read into `fields`."""
    chain = Chain()
    for name, value in fields:
        lower = bytes(name.lower())
        if lower not in _SET_ORDER:
            continue
        unfolded = _WSP_CRLF.sub(b" ", value).strip()
        found = _INSTANCE.search(unfolded)
        if found is None or not 1 <= int(found.group(1)) <= MAX_INSTANCE:
            chain.broken = True
            continue
        by_kind = chain.sets.setdefault(int(found.group(1)), {})
        by_kind.setdefault(lower, []).append((name, value))
    return chain


@dataclass(frozen=True)
class ArcSealer:
    """The sealing ADMD's d=, s= and key; `headers` the fields the AMS signs if present."""

    domain: str
    selector: str
    key: SigningKey
    headers: tuple[str, ...] = (*RECOMMENDED_FIELDS, "DKIM-Signature")

    def seal(
        self,
        fields: Fields,
        body: bytes | Body,
        chain: Chain,
        cv: bytes,
        our_payload: bytes,
        timestamp: int,
    ) -> list[bytes]:
        """The new ARC set, fields top to bottom (AS, AMS, AAR), each ending in CRLF.

        `fields`/`body`: the message as relayed (read_for_signing); `chain`: its ARC
        fields; `cv`: b"none", b"pass" or b"fail"; `our_payload`: our
        Authentication-Results field's value after "Authentication-Results:" and its
        white space, CRLF included. Raises ValueError on an impossible request.
        """
        instance = chain.latest + 1
        if instance > MAX_INSTANCE:
            raise ValueError(f"ARC instance {instance} over {MAX_INSTANCE}")
        if (cv == b"none") != (instance == 1):
            raise ValueError(f"cv={cv.decode()} at i={instance}")  # section 4.1.3
        i = str(instance).encode("ascii")
        aar = (ARC_AUTHENTICATION_RESULTS, b" i=" + i + b"; " + our_payload)
        ams = self._message_signature(fields, body, i, timestamp)
        previous = chain.in_order() if cv != b"fail" else []  # section 5.1.2
        seal_tags = [
            (b"i", i),
            (b"a", self.key.algorithm),
            (b"t", str(timestamp).encode("ascii")),
            (b"cv", cv),
            (b"d", self.domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
        ]
        seal = sign_field(ARC_SEAL, seal_tags, [*previous, aar, ams], RELAXED, self.key)
        return [seal, ams[0] + b":" + ams[1], aar[0] + b":" + aar[1]]

    def _message_signature(
        self, fields: Fields, body: bytes | Body, i: bytes, timestamp: int
    ) -> tuple[bytes, bytes]:
        names = header_list(fields, self.headers, oversign=("From",))
        tags = [
            (b"i", i),
            (b"a", self.key.algorithm),
            (b"c", RELAXED),
            (b"d", self.domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
            (b"t", str(timestamp).encode("ascii")),
            (b"h", b":".join(names)),
            (b"bh", body_hash(body, RELAXED)),
        ]
        whole = sign_field(ARC_MESSAGE_SIGNATURE, tags, select(fields, names), RELAXED, self.key)
        return ARC_MESSAGE_SIGNATURE, whole[len(ARC_MESSAGE_SIGNATURE) + 1 :]


def key_names(chain: Chain) -> Sequence[str]:
    """The key record names (s._domainkey.d) the chain's signatures and seals need."""
    found: list[str] = []
    tag = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)", re.IGNORECASE)
    for by_kind in chain.sets.values():
        for kind in (b"arc-message-signature", b"arc-seal"):
            for _, value in by_kind.get(kind, []):
                tags = {
                    m.group(1).lower(): m.group(2) for m in tag.finditer(_WSP_CRLF.sub(b" ", value))
                }
                if b"d" in tags and b"s" in tags:
                    name = f"{tags[b's'].decode('ascii', 'replace')}._domainkey." + tags[
                        b"d"
                    ].decode("ascii", "replace")
                    if name.lower() not in found:
                        found.append(name.lower())
    return found
