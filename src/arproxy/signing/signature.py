"""The signature arithmetic shared by DKIM-Signature and ARC: body hash, header hash, b=.

RFC 6376 section 3.7: the body hash (bh=) is SHA-256 of the canonicalised body; the
signature (b=) covers the selected header fields, canonicalised, in h= order, then the
signature field itself with an empty b= value and without its final CRLF. dkimpy does
the canonicalisation (the same code its verifier runs); the key signs (OpenSSL, through
`cryptography`). The message is read by arproxy's header reader (`arproxy.header`),
never re-split by dkimpy (`checks.dkim.dkimpy.dkimpy_message`).

Pure functions of bytes: CPU only, no I/O; the caller decides on which thread they run.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from arproxy.checks.dkim.dkimpy import dkimpy_message
from arproxy.config import DKIM_SIGN_HEADERS
from arproxy.header import read_header
from arproxy.signing.keys import SigningKey

CRLF = b"\r\n"
FOLD = b"\r\n\t"
_B64_LINE = 64  # characters of b= per folded line: every line stays under 78 (RFC 5322 2.1.1)

# RFC 6376 section 5.4.1: the fields a signer SHOULD sign, when present.
RECOMMENDED_FIELDS = DKIM_SIGN_HEADERS

Fields = list[list[bytes]]  # [name as written, value after the colon with its CRLF]


def read_for_signing(message: bytes) -> tuple[Fields, bytes]:
    """The message's fields and body as arproxy reads them, every line end CRLF."""
    return dkimpy_message(message, read_header(message))


def read_fields(message: bytes) -> Fields:
    """The message's fields only, as `read_for_signing` gives them (no body copy)."""
    header = read_header(message)
    return dkimpy_message(message[: header.end], header)[0]


def header_list(fields: Fields, wanted: Sequence[str], oversign: Sequence[str]) -> list[bytes]:
    """The h= names: each wanted field as many times as it is present (RFC 6376 section
    5.4.2: signing each instance), then each `oversign` name once more, which signs the
    "null" instance below the last and so forbids adding one (section 8.15)."""
    present: dict[bytes, int] = {}
    for field_name, _ in fields:
        lower = bytes(field_name.lower())
        present[lower] = present.get(lower, 0) + 1
    names: list[bytes] = []
    for wanted_name in dict.fromkeys(name.lower().encode("ascii") for name in wanted):
        names.extend([wanted_name] * present.get(wanted_name, 0))
    names.extend(name.lower().encode("ascii") for name in oversign)
    return names


def body_hash(body: bytes | Body, canonicalization: bytes) -> bytes:
    """bh=: base64 of SHA-256 of the canonicalised body (RFC 6376 section 3.7)."""
    if isinstance(body, Body):
        return body.hash(canonicalization)
    policy = CanonicalizationPolicy.from_c_value(canonicalization)
    return base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())


class Body:
    """A message body whose bh= is computed once per body canonicalisation: the DKIM
    signature and the ARC-Message-Signature of one message share it (a 10 MB body
    costs about 0.4 s to canonicalise and hash)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._hashes: dict[bytes, bytes] = {}

    def hash(self, canonicalization: bytes) -> bytes:
        body_part = canonicalization.partition(b"/")[2] or b"simple"  # RFC 6376 3.5, c=
        if body_part not in self._hashes:
            self._hashes[body_part] = body_hash(self.data, canonicalization)
        return self._hashes[body_part]


def sign_field(
    name: bytes,
    tags: Sequence[tuple[bytes, bytes]],
    signed: Sequence[tuple[bytes, bytes]],
    canonicalization: bytes,
    key: SigningKey,
) -> bytes:
    """A complete signature field `name: tags; b=...` ending in CRLF.

    `tags` are the tags before b= (in order); `signed` the (name, value) pairs the
    signature covers, already selected and in order, values raw (after the colon, with
    their CRLF). The header canonicalisation of `canonicalization` ("relaxed/..." or
    "simple/...") is applied to them and to the field itself (RFC 6376 section 3.7).
    """
    policy = CanonicalizationPolicy.from_c_value(canonicalization)
    head = b" " + FOLD.join(tag + b"=" + value + b";" for tag, value in tags) + FOLD + b"b="
    hashed = bytearray()
    for field_name, value in policy.canonicalize_headers(list(signed)):
        hashed += field_name + b":" + value
    ((own_name, own_value),) = policy.canonicalize_headers([(name, head)])
    hashed += own_name + b":" + own_value.rstrip(CRLF)  # without its final CRLF
    signature = base64.b64encode(key.sign(bytes(hashed)))
    lines = [signature[i : i + _B64_LINE] for i in range(0, len(signature), _B64_LINE)]
    # Folding white space inside b= is ignored by verifiers (RFC 6376 section 3.5, b=),
    # and the whole value is removed before hashing: the hashed form is `head` exactly.
    return name + b":" + head + FOLD.join(lines) + CRLF


def select(fields: Fields, names: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The fields h= names, bottom-up for repeated names (RFC 6376 section 5.4.2):
    dkimpy's own selection, the one its verifier runs."""
    pairs = [(name, value) for name, value in fields]
    return [(name, value) for name, value in dkim.select_headers(pairs, list(names))]
