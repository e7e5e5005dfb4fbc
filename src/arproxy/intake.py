"""The raw message as it arrives: refused or made safe before anything reads it.

aiosmtpd ends DATA only on CRLF.CRLF (the SMTP smuggling fix), but passes bare LF
and bare CR inside the content untouched. Different programs split lines
differently at those bytes, which is what smuggling and header-confusion attacks
live on, so by default such a message is refused, as Postfix's
`smtpd_forbid_bare_newline` does; "normalize" turns each into CRLF instead, before
DKIM verification and relay, so every later reader sees the same lines.

The header limits are counted on the header as ``arproxy.header`` reads it, the reader every
later part uses: one reader, one answer on where the header ends and what a field is. That
reading is done here, once per message, and handed on with the content (``Intake.message``):
the checks and the rewrite use it rather than reading the header again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from arproxy.header import Message, first_bare_newline, normalize_newlines, read_header
from arproxy.replies import (
    BARE_NEWLINE_REFUSED,
    EIGHT_BIT_HEADER_REFUSED,
    HEADER_NOT_UTF8,
    HEADER_TOO_LARGE,
    LEADING_CONTINUATION_REFUSED,
    NUL_REFUSED,
    TOO_MANY_FIELDS,
    Reply,
)

__all__ = ["Intake", "IntakeLimits", "normalize_newlines", "take_in"]


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


@dataclass(frozen=True)
class IntakeLimits:
    bare_newline: str  # "reject" or "normalize"
    eight_bit_header: str  # "accept" (the default) or "reject"
    max_header_size: int
    max_header_fields: int


@dataclass(frozen=True)
class Intake:
    """The content to work on, or the reply refusing it (and why, for the log).

    ``message``: for accepted content, the same bytes with the header intake read (the one
    reading every later part uses, ``arproxy.header.Message``); None when refused.
    """

    content: bytes
    refusal: Reply | None = None
    reason: str = ""
    message: Message | None = None


def take_in(content: bytes, limits: IntakeLimits, *, smtputf8: bool = False) -> Intake:
    """The content to work on, or why it is refused; `smtputf8` if MAIL said SMTPUTF8."""
    if b"\x00" in content:
        # NUL is in no mail grammar; C programs downstream would cut the line there.
        return Intake(content, NUL_REFUSED, "NUL byte")
    bare = first_bare_newline(content)
    if bare is not None:
        if limits.bare_newline == "reject":
            return Intake(content, BARE_NEWLINE_REFUSED, f"bare newline at offset {bare}")
        content = normalize_newlines(content)
    header = read_header(content)
    if any(stray.kind == "leading-continuation" for stray in header.strays):
        # A first line that starts with white space continues no field (RFC 5322 section
        # 2.2.3). Behind the fields we prepend, every reader would unfold it into the last
        # of them: ours would no longer end where we wrote them. Refused, not dropped: the
        # sender's software is broken, and it is told so.
        return Intake(content, LEADING_CONTINUATION_REFUSED, "header starts with white space")
    if header.end > limits.max_header_size:
        return Intake(content, HEADER_TOO_LARGE, f"header of {header.end} bytes")
    if limits.eight_bit_header == "reject" and (found := _EIGHT_BIT.search(content, 0, header.end)):
        # Under SMTPUTF8 the header is UTF-8 by right (RFC 6532 section 3); without it
        # 8-bit bytes break RFC 5322, and readers disagree on them as on bare newlines.
        # "accept" (the default, as Postfix does) relays them either way.
        if not smtputf8:
            return Intake(
                content, EIGHT_BIT_HEADER_REFUSED, f"8-bit header byte at {found.start()}"
            )
        if not _is_utf8(content[: header.end]):
            return Intake(content, HEADER_NOT_UTF8, "SMTPUTF8 header not UTF-8")
    # A line that is not a field counts as one: it costs every reader as much.
    fields = len(header.items)
    if fields > limits.max_header_fields:
        return Intake(content, TOO_MANY_FIELDS, f"{fields} header fields")
    # Behind the bare-newline rule above every line ends in CRLF: no consumer re-checks.
    return Intake(content, message=Message(content, header, crlf_only=True))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
