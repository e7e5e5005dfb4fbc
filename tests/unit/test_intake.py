from __future__ import annotations

import pytest

from arproxy.config import parse_config
from arproxy.intake import (
    BARE_NEWLINE_REFUSED,
    EIGHT_BIT_HEADER_REFUSED,
    HEADER_NOT_UTF8,
    HEADER_TOO_LARGE,
    LEADING_CONTINUATION_REFUSED,
    NUL_REFUSED,
    TOO_MANY_FIELDS,
    IntakeLimits,
    normalize_newlines,
    take_in,
)

REJECT = IntakeLimits(
    bare_newline="reject", eight_bit_header="reject", max_header_size=4096, max_header_fields=20
)
NORMALIZE = IntakeLimits(
    bare_newline="normalize", eight_bit_header="accept", max_header_size=4096, max_header_fields=20
)
CLEAN = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    "content",
    [
        b"Subject: x\r\n\r\nline\nSMTP smuggled\r\n",
        b"Subject: x\r\n\r\nline\r.\r\n",
        b"Subject: x\nX-Evil: 1\r\n\r\nbody\r\n",
        b"Subject: x\r\n\r\nend\n.\nMAIL FROM:<x@y>\r\n",
        b"Subject: x\r\n\r\nlast\r",
    ],
)
def test_bare_newlines_are_refused_by_default(content: bytes) -> None:
    assert take_in(content, REJECT).refusal == BARE_NEWLINE_REFUSED


def test_bare_newlines_are_normalized_on_request() -> None:
    intake = take_in(b"Subject: x\nX-A: 1\r\n\r\na\rb\nc\r\n", NORMALIZE)
    assert intake.refusal is None
    assert intake.content == b"Subject: x\r\nX-A: 1\r\n\r\na\r\nb\r\nc\r\n"


def test_clean_message_passes_unchanged() -> None:
    intake = take_in(CLEAN, REJECT)
    assert (intake.content, intake.refusal) == (CLEAN, None)


def test_nul_is_refused() -> None:
    assert take_in(b"Subject: a\x00b\r\n\r\n", NORMALIZE).refusal == NUL_REFUSED


def test_header_limits() -> None:
    big = b"X-Big: " + b"a" * 5000 + b"\r\n\r\nbody\r\n"
    assert take_in(big, REJECT).refusal == HEADER_TOO_LARGE
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\nbody\r\n"
    assert take_in(many, REJECT).refusal == TOO_MANY_FIELDS
    folded = b"X-A: 1\r\n" + b"\t2\r\n" * 100 + b"\r\n"
    assert take_in(folded, REJECT).refusal is None, "continuation lines are not fields"


def test_normalize_is_idempotent() -> None:
    once = normalize_newlines(b"a\nb\rc\r\nd")
    assert normalize_newlines(once) == once


def test_eight_bit_header_bytes() -> None:
    latin = "Subject: caf\u00e9\r\n\r\nbody \u00e9\r\n".encode()
    assert take_in(latin, REJECT).refusal == EIGHT_BIT_HEADER_REFUSED
    assert take_in(latin, NORMALIZE).refusal is None
    assert take_in(b"Subject: x\r\n\r\n8-bit body \xe9\r\n", REJECT).refusal is None


def test_eight_bit_header_under_smtputf8() -> None:
    """RFC 6532 section 3: an SMTPUTF8 message's header is UTF-8 by right, even with
    "reject"; bytes that are not UTF-8 are not, and are refused there."""
    utf8 = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    assert take_in(utf8, REJECT, smtputf8=True).refusal is None
    latin1 = b"Subject: Gr\xfc\xdfe\r\n\r\nbody\r\n"
    assert take_in(latin1, REJECT, smtputf8=True).refusal == HEADER_NOT_UTF8
    assert take_in(latin1, NORMALIZE, smtputf8=True).refusal is None, "accept takes all"


def test_eight_bit_header_is_accepted_by_default() -> None:
    """The default is "accept" (as Postfix relays such mail); "reject" stays available."""
    limits = parse_config("", "t").limits
    assert limits.eight_bit_header == "accept"
    assert parse_config('[limits]\neight_bit_header = "reject"', "t").limits.eight_bit_header == (
        "reject"
    )


@pytest.mark.parametrize("limits", [REJECT, NORMALIZE])
@pytest.mark.parametrize("stray", [b" (authenticated sender)\r\n", b"\tx\r\n"])
def test_a_header_starting_with_white_space_is_refused(limits: IntakeLimits, stray: bytes) -> None:
    """RFC 5322 section 2.2.3: a line starting with WSP continues the field before it, and
    the first line has none; behind our prepended fields it would continue the last of ours.
    Refused with a permanent content error (RFC 3463 5.6.0), once, clearly."""
    intake = take_in(stray + CLEAN, limits)
    assert intake.refusal == LEADING_CONTINUATION_REFUSED
    assert str(intake.refusal).startswith("550 5.6.0 ")
    assert intake.reason == "header starts with white space"


def test_an_empty_first_line_leaves_an_empty_header() -> None:
    """RFC 5322 section 2.1: the body starts after the first empty line, so these 20 X-A
    lines are body: no field to count (intake used to count them and refuse)."""
    limits = IntakeLimits("reject", "reject", max_header_size=4096, max_header_fields=10)
    message = b"\r\n" + b"X-A: 1\r\n" * 20 + b"\r\nbody\r\n"
    assert take_in(message, limits).refusal is None
    assert take_in(b"X-B: 2\r\n" + message, limits).refusal is None
    assert take_in(b"X-A: 1\r\n" + message[2:], limits).refusal == TOO_MANY_FIELDS


def test_fields_are_counted_as_the_one_reader_reads_them() -> None:
    limits = IntakeLimits("reject", "reject", max_header_size=4096, max_header_fields=3)
    spaced = b"Subject : a\r\nFrom : b@example.org\r\nTo: c@example.org\r\n\r\n"
    assert take_in(spaced, limits).refusal is None
    # A line that is not a field counts as one (with its continuation lines).
    assert take_in(b"no field\r\n more\r\n" + spaced, limits).refusal == TOO_MANY_FIELDS


def test_header_size_ends_at_the_empty_line() -> None:
    limits = IntakeLimits("normalize", "reject", max_header_size=20, max_header_fields=10)
    assert take_in(b"X-A: 1\r\n\r\n" + b"b" * 100 + b"\r\n", limits).refusal is None
    assert take_in(b"X-A: " + b"a" * 20 + b"\r\n\r\n", limits).refusal == HEADER_TOO_LARGE
    # After normalisation a bare LF ends the header as CRLF does.
    assert take_in(b"X-A: 1\n\n" + b"b" * 100 + b"\n", limits).refusal is None
