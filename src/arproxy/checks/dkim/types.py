"""The DKIM check's shared types: its result, a signature's tags, a key, and the early
stop `Unverifiable` that every step may return. No DNS, no dkimpy verification."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import dkim
import dkim.util

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Value

_WHITESPACE = re.compile(rb"\s+")

# dkimpy parses hostile input and, besides its own DKIMException, lets these escape on
# malformed data: binascii.Error (a ValueError) for bad base64, ValueError from int() of an
# empty l=, IndexError from its i=/d= check when i= equals d=, AssertionError from its ASN.1
# reader on a mangled key.
DKIMPY_INPUT_ERRORS = (dkim.DKIMException, ValueError, LookupError, AssertionError)


@dataclass(frozen=True)
class DkimResult:
    """The outcome of one signature; `value` NONE (no signature) carries nothing else.

    The tag values are the signature's own, decoded from UTF-8 with replacement: they are
    attacker-controlled and `to_resinfo` writes only those the formatter can carry.
    """

    value: Value
    domain: str | None = None  # d=
    identity: str | None = None  # i=
    selector: str | None = None  # s=
    algorithm: str | None = None  # a=
    b_prefix: str | None = None  # header.b: enough of b= to be unique in the message
    keysize: int | None = None
    reason: str | None = None  # ours, never the signer's text

    method = "dkim"

    def to_resinfo(self) -> ResInfo:
        if self.value is Value.NONE:
            return ResInfo("dkim", Value.NONE.value)
        tags = (
            ("d", self.domain),
            ("i", self.identity),
            ("s", self.selector),
            ("a", self.algorithm),
            ("b", self.b_prefix),
        )
        # A tag value with controls or non-ASCII text is left out rather than sent to the
        # formatter, which would refuse it (FormatError) and lose the whole field.
        properties = tuple(
            Property("header", name, text)
            for name, raw in tags
            if (text := writable(raw)) is not None
        )
        return ResInfo(
            "dkim",
            self.value.value,
            reason=None if self.value is Value.PASS else writable(self.reason),
            properties=properties,
            comment=f"{self.keysize}-bit key" if self.keysize else None,
        )


def writable(text: str | None) -> str | None:
    """`text` if it is non-empty printable US-ASCII (quoting handles the rest), else None."""
    if text and text.isascii() and text.isprintable():
        return text
    return None


class Unverifiable(Exception):
    """Verification of one signature stopped early: the result to report and why.

    Not a dkimpy exception, so dkimpy lets it through when our dnsfunc raises it.
    """

    def __init__(self, value: Value, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature field: its position among them and its tags (None: unparsable)."""

    index: int
    tags: dict[bytes, bytes] | None

    def text(self, tag: bytes) -> str | None:
        if self.tags is None or tag not in self.tags:
            return None
        return self.tags[tag].decode("utf-8", "replace")

    @property
    def b_value(self) -> str | None:
        """b= without its folding white space."""
        if self.tags is None or b"b" not in self.tags:
            return None
        return _WHITESPACE.sub(b"", self.tags[b"b"]).decode("utf-8", "replace")


@dataclass(frozen=True)
class KeyQuery:
    """A signature that passed the checks made before DNS: where its key is, and its tags."""

    name: str
    tags: dict[bytes, bytes]


@dataclass(frozen=True)
class Key:
    """A key record judged usable, rewritten to the tags dkimpy reads (k=, p=)."""

    record: bytes
    keysize: int
    # dkimpy's own reading of `record` (``dkim.evaluate_pk``: key object, size, k=, whether
    # s=tlsrpt), made once when the record was judged: handed to dkimpy's verifier instead
    # of the record, which it would otherwise parse (tags, base64, ASN.1) per signature.
    evaluated: tuple[Any, int, bytes, bool] | None = field(default=None, compare=False, repr=False)


def parse_tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return None
    return tags
