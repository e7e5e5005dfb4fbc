"""The structure of an Authenticated Received Chain (RFC 8617 section 5.2 steps 1 to 3),
read from our header reader's fields before any DNS lookup or cryptography.

Every rule here makes the chain `fail`: more than 50 ARC sets (section 4.2.1, i= ranges
over 1..50), a field without a usable instance tag, a set without exactly one field of
each kind (5.2 step 3.1), instances that are not 1..N without gaps or repetition (3.2),
a cv= of fail anywhere, none at i>1 or anything but none at i=1 (step 2 and 3.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from arproxy.checks.dkim.types import parse_tags
from arproxy.header import Header

MAX_SETS = 50  # RFC 8617 section 4.2.1: "The 'i' tag value can range from 1-50"
SEAL = "arc-seal"
SIGNATURE = "arc-message-signature"
RESULTS = "arc-authentication-results"
ARC_FIELDS = (SEAL, SIGNATURE, RESULTS)

# RFC 8617 section 4.1.1: AAR = "i=" instance ";" authres-payload (RFC 8601's).
_AAR_INSTANCE = re.compile(rb"\A[ \t]*i[ \t]*=[ \t]*([0-9]{1,3})[ \t]*;(.*)\Z", re.DOTALL)
_DIGITS = re.compile(rb"[0-9]{1,3}")


class ChainError(Exception):
    """The chain's structure is invalid: its status is fail (RFC 8617 section 5.2)."""


@dataclass(frozen=True)
class ArcSet:
    """One ARC set: its instance, the tags of its seal and message signature, and the
    payload of its ARC-Authentication-Results after ``i=N;`` (unfolded)."""

    instance: int
    seal: dict[bytes, bytes]
    signature: dict[bytes, bytes]
    results: bytes


def has_arc_fields(header: Header) -> bool:
    return any(field.lower_name in ARC_FIELDS for field in header.fields)


def read_chain(header: Header) -> tuple[ArcSet, ...]:
    """The ARC sets of the message, oldest (i=1) first; () when it has no ARC field.

    Raise ChainError (the chain fails) for every structural rule of RFC 8617 section 5.2
    steps 1 to 3 listed in the module docstring."""
    found: dict[tuple[int, str], dict[bytes, bytes] | bytes] = {}
    count = 0
    for field in header.fields:
        name = field.lower_name
        if name not in ARC_FIELDS:
            continue
        count += 1
        if count > 3 * MAX_SETS:
            raise ChainError(f"more than {MAX_SETS} ARC sets")
        instance, content = _instance_of(name, field.unfolded())
        if instance > MAX_SETS:
            raise ChainError(f"ARC instance {instance} over the limit of {MAX_SETS}")
        if (instance, name) in found:
            raise ChainError(f"duplicate {_title(name)} for i={instance}")  # step 3.1
        found[(instance, name)] = content
    if not found:
        return ()
    newest = max(instance for instance, _ in found)
    newest_seal = found.get((newest, SEAL))
    if isinstance(newest_seal, dict) and newest_seal.get(b"cv", b"").lower() == b"fail":
        # Step 2: a chain its last sealer already judged failed stays failed.
        raise ChainError(f"the newest ARC-Seal (i={newest}) says cv=fail")
    sets = tuple(_arc_set(found, instance) for instance in range(1, newest + 1))
    for arc_set in sets:
        _check_cv(arc_set)
    return sets


def _instance_of(name: str, value: bytes) -> tuple[int, dict[bytes, bytes] | bytes]:
    """The field's i= (1..999 read, the limit checked by the caller) and its content."""
    if name == RESULTS:
        match = _AAR_INSTANCE.match(value)
        if match is None:
            raise ChainError("ARC-Authentication-Results without a valid i= tag")
        return _instance_number(match.group(1)), match.group(2).strip()
    tags = parse_tags(value)
    if tags is None:
        raise ChainError(f"{_title(name)} syntax error")
    raw = tags.get(b"i")
    if raw is None or _DIGITS.fullmatch(raw.strip()) is None:
        raise ChainError(f"{_title(name)} without a valid i= tag")
    return _instance_number(raw.strip()), tags


def _instance_number(raw: bytes) -> int:
    instance = int(raw)
    if instance < 1:
        raise ChainError("ARC instance 0")  # RFC 8617 section 4.2.1: 1 to 50
    return instance


def _arc_set(found: dict[tuple[int, str], dict[bytes, bytes] | bytes], instance: int) -> ArcSet:
    seal = found.get((instance, SEAL))
    signature = found.get((instance, SIGNATURE))
    results = found.get((instance, RESULTS))
    if not any(part is not None for part in (seal, signature, results)):
        raise ChainError(f"ARC instances not a sequence from 1: i={instance} missing")
    if not isinstance(seal, dict) or not isinstance(signature, dict) or results is None:
        raise ChainError(f"incomplete ARC set i={instance}")  # step 3.1
    assert isinstance(results, bytes)
    return ArcSet(instance, seal, signature, results)


def _check_cv(arc_set: ArcSet) -> None:
    """Step 3.3: cv=none at i=1, cv=pass at every later instance, never cv=fail."""
    cv = arc_set.seal.get(b"cv", b"").strip().lower()
    expected = b"none" if arc_set.instance == 1 else b"pass"
    if cv != expected:
        shown = cv.decode("ascii", "replace")[:10] or "(missing)"
        raise ChainError(f"ARC-Seal i={arc_set.instance} has cv={shown}, not {expected.decode()}")


def _title(name: str) -> str:
    return {SEAL: "ARC-Seal", SIGNATURE: "ARC-Message-Signature"}.get(
        name, "ARC-Authentication-Results"
    )
