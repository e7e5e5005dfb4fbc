"""Header surgery on raw message bytes: strip forged Authentication-Results, prepend ours.

RFC 8601 section 5: a border MTA removes (or renames) every incoming Authentication-Results
field that claims its own authserv-id or one its consumers trust, whether or not the rest of
the field parses (section 7.8). We err on the side of removing: any field of the top-level
header block whose id a lenient reader could take for ours goes. Every other byte is kept, so
DKIM signatures over the message still verify; a message/rfc822 part is body and untouched.

The header block and its fields are those of ``arproxy.header``, the reader every part uses:
the fields examined here are the fields DKIM, DMARC and the trusted-results reader see. (In
the SMTP path the content has passed intake, so every line ends in CRLF and every other
reader downstream agrees on those boundaries too.)
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .authres import authserv_id_matches, recover_authserv_id
from .authres.lenient import unfold
from .header import CRLF, Field, header_of

_RENAMED_FIELD = b"Original-Authentication-Results"
_AR_FIELD = "authentication-results"
_LF = b"\n"

# The loose reading of a field with no recoverable id: runs of token-ish characters before
# the first ';' (quotes and parentheses are junk here), stopping at a method ("spf=...").
_LOOSE_WORD = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_METHOD_AFTER_WORD = re.compile(r"[ \t]*(?:/[ \t]*[0-9]+[ \t]*)?=")
_NOT_VISIBLE_ASCII = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class ForgeryPolicy:
    """Which incoming fields are forgeries and what to do with them."""

    own_ids: tuple[str, ...]  # our authserv-id plus trusted ones (".example.com" form allowed)
    action: Literal["remove", "rename"] = "remove"  # rename: "Original-Authentication-Results"


@dataclass(frozen=True)
class RewriteOutcome:
    message: bytes
    removed: tuple[str, ...]  # the authserv-ids (as recovered) of the fields removed/renamed


def rewrite_header(
    message: bytes, prepend: Sequence[bytes], policy: ForgeryPolicy
) -> RewriteOutcome:
    """Remove or rename forged Authentication-Results fields, then prepend ``prepend``.

    ``prepend`` holds complete fields ending in CRLF, written at the very top in that order
    (with LF line ends instead if the message uses bare LF). Never raises on any ``message``.
    A ``header.Message`` (the SMTP path, from intake) is not read again: its ``header`` is
    used. The result is one new bytes object (the message is copied once, by the join).
    """
    for new_field in prepend:
        if not new_field.endswith(CRLF):
            raise ValueError("a prepended field must end with CRLF")
    header = header_of(message)  # intake's reading, when ``message`` is a header.Message
    parts: list[bytes | memoryview] = [
        _with_line_ends_of(message, new_field) for new_field in prepend
    ]
    removed: list[str] = []
    kept_from = 0
    # The kept runs are views, not slices: the join below is the one copy of the message
    # (a slice of the body would copy its bytes once more before the join copies them).
    content = memoryview(message)
    for field in header.named(_AR_FIELD):
        forged_id = _forged_id(field, policy)
        if forged_id is None:
            continue
        removed.append(forged_id)
        parts.append(content[kept_from : field.start])
        if policy.action == "rename":
            parts.append(_RENAMED_FIELD + field.raw[len(field.name) :])
        kept_from = field.stop
    parts.append(content[kept_from:])
    return RewriteOutcome(b"".join(parts), tuple(removed))


def _forged_id(field: Field, policy: ForgeryPolicy) -> str | None:
    """The id under which this field claims to be ours, or None if it does not."""
    text = field.value.decode("utf-8", errors="surrogateescape")
    for candidate in _candidate_ids(text):
        if authserv_id_matches(candidate, policy.own_ids):
            return candidate
    return None


def _candidate_ids(value: str) -> tuple[str, ...]:
    """Every id a lenient consumer might read in this value.

    The README's lenient id, plus that id with invisible and non-ASCII characters dropped
    (``exam\\u200bple.com``, undecodable bytes). If there is no lenient id (a leading
    unbalanced quote or comment, a tspecial, a broken comment after the id), every word before
    the first ';' and before the first word followed by '=': so Exchange Online's
    ``spf=pass ...``, which has no id at all, yields none.
    """
    recovered = recover_authserv_id(value)
    if recovered is not None:
        return (recovered, _NOT_VISIBLE_ASCII.sub("", recovered))
    id_zone = unfold(value).split(";", 1)[0]
    words: list[str] = []
    for word in _LOOSE_WORD.finditer(id_zone):
        if _METHOD_AFTER_WORD.match(id_zone, word.end()):
            break
        words.append(word.group())
    return tuple(words)


def _with_line_ends_of(message: bytes, field: bytes) -> bytes:
    """``field`` with bare LF line ends if the message's first line ends in a bare LF."""
    first_line_end = message.find(_LF)
    if first_line_end >= 0 and not message.endswith(b"\r", 0, first_line_end):
        return field.replace(CRLF, _LF)
    return field
