"""The raw message as it arrives: refused or made safe before anything reads it.

aiosmtpd ends DATA only on CRLF.CRLF (the SMTP smuggling fix), but passes bare LF
and bare CR inside the content untouched. Different programs split lines
differently at those bytes, which is what smuggling and header-confusion attacks
live on, so by default such a message is refused, as Postfix's
`smtpd_forbid_bare_newline` does; "normalize" turns each into CRLF instead, before
DKIM verification and relay, so every later reader sees the same lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from arproxy.replies import Reply

_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = re.compile(rb"\r\n\r\n")

BARE_NEWLINE_REFUSED = Reply.of(
    550, "5.5.2", "Message refused: bare CR or LF in the message (RFC 5321 section 2.3.8)"
)
HEADER_TOO_LARGE = Reply.of(552, "5.3.4", "Message header exceeds the size limit")
TOO_MANY_FIELDS = Reply.of(552, "5.3.4", "Message header has too many fields")
NUL_REFUSED = Reply.of(550, "5.6.0", "Message refused: NUL character in the message")
EIGHT_BIT_HEADER_REFUSED = Reply.of(
    550, "5.6.0", "Message refused: 8-bit characters in the header without SMTPUTF8 (RFC 6532)"
)
HEADER_NOT_UTF8 = Reply.of(
    550, "5.6.0", "Message refused: header bytes that are not UTF-8 (RFC 6532 section 3)"
)
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


@dataclass(frozen=True)
class IntakeLimits:
    bare_newline: str  # "reject" or "normalize"
    eight_bit_header: str  # "accept" (the default) or "reject"
    max_header_size: int
    max_header_fields: int


@dataclass(frozen=True)
class Intake:
    """The content to work on, or the reply refusing it (and why, for the log)."""

    content: bytes
    refusal: Reply | None = None
    reason: str = ""


def take_in(content: bytes, limits: IntakeLimits, *, smtputf8: bool = False) -> Intake:
    """The content to work on, or why it is refused; `smtputf8` if MAIL said SMTPUTF8."""
    if b"\x00" in content:
        # NUL is in no mail grammar; C programs downstream would cut the line there.
        return Intake(content, NUL_REFUSED, "NUL byte")
    bare = _BARE_NEWLINE.search(content)
    if bare is not None:
        if limits.bare_newline == "reject":
            return Intake(content, BARE_NEWLINE_REFUSED, f"bare newline at offset {bare.start()}")
        content = normalize_newlines(content)
    header_end = _HEADER_END.search(content)
    header = content[: header_end.start() + 2] if header_end else content
    if len(header) > limits.max_header_size:
        return Intake(content, HEADER_TOO_LARGE, f"header of {len(header)} bytes")
    if limits.eight_bit_header == "reject" and (found := _EIGHT_BIT.search(header)):
        # Under SMTPUTF8 the header is UTF-8 by right (RFC 6532 section 3); without it
        # 8-bit bytes break RFC 5322, and readers disagree on them as on bare newlines.
        # "accept" (the default, as Postfix does) relays them either way.
        if not smtputf8:
            return Intake(
                content, EIGHT_BIT_HEADER_REFUSED, f"8-bit header byte at {found.start()}"
            )
        if not _is_utf8(header):
            return Intake(content, HEADER_NOT_UTF8, "SMTPUTF8 header not UTF-8")
    fields = _count_fields(header)
    if fields > limits.max_header_fields:
        return Intake(content, TOO_MANY_FIELDS, f"{fields} header fields")
    return Intake(content)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def normalize_newlines(content: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF."""
    return _BARE_NEWLINE.sub(b"\r\n", content)


def _count_fields(header: bytes) -> int:
    return sum(1 for line in header.split(b"\r\n") if line and line[:1] not in (b" ", b"\t"))
