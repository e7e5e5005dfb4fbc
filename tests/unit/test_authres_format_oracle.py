"""The faster formatter (issue 9) writes the same bytes and raises the same errors as the
formatter it replaced (tests/unit/formatter_oracle.py, kept verbatim as the oracle), on any
result set: keywords valid or not, values and comments from hostile text, ASCII or not,
with and without UTF-8 (RFC 6532 section 3), short and long enough to fold (RFC 5322
section 2.1.1). A few exact fields from the RFC 8601 section 2.2 grammar pin the layout
independently of the oracle.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from arproxy.authres import (
    AuthenticationResults,
    FormatError,
    Property,
    ResInfo,
    format_field,
    parse,
    with_a_labels,
)
from arproxy.authres.chars import ASCII_UNWRITABLE, TOKEN, is_token_char, is_unwritable

from . import formatter_oracle as oracle

CRLF = "\r\n"

# Text that hits every branch: tokens, addresses, quoted-strings, comments with and
# without white space (the fold points), controls and other unwritable characters, UTF-8,
# U-label domains (with_a_labels), and lengths that fold or pass the 998 limit.
_PIECES = st.sampled_from(
    [
        *'";=()\\/@.[]<>:, \t',
        "  ",
        "\r\n",
        "\x00",
        "\x7f",
        "\x85",
        "\u2028",
        "\udcff",
        "ü",
        "用户",
        "example.com",
        "bücher.example",
        "joe",
        "a" * 40,
        "word " * 30,
        "x" * 500,
    ]
)
_TEXT = st.one_of(
    st.lists(_PIECES, max_size=10).map("".join),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100),
)
_NAME = st.one_of(
    st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True),
    st.sampled_from(["none", "NONE", "", "-", "a_b", "dkím", "a.b"]),
)
_PTYPE_NAME = st.one_of(
    st.sampled_from(
        [
            ("smtp", "mailfrom"),
            ("smtp", "helo"),
            ("SMTP", "MailFrom"),
            ("header", "d"),
            ("header", "i"),
        ]
    ),
    st.tuples(_NAME, _NAME),
)
# "\u0661" is an Arabic-Indic digit: str.isdigit, but not RFC 5234 DIGIT.
_VERSION = st.none() | st.sampled_from(["1", "12", "", "1a", "\u0661"])


@st.composite
def _property(draw: st.DrawFn) -> Property:
    ptype, name = draw(_PTYPE_NAME)
    return Property(ptype, name, draw(_TEXT), draw(st.none() | _TEXT))


@st.composite
def _resinfo(draw: st.DrawFn) -> ResInfo:
    return ResInfo(
        draw(_NAME),
        draw(_NAME),
        reason=draw(st.none() | _TEXT),
        properties=tuple(draw(st.lists(_property(), max_size=4))),
        comment=draw(st.none() | _TEXT),
        method_version=draw(_VERSION),
    )


_HEADER = st.builds(
    AuthenticationResults,
    st.one_of(_TEXT, st.just("mx.example.com")),
    st.lists(_resinfo(), max_size=4).map(tuple),
    _VERSION,
)


def _outcome(formatter: object, header: AuthenticationResults, allow_utf8: bool) -> str:
    """The field, or the FormatError's message marked as such."""
    try:
        return formatter(header, allow_utf8=allow_utf8)  # type: ignore[operator, no-any-return]
    except FormatError as exc:
        return f"FormatError: {exc}"


@settings(max_examples=400)
@given(header=_HEADER, allow_utf8=st.booleans())
@example(
    header=AuthenticationResults(
        "mx.example.com",
        (ResInfo("spf", "pass", comment="a  b\t c", properties=(Property("smtp", "helo", "x"),)),),
    ),
    allow_utf8=False,
)
def test_format_field_writes_what_the_old_formatter_wrote(
    header: AuthenticationResults, allow_utf8: bool
) -> None:
    assert _outcome(format_field, header, allow_utf8) == _outcome(
        oracle.format_field, header, allow_utf8
    )


# Words and white space of every length, so that lines end just under, at and just over
# the 78-octet soft limit.
_WORDS = st.lists(
    st.tuples(st.integers(1, 30), st.sampled_from([" ", "\t", "  ", " \t", "\t ", "\t\t"])),
    max_size=8,
).map(lambda words: "".join("w" * length + space for length, space in words))


@settings(max_examples=300)
@given(
    prefix=st.integers(0, 70),
    comment=_WORDS,
    values=st.lists(st.integers(0, 70), max_size=4),
    with_reason=st.booleans(),
)
def test_folding_near_the_soft_limit_is_what_it_was(
    prefix: int, comment: str, values: list[int], with_reason: bool
) -> None:
    header = AuthenticationResults(
        "m" * prefix + ".example",
        (
            ResInfo(
                "dkim",
                "pass",
                reason="r" * prefix if with_reason else None,
                comment=comment,
                properties=tuple(
                    Property("header", "d", "d" * n, comment=comment[n:]) for n in values
                ),
            ),
            ResInfo("spf", "pass", comment=comment.strip() or None),
        ),
    )
    assert _outcome(format_field, header, False) == _outcome(oracle.format_field, header, False)


@pytest.mark.parametrize("length", range(60, 90))
def test_a_property_ending_at_each_column_folds_as_it_did(length: int) -> None:
    for name in ("d", "mailfrom"):
        header = AuthenticationResults(
            "example.com",
            (
                ResInfo(
                    "spf",
                    "pass",
                    properties=(
                        Property("smtp", name, "v" * (length - 20)),
                        Property("smtp", "helo", "h" * 10),
                    ),
                ),
            ),
        )
        assert format_field(header) == oracle.format_field(header)


@settings(max_examples=200)
@given(header=_HEADER)
def test_with_a_labels_gives_what_the_old_one_gave(header: AuthenticationResults) -> None:
    converted = with_a_labels(header)
    assert converted == oracle.with_a_labels(header)
    # The field written for a non-SMTPUTF8 message, the way pipeline.format_results does.
    assert _outcome(format_field, converted, False) == _outcome(
        oracle.format_field, oracle.with_a_labels(header), False
    )


def test_with_a_labels_returns_an_ascii_header_itself() -> None:
    header = AuthenticationResults(
        "mx.example.com", (ResInfo("spf", "pass", properties=(Property("smtp", "helo", "a.b"),)),)
    )
    assert with_a_labels(header) is header


def test_with_a_labels_converts_a_u_label_domain() -> None:
    """RFC 8616 section 3 / RFC 5890 section 2.3.2.1: the same domain as its A-label."""
    header = AuthenticationResults(
        "mx.example.com",
        (ResInfo("spf", "pass", properties=(Property("smtp", "mailfrom", "a@bücher.example"),)),),
    )
    (resinfo,) = with_a_labels(header).results
    assert resinfo.properties[0].value == "a@xn--bcher-kva.example"


@pytest.mark.parametrize("char", [chr(c) for c in range(0x80)])
def test_ascii_fast_paths_agree_with_the_character_classes(char: str) -> None:
    """The regexes stand in for is_token_char (RFC 2045 token) and is_unwritable."""
    assert (TOKEN.fullmatch(char) is not None) == is_token_char(char)
    assert (ASCII_UNWRITABLE.search(char) is not None) == is_unwritable(char)


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=5))
def test_token_regex_refuses_what_is_token_char_refuses(text: str) -> None:
    assert (TOKEN.fullmatch(text) is not None) == (
        bool(text) and all(is_token_char(char) for char in text)
    )


# --- exact fields, RFC 8601 section 2.2 ------------------------------------------------------
# authres-header-field = "Authentication-Results:" [CFWS] authserv-id [ CFWS authres-version ]
#                        ( no-result / 1*resinfo ) [CFWS] CRLF
# no-result = [CFWS] ";" [CFWS] "none"; resinfo = [CFWS] ";" methodspec [ CFWS reasonspec ]
#             [ CFWS 1*propspec ]; each of our resinfos starts a continuation line.


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (  # RFC 8601 appendix B.2, "Nearly Trivial Case; Service Provided, but No
            # Authentication Done"
            AuthenticationResults("example.org", version="1"),
            "Authentication-Results: example.org 1; none\r\n",
        ),
        (  # appendix B.3: one SPF result
            AuthenticationResults(
                "example.com",
                (
                    ResInfo(
                        "spf", "pass", properties=(Property("smtp", "mailfrom", "example.net"),)
                    ),
                ),
            ),
            "Authentication-Results: example.com;\r\n\tspf=pass smtp.mailfrom=example.net\r\n",
        ),
        (  # appendix B.4: a method version, a comment and an address pvalue
            AuthenticationResults(
                "example.com",
                (
                    ResInfo(
                        "auth",
                        "pass",
                        comment="cram-md5",
                        properties=(Property("smtp", "auth", "sender@example.net"),),
                    ),
                    ResInfo(
                        "spf", "pass", properties=(Property("smtp", "mailfrom", "example.net"),)
                    ),
                    ResInfo(
                        "sender-id",
                        "pass",
                        method_version="1",
                        properties=(Property("header", "from", "example.net"),),
                    ),
                ),
            ),
            "Authentication-Results: example.com;\r\n"
            "\tauth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
            "\tspf=pass smtp.mailfrom=example.net;\r\n"
            "\tsender-id/1=pass header.from=example.net\r\n",
        ),
        (  # a reason that is not a token is a quoted-string (RFC 2045 section 5.1 value)
            AuthenticationResults(
                "mx.example.com", (ResInfo("dkim", "fail", reason="bad signature"),)
            ),
            'Authentication-Results: mx.example.com;\r\n\tdkim=fail reason="bad signature"\r\n',
        ),
        (  # a comment longer than the line folds at its own white space (RFC 5322 3.2.2)
            AuthenticationResults(
                "mx.example.com",
                (
                    ResInfo(
                        "spf",
                        "pass",
                        comment="mx.example.com: domain of bounce@example.org designates "
                        "192.0.2.7 as permitted sender",
                        properties=(Property("smtp", "mailfrom", "bounce@example.org"),),
                    ),
                ),
            ),
            "Authentication-Results: mx.example.com;\r\n"
            "\tspf=pass\r\n"
            "\t  (mx.example.com: domain of bounce@example.org designates 192.0.2.7 as\r\n"
            " permitted sender) smtp.mailfrom=bounce@example.org\r\n",
        ),
    ],
)
def test_exact_fields(header: AuthenticationResults, field: str) -> None:
    assert format_field(header) == field
    value = field.partition(":")[2]
    assert parse(value) == header.without_comments()
