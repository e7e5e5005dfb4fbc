"""Header surgery on raw message bytes: strip forged Authentication-Results, prepend ours.

RFC 8601 section 5: a border MTA removes (or renames) every incoming Authentication-Results
field that claims its own authserv-id or one its consumers trust, whether or not the rest of
the field parses (section 7.8). We err on the side of removing: any field of the top-level
header block whose id a lenient reader could take for ours goes. Every other byte is kept, so
DKIM signatures over the message still verify; a message/rfc822 part is body and untouched.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .authres import authserv_id_matches, recover_authserv_id
from .authres.lenient import unfold

_RENAMED_FIELD = b"Original-Authentication-Results"
_AR_FIELD_START = re.compile(rb"(authentication-results)[ \t]*:", re.IGNORECASE)
# RFC 5322 field name (printable US-ASCII but ':'), with the obsolete WSP before the colon.
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_CRLF = b"\r\n"
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


@dataclass(frozen=True)
class _Field:
    """A header field: its first line index and the index after its last line."""

    start: int
    stop: int


@dataclass(frozen=True)
class _ArField(_Field):
    """An Authentication-Results field: where its name ends on its first line, its value."""

    name_end: int
    value: bytes


def rewrite_header(
    message: bytes, prepend: Sequence[bytes], policy: ForgeryPolicy
) -> RewriteOutcome:
    """Remove or rename forged Authentication-Results fields, then prepend ``prepend``.

    ``prepend`` holds complete fields ending in CRLF, written at the very top in that order
    (with LF line ends instead if the message uses bare LF). Never raises on any ``message``.
    """
    for new_field in prepend:
        if not new_field.endswith(_CRLF):
            raise ValueError("a prepended field must end with CRLF")
    header, rest = _split_header(message)
    lines = _header_lines(header)
    removed: list[str] = []
    # Back to front, so that the line indices of the fields still to visit stay valid.
    for field in reversed(_authentication_results_fields(lines)):
        forged_id = _forged_id(field.value, policy)
        if forged_id is None:
            continue
        removed.append(forged_id)
        if policy.action == "rename":
            lines[field.start] = _RENAMED_FIELD + lines[field.start][field.name_end :]
        else:
            del lines[field.start : field.stop]
    new_fields = [_with_line_ends_of(message, new_field) for new_field in prepend]
    return RewriteOutcome(b"".join([*new_fields, *lines, rest]), tuple(reversed(removed)))


def authentication_results_values(message: bytes) -> list[bytes]:
    """The values of the top-level Authentication-Results fields, in order, as found here.

    Each value is the raw text after the colon, folds and line ends included, of a field that
    ``rewrite_header`` examines: the same header block, the same field boundaries.
    """
    header, _ = _split_header(message)
    return [field.value for field in _authentication_results_fields(_header_lines(header))]


def _header_lines(header: bytes) -> list[bytes]:
    # Fields are found with universal line ends (CRLF, LF, bare CR), as Python's email package
    # reads them: a field hidden behind a bare CR is seen by some readers, so it is seen here.
    return header.splitlines(keepends=True)


def _authentication_results_fields(header_lines: list[bytes]) -> list[_ArField]:
    found: list[_ArField] = []
    for field in _fields(header_lines):
        match = _AR_FIELD_START.match(header_lines[field.start])
        if match is not None:
            value = b"".join(header_lines[field.start : field.stop])[match.end() :]
            found.append(_ArField(field.start, field.stop, match.end(1), value))
    return found


def _split_header(message: bytes) -> tuple[bytes, bytes]:
    """The header block and the rest, which starts with the first empty line (if any).

    A line ends with LF (CRLF or bare LF) here: this is the latest end of the header that any
    common reader sees, so no field a reader takes for a header field is left unexamined.
    """
    if message.startswith((_CRLF, _LF)):
        return b"", message
    ends = [found + 1 for found in (message.find(b"\n\r\n"), message.find(b"\n\n")) if found >= 0]
    if not ends:
        return message, b""
    return message[: min(ends)], message[min(ends) :]


def _fields(header_lines: list[bytes]) -> list[_Field]:
    """The fields of a header block; junk lines (and continuations after them) are skipped."""
    fields: list[_Field] = []
    current: int | None = None
    for index, line in enumerate(header_lines):
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation of the current field, or of a junk line
        if current is not None:
            fields.append(_Field(current, index))
        current = index if _FIELD_START.match(line) else None
    if current is not None:
        fields.append(_Field(current, len(header_lines)))
    return fields


def _forged_id(value: bytes, policy: ForgeryPolicy) -> str | None:
    """The id under which this field value claims to be ours, or None if it does not."""
    text = value.decode("utf-8", errors="surrogateescape")
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
    if first_line_end >= 0 and not message[:first_line_end].endswith(b"\r"):
        return field.replace(_CRLF, _LF)
    return field
