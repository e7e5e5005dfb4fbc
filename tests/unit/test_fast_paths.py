"""The per-message fast paths give exactly the answers of the slow ones they stand in for.

A bare CR or LF is one not part of a CRLF pair (RFC 5322 section 2.1: lines end in CRLF);
`has_line_over` counts the lines `bytes.splitlines` finds (RFC 5321 section 4.5.3.1.6 limits
a text line to 998 octets before its CRLF).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import (
    AuthenticationResults,
    FormatError,
    Property,
    ResInfo,
    format_field,
    with_a_labels,
)
from arproxy.checks.base import Value
from arproxy.header import first_bare_newline, normalize_newlines, only_crlf
from arproxy.pipeline import format_results, has_line_over

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_PIECES = st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" ", b"\n\r"]), max_size=30)


@given(_PIECES)
def test_bare_newline_fast_path_agrees_with_the_regex(pieces: list[bytes]) -> None:
    content = b"".join(pieces)
    found = _BARE.search(content)
    assert first_bare_newline(content) == (None if found is None else found.start())
    assert only_crlf(content) == (found is None)
    assert normalize_newlines(content) == _BARE.sub(b"\r\n", content)


def test_normalize_newlines_returns_a_crlf_message_itself_without_a_copy() -> None:
    message = b"From: a@example.org\r\n\r\n" + b"x" * 100 + b"\r\n"
    assert normalize_newlines(message) is message
    assert first_bare_newline(b"a\r\nb\nc") == 4
    assert first_bare_newline(b"a\r\n\rb") == 3


@given(
    st.lists(st.sampled_from([b"xxxxx", b"\r\n", b"\r", b"\n", b"y"]), max_size=40),
    st.integers(min_value=0, max_value=20),
)
def test_has_line_over_agrees_with_splitlines(pieces: list[bytes], limit: int) -> None:
    content = b"".join(pieces)
    longest = max(map(len, content.splitlines()), default=0)
    assert has_line_over(content, limit) == (longest > limit)


def test_has_line_over_at_the_rfc_5321_limit() -> None:
    assert not has_line_over(b"x" * 998 + b"\r\n", 998)
    assert has_line_over(b"a\r\n" + b"x" * 999 + b"\r\n", 998)


class _Result:
    """A MethodResult with a fixed resinfo."""

    def __init__(self, resinfo: ResInfo) -> None:
        self.resinfo = resinfo
        self.method = resinfo.method
        self.value = Value(resinfo.result)

    def to_resinfo(self) -> ResInfo:
        return self.resinfo


def _per_result(authserv_id: str, results: list[_Result], utf8: bool) -> str:
    """format_results as it was: each result formatted alone first (the reference)."""
    resinfos = []
    for result in results:
        resinfo = result.to_resinfo()
        if not utf8:
            (resinfo,) = with_a_labels(AuthenticationResults("", (resinfo,))).results
        try:
            format_field(AuthenticationResults(authserv_id, (resinfo,)), allow_utf8=utf8)
        except FormatError:
            resinfo = ResInfo(resinfo.method, resinfo.result)
        resinfos.append(resinfo)
    return format_field(AuthenticationResults(authserv_id, tuple(resinfos)), allow_utf8=utf8)


_SPF = ResInfo("spf", "pass", properties=(Property("smtp", "mailfrom", "a@bücher.example"),))
_DKIM = ResInfo("dkim", "pass", properties=(Property("header", "d", "sender.test"),))
_BAD = ResInfo("dkim", "fail", properties=(Property("header", "d", "x\x01y"),))  # a control


@pytest.mark.parametrize("utf8", [False, True])
@pytest.mark.parametrize(
    "resinfos", [[_SPF, _DKIM], [_SPF, _BAD, _DKIM], [_BAD], []], ids=["ok", "bad", "1", "0"]
)
def test_format_results_formats_the_field_as_result_by_result_did(
    resinfos: list[ResInfo], utf8: bool
) -> None:
    """One pass over the whole field when it formats; RFC 8601 section 2.2 syntax either
    way, a result that cannot be written losing only its properties."""
    results = [_Result(r) for r in resinfos]
    field = format_results("example.com", results, utf8=utf8)  # type: ignore[arg-type]
    assert field == _per_result("example.com", results, utf8)
    if _BAD in resinfos:
        assert "\tdkim=fail;\r\n" in field or field.endswith("\tdkim=fail\r\n")
        assert "\x01" not in field
