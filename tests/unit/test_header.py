"""The one raw header reader (arproxy.header): RFC 5322 section 2.1, 2.2, 3.6.8 and 4.5.

Expected values come from RFC 5322: the header ends at the first empty line (2.1), a line
starting with WSP continues the field before it (2.2.3), a field name may be followed by
white space before its colon (4.5, obsolete syntax a receiver must accept). Line ends are
CRLF, bare LF or bare CR, the one documented reading (the module docstring).
"""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy import header as header_module
from arproxy.header import Field, Stray, normalize_newlines, read_header


def names(message: bytes) -> list[bytes]:
    return [field.name for field in read_header(message).fields]


def test_plain_header_fields_are_kept_byte_for_byte_with_their_offsets() -> None:
    message = b"From: a@example.org\r\nSubject: hi\r\n\tthere\r\n\r\nbody\r\n"
    header = read_header(message)
    assert header.items == (
        Field(b"From", b"From: a@example.org\r\n", 0, 21, 4),
        Field(b"Subject", b"Subject: hi\r\n\tthere\r\n", 21, 42, 7),
    )
    assert (header.end, header.body_start) == (42, 44)
    assert message[header.body_start :] == b"body\r\n"
    for field in header.fields:
        assert message[field.start : field.stop] == field.raw
    subject = header.fields[1]
    assert subject.value == b" hi\r\n\tthere\r\n"
    assert subject.unfolded() == b" hi\tthere"  # RFC 5322 2.2.3: only the line ends go


@pytest.mark.parametrize("space", [b" ", b"\t", b"  \t "])
def test_white_space_before_the_colon_is_a_field(space: bytes) -> None:
    """RFC 5322 section 4.5 (obs-optional): ``Subject : hello`` is a Subject field."""
    message = b"Subject" + space + b": hello\r\nFrom: a@example.org\r\n\r\n"
    header = read_header(message)
    subject = header.fields[0]
    assert (subject.name, subject.lower_name) == (b"Subject", "subject")
    assert subject.raw == b"Subject" + space + b": hello\r\n"
    assert subject.unfolded() == b" hello"
    assert header.named("SUBJECT") == (subject,)
    assert header.strays == ()


def test_a_header_starting_with_white_space_has_a_stray_line_first() -> None:
    """A continuation with nothing to continue (RFC 5322 2.2.3) belongs to no field."""
    stray = b" (authenticated sender)\r\n\tmore\r\n"
    from_field = b"From: a@example.org\r\n"
    header = read_header(stray + from_field + b"\r\nbody")
    assert header.items == (
        Stray("leading-continuation", 0, len(stray)),
        Field(b"From", from_field, len(stray), len(stray + from_field), 4),
    )


def test_an_empty_first_line_means_an_empty_header() -> None:
    """RFC 5322 section 2.1: the body starts after the first empty line, even the first."""
    message = b"\r\n" + b"X-A: 1\r\n" * 20 + b"From: a@example.org\r\n\r\nbody\r\n"
    header = read_header(message)
    assert (header.items, header.end, header.body_start) == ((), 0, 2)


def test_lines_that_are_not_fields_take_their_continuations_with_them() -> None:
    message = b"A: 1\r\nnot a field\r\n B: folded into the stray line\r\n>From x\r\nC: 3\r\n\r\n"
    header = read_header(message)
    assert [type(item).__name__ for item in header.items] == ["Field", "Stray", "Stray", "Field"]
    assert header.fields[0].raw == b"A: 1\r\n"
    assert header.strays[0] == Stray("not-a-field", 6, 51)
    assert names(message) == [b"A", b"C"]


@pytest.mark.parametrize(
    "line",
    [b": no name", b"Na me: x", b"Name", b"N\xffme: x", b"Name\x00: x", b"\x7fName: x"],
)
def test_a_line_without_a_valid_field_name_is_stray(line: bytes) -> None:
    """RFC 5322 3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126."""
    header = read_header(line + b"\r\nA: 1\r\n\r\n")
    assert [item.kind for item in header.strays] == ["not-a-field"]
    assert names(line + b"\r\nA: 1\r\n\r\n") == [b"A"]


@pytest.mark.parametrize(
    ("message", "expected_names", "body"),
    [
        # One documented reading: CRLF, bare LF and bare CR all end a line.
        (b"A: 1\nB: 2\n\nbody", [b"A", b"B"], b"body"),
        (b"A: 1\rB: 2\r\rbody", [b"A", b"B"], b"body"),
        (b"A: 1\r\nB: 2\n\r\nbody", [b"A", b"B"], b"body"),
        # The example: a bare CR hides a second From field from a CRLF-only reader.
        (
            b"Subject: x\rFrom: a@evil.test\r\nFrom: b@good.test\r\n\r\nbody",
            [b"Subject", b"From", b"From"],
            b"body",
        ),
        # "\n\r" is two line ends: an empty line, the header ends there.
        (b"A: 1\n\rB: 2\r\n\r\n", [b"A"], b"B: 2\r\n\r\n"),
        # No empty line: all header.
        (b"A: 1\r\nB: 2", [b"A", b"B"], b""),
        (b"", [], b""),
        (b"\r\n", [], b""),
        (b"\n", [], b""),
        (b"\r", [], b""),
    ],
)
def test_line_ends(message: bytes, expected_names: list[bytes], body: bytes) -> None:
    header = read_header(message)
    assert names(message) == expected_names
    assert message[header.body_start :] == body


def test_a_folded_value_with_bare_line_ends_unfolds_as_with_crlf() -> None:
    field = read_header(b"Subject: a\n b\r c\r\n\r\n").fields[0]
    assert field.unfolded() == b" a b c"
    assert field.with_crlf() == b"Subject: a\r\n b\r\n c\r\n"


def test_the_stdlib_parser_reads_the_same_fields_on_crlf_messages() -> None:
    """An independent reader agrees where RFC 5322 is unambiguous. (Not on ``Subject :``,
    which the stdlib takes for the start of the body, against RFC 5322 section 4.5.)"""
    message = (
        b"Received: from a by b;\r\n\tTue, 1 Oct 2024 10:00:00 +0000\r\n"
        b"From: a@example.org\r\nSubject: x\r\nTo: b@example.net\r\n\r\nbody\r\n"
    )
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert [key.lower() for key in parsed] == [f.lower_name for f in read_header(message).fields]


_LINE = st.sampled_from(
    [
        b"From: a@example.org",
        b"Subject : hi",
        b"X-A:1",
        b" folded",
        b"\tfolded",
        b"not a field",
        b"",
        b"Authentication-Results: example.com; none",
    ]
) | st.binary(max_size=20)
_END = st.sampled_from([b"\r\n", b"\n", b"\r"])


@given(st.lists(st.tuples(_LINE, _END), max_size=12), st.binary(max_size=30))
def test_reading_a_message_and_its_normalised_form_give_the_same_fields(
    lines: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    """The documented reading is the one intake's ``normalize`` produces."""
    message = b"".join(line + end for line, end in lines) + tail
    raw = read_header(message)
    normal = read_header(normalize_newlines(message))
    assert [f.with_crlf() for f in raw.fields] == [f.raw for f in normal.fields]
    assert [s.kind for s in raw.strays] == [s.kind for s in normal.strays]


@given(st.binary(max_size=300))
def test_never_raises_and_covers_the_header_exactly(message: bytes) -> None:
    header = read_header(message)
    assert 0 <= header.end <= header.body_start <= len(message)
    position = 0
    for item in header.items:
        assert item.start == position < item.stop
        position = item.stop
    assert position == header.end
    for field in header.fields:
        assert field.raw == message[field.start : field.stop]
        assert field.raw[field.colon : field.colon + 1] == b":"
        assert field.raw.startswith(field.name)


# --- The CRLF reader: the line-by-line reader's answer, without a step per line ------------

_CRLF_LINES = st.sampled_from(
    [
        b"From: a@example.org",
        b"Subject : hi",
        b" folded",
        b"\tfolded too",
        b"not a field",
        b"X-Empty:",
        b":no name",
        b"Sp ace: x",
        b"a\rb: bare CR inside",
        b"c\nd: bare LF inside",
    ]
)


@given(st.lists(_CRLF_LINES, max_size=12), st.binary(max_size=20))
def test_the_crlf_reader_gives_the_general_readers_header(lines: list[bytes], body: bytes) -> None:
    message = b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body
    fast = header_module._read_crlf_header(message)
    general = header_module.read_any_header(message)
    assert read_header(message) == general
    if fast is not None:
        assert fast == general
    elif lines and not any(b"\r" in line or b"\n" in line for line in lines):
        raise AssertionError("a CRLF-only header with a body must take the CRLF reader")


@pytest.mark.parametrize(
    "message",
    [
        b"\r\nFrom: a@example.org\r\n\r\nbody",  # empty header: general reader
        b"From: a@example.org\r\n",  # no empty line, no body: general reader
        b"From: a@example.org\nX: 1\r\n\r\nbody",  # bare LF: general reader
        b"From: a@example.org\r\n\r\nX: 1\n\n",  # bare LF only in the body: CRLF reader
        b" lead\r\n more\r\nFrom: a@example.org\r\n\r\nbody",
    ],
)
def test_either_reader_reads_the_same_header(message: bytes) -> None:
    assert read_header(message) == header_module.read_any_header(message)


def test_a_shared_header_answers_named_the_same_every_time() -> None:
    header = read_header(b"From: a\r\nfrom : b\r\nTo: c\r\n\r\n")
    assert [f.raw for f in header.named("FROM")] == [b"From: a\r\n", b"from : b\r\n"]
    assert header.named("from") == header.named("From")
    assert header.named("cc") == ()
    assert header == read_header(b"From: a\r\nfrom : b\r\nTo: c\r\n\r\n")  # caches not compared
