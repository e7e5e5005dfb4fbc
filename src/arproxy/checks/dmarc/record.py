"""The DMARC policy record (RFC 7489 sections 6.3, 6.4, 6.6.3 step 6): its tags, parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from arproxy.checks.base import Disposition
from arproxy.checks.dmarc.result import AlignmentMode

_DISPOSITIONS: dict[str, Disposition] = {
    "none": "none",
    "quarantine": "quarantine",
    "reject": "reject",
}
# Section 6.4: the record starts with the v tag, whose value is "DMARC1" exactly (%x values
# are case-sensitive); the tag name itself is an ABNF literal, so case-insensitive.
_VERSION_TAG = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_TAG_NAME = re.compile(r"[a-z][a-z0-9_]*")  # RFC 6376 section 3.2, which section 6.4 adopts
_TAG_WHITE_SPACE = " \t\r\n"
# Section 6.4 dmarc-uri: an RFC 3986 URI with an optional size limit; commas and "!" inside
# the URI must be %-encoded (section 6.2), so neither appears unencoded in the URI itself.
_REPORT_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?#\[\]@$&'()*+=-]|%[0-9A-Fa-f]{2})+"
    r"(?:![0-9]+[kmgtKMGT]?)?"
)


class RecordError(ValueError):
    """A DMARC record that cannot be applied: a permerror (section 11.2)."""


@dataclass(frozen=True)
class DmarcRecord:
    p: Disposition
    sp: Disposition | None = None
    adkim: AlignmentMode = "r"
    aspf: AlignmentMode = "r"
    pct: int | None = None


def is_dmarc_record(text: str) -> bool:
    """Section 6.6.3 steps 2 and 4: only records starting with v=DMARC1 are DMARC records."""
    return _VERSION_TAG.match(text) is not None


def parse_record(text: str) -> DmarcRecord:
    """The tags of a DMARC record (one that `is_dmarc_record`); raise RecordError.

    Unknown tags are ignored (section 6.3). An invalid adkim, aspf or pct takes the
    default: section 6.6.3 makes only an invalid p or sp spoil the record, and its step 6
    turns that into p=none when rua= names a valid report URI, else no DMARC processing.
    """
    tags = _tag_list(text)
    p = _disposition(tags.get("p"))
    sp = _disposition(tags.get("sp"))
    adkim, aspf, pct = _mode(tags.get("adkim")), _mode(tags.get("aspf")), _percent(tags.get("pct"))
    if p is None or ("sp" in tags and sp is None):
        if not _has_valid_report_uri(tags.get("rua")):
            raise RecordError("no valid p= (or an invalid sp=) and no valid rua= (6.6.3 step 6)")
        return DmarcRecord("none", None, adkim, aspf, pct)
    return DmarcRecord(p, sp, adkim, aspf, pct)


def _tag_list(text: str) -> dict[str, str]:
    """RFC 6376 section 3.2 tag=value pairs; a malformed or repeated tag spoils the list."""
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        if not spec.strip(_TAG_WHITE_SPACE):
            continue  # the empty spec after a trailing ";"
        name, equals, value = spec.partition("=")
        name = name.strip(_TAG_WHITE_SPACE).lower()
        if not equals or not _TAG_NAME.fullmatch(name):
            raise RecordError(f"malformed tag {spec.strip(_TAG_WHITE_SPACE)[:40]!r}")
        if name in tags:
            raise RecordError(f"tag {name}= appears twice")
        tags[name] = value.strip(_TAG_WHITE_SPACE)
    return tags


def _disposition(value: str | None) -> Disposition | None:
    return None if value is None else _DISPOSITIONS.get(value.lower())


def _mode(value: str | None) -> AlignmentMode:
    return "s" if value is not None and value.lower() == "s" else "r"


def _percent(value: str | None) -> int | None:
    if value is None or not (1 <= len(value) <= 3 and value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= 100 else None


def _has_valid_report_uri(value: str | None) -> bool:
    if value is None:
        return False
    uris = (uri.strip(_TAG_WHITE_SPACE) for uri in value.split(","))
    return any(_REPORT_URI.fullmatch(uri) for uri in uris)
