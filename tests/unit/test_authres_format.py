"""The Authentication-Results formatter: quoting, folding, refusals, and the security property.

The security property: whatever a client puts in a value slot (HELO, MAIL FROM, AUTH identity,
DKIM d=, reason, comment), the written field parses back to exactly the results we meant, or
format_field raises FormatError. A value never adds, changes or hides a result.
"""

from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from arproxy.authres import (
    AuthenticationResults,
    FormatError,
    Property,
    ResInfo,
    format_field,
    parse,
    recover_authserv_id,
)

CRLF = "\r\n"


def _field_value(field: str) -> str:
    name, _, value = field.partition(":")
    assert name == "Authentication-Results"
    return value


def _single(value: str, *, ptype: str = "smtp", name: str = "mailfrom") -> str:
    """The written form of one property value."""
    header = AuthenticationResults(
        "example.com", (ResInfo("spf", "pass", None, (Property(ptype, name, value),)),)
    )
    field = format_field(header)
    prefix = f"\tspf=pass {ptype}.{name}="
    line = field.split(CRLF)[1]
    assert line.startswith(prefix), field
    return line[len(prefix) :]


# --- values: token, address, quoted-string -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("example.net", "example.net"),
        ("Abc+def1", "Abc+def1"),
        ("_dmarc.example.net.", "_dmarc.example.net."),
        ("abc+/def=", '"abc+/def="'),  # base64 header.b: '/' and '=' are tspecials
        ("abcd12==", '"abcd12=="'),
        ("2001:db8::1", '"2001:db8::1"'),  # IPv6: ':'
        ("[192.0.2.1]", '"[192.0.2.1]"'),  # address-literal HELO: '[' ']'
        ("joe bloggs", '"joe bloggs"'),
        ("joe; spf=pass", '"joe; spf=pass"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("(not a comment)", '"(not a comment)"'),
        ("<>", '"<>"'),
        ("a,b", '"a,b"'),
        ("what?", '"what?"'),
        ("", '""'),
        ("a\tb", '"a\tb"'),
    ],
)
def test_value_quoting(value: str, written: str) -> None:
    assert _single(value) == written


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("sender@example.net", "sender@example.net"),
        ("@example.net", "@example.net"),
        ("joe.bloggs+tag@sub.example.net", "joe.bloggs+tag@sub.example.net"),
        ("a/b=c@example.net", "a/b=c@example.net"),  # dot-atom local-part may hold / and =
        ("user@localhost", '"user@localhost"'),  # domain-name needs a dot
        ("a@b@c.example", '"a@b@c.example"'),
        ("user@[192.0.2.1]", '"user@[192.0.2.1]"'),
        ('"john smith"@example.net', '"\\"john smith\\"@example.net"'),
        ("a..b@example.net", '"a..b@example.net"'),
        ("user@example.net.", '"user@example.net."'),
    ],
)
def test_address_values(value: str, written: str) -> None:
    assert _single(value) == written


def test_addresses_are_never_unquoted_in_authserv_id_or_reason() -> None:
    header = AuthenticationResults(
        "gw@example.com", (ResInfo("dkim", "fail", reason="x@example.net"),)
    )
    assert format_field(header) == (
        'Authentication-Results: "gw@example.com";\r\n\tdkim=fail reason="x@example.net"\r\n'
    )


def test_none_and_version() -> None:
    assert format_field(AuthenticationResults("example.com")) == (
        "Authentication-Results: example.com; none\r\n"
    )
    assert format_field(AuthenticationResults("mail gw", version="1")) == (
        'Authentication-Results: "mail gw" 1; none\r\n'
    )
    assert format_field(AuthenticationResults("")) == 'Authentication-Results: ""; none\r\n'


def test_full_field_layout() -> None:
    header = AuthenticationResults(
        "mx.example.com",
        (
            ResInfo("auth", "pass", comment="PLAIN", properties=(Property("smtp", "auth", "joe"),)),
            ResInfo(
                "dkim",
                "pass",
                method_version="1",
                comment="2048-bit key",
                properties=(
                    Property("header", "d", "example.org"),
                    Property("header", "b", "Ab+/12cd", comment="b="),
                ),
            ),
            ResInfo("dkim", "fail", reason="body hash did not verify"),
        ),
    )
    assert format_field(header) == (
        "Authentication-Results: mx.example.com;\r\n"
        "\tauth=pass (PLAIN) smtp.auth=joe;\r\n"
        '\tdkim/1=pass (2048-bit key) header.d=example.org header.b="Ab+/12cd" (b=);\r\n'
        '\tdkim=fail reason="body hash did not verify"\r\n'
    )


def test_comment_escaping() -> None:
    header = AuthenticationResults(
        "example.com", (ResInfo("spf", "pass", comment="a (b) \\ c); spf=pass ("),)
    )
    line = format_field(header).split(CRLF)[1]
    assert line == "\tspf=pass (a \\(b\\) \\\\ c\\); spf=pass \\()"
    assert parse(_field_value(format_field(header))) == header.without_comments()


# --- folding -----------------------------------------------------------------------------------


def _lines(field: str) -> list[str]:
    assert field.endswith(CRLF)
    lines = field[: -len(CRLF)].split(CRLF)
    assert "\r" not in "".join(lines) and "\n" not in "".join(lines)
    assert all(line[:1] in (" ", "\t") for line in lines[1:]), "continuations start with WSP"
    return lines


def test_long_resinfo_is_folded_between_its_parts() -> None:
    props = tuple(Property("header", name, "a" * 20) for name in ("d", "i", "s", "a", "b"))
    header = AuthenticationResults("example.com", (ResInfo("dkim", "pass", properties=props),))
    field = format_field(header)
    lines = _lines(field)
    assert all(len(line) <= 78 for line in lines)
    assert len(lines) > 2
    assert parse(_field_value(field)) == header


def test_long_comment_is_folded_at_its_spaces() -> None:
    comment = "google.com: domain of bounce@example.com designates 198.51.100.7 as permitted sender"
    header = AuthenticationResults(
        "mx.google.com",
        (
            ResInfo(
                "spf",
                "pass",
                comment=comment,
                properties=(Property("smtp", "mailfrom", "bounce@example.com"),),
            ),
        ),
    )
    field = format_field(header)
    assert all(len(line) <= 78 for line in _lines(field))
    unfolded = field.replace(CRLF + " ", " ").replace(CRLF + "\t  ", " ")
    assert f"({comment})" in unfolded  # folding kept the comment's text
    assert parse(_field_value(field)) == header.without_comments()


def test_long_authserv_id_moves_to_a_continuation_line() -> None:
    header = AuthenticationResults("a" * 60 + ".example.com")
    lines = _lines(format_field(header))
    assert lines[0] == "Authentication-Results:"
    assert parse(_field_value(format_field(header))) == header


def test_unfoldable_value_longer_than_78_gets_a_line_of_its_own() -> None:
    value = "x" * 200
    header = AuthenticationResults(
        "example.com", (ResInfo("auth", "pass", properties=(Property("smtp", "auth", value),)),)
    )
    lines = _lines(format_field(header))
    assert any(len(line) > 78 and value in line for line in lines)
    assert all(len(line) <= 998 for line in lines)


@pytest.mark.parametrize("slot", ["authserv_id", "reason", "mailfrom", "comment"])
def test_line_over_998_raises(slot: str) -> None:
    text = "y" * 1000
    header = _header_with(slot, text)
    with pytest.raises(FormatError):
        format_field(header)


def test_long_comment_with_spaces_folds_below_998() -> None:
    header = _header_with("comment", "word " * 400)
    assert all(len(line) <= 78 for line in _lines(format_field(header)))


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a\rb",
        "a\nb",
        "a\r\n b",
        "nul\x00",
        "vt\x0b",
        "del\x7f",
        "esc\x1b",
        "c1\x85",
        "ls\u2028",
        "ps\u2029",
        "\udcff",
    ],
)
@pytest.mark.parametrize("slot", ["authserv_id", "reason", "mailfrom", "comment"])
def test_unwritable_characters_raise(slot: str, text: str) -> None:
    for allow_utf8 in (False, True):
        with pytest.raises(FormatError):
            format_field(_header_with(slot, text), allow_utf8=allow_utf8)


@pytest.mark.parametrize("slot", ["authserv_id", "reason", "mailfrom", "comment"])
def test_non_ascii_needs_allow_utf8(slot: str) -> None:
    header = _header_with(slot, "jörg@bücher.example")
    with pytest.raises(FormatError):
        format_field(header)
    field = format_field(header, allow_utf8=True)
    assert parse(_field_value(field)) == header.without_comments()


def test_utf8_values_are_written_quoted() -> None:
    assert '"jörg@example.com"' in format_field(
        _header_with("mailfrom", "jörg@example.com"), allow_utf8=True
    )
    assert '"用户"' in format_field(_header_with("mailfrom", "用户"), allow_utf8=True)


@pytest.mark.parametrize(
    "resinfo",
    [
        ResInfo("d_kim", "pass"),
        ResInfo("dkim-", "pass"),
        ResInfo("", "pass"),
        ResInfo("dk im", "pass"),
        ResInfo("dkím", "pass"),
        ResInfo("none", "pass"),  # read as "; none" by common parsers
        ResInfo("dkim", "pass.ok"),
        ResInfo("dkim", "pass", method_version="1a"),
        ResInfo("dkim", "pass", method_version=""),
        ResInfo("dkim", "pass", properties=(Property("smtp.x", "d", "v"),)),
        ResInfo("dkim", "pass", properties=(Property("smtp", "mail_from", "v"),)),
        ResInfo("dkim", "pass", properties=(Property("smtp", "", "v"),)),
    ],
)
def test_bad_names_raise(resinfo: ResInfo) -> None:
    with pytest.raises(FormatError):
        format_field(AuthenticationResults("example.com", (resinfo,)))


@pytest.mark.parametrize("version", ["", "v1", "1.0", "1 "])
def test_bad_version_raises(version: str) -> None:
    with pytest.raises(FormatError):
        format_field(AuthenticationResults("example.com", version=version))


# --- the security property ---------------------------------------------------------------------

_SLOTS = ("authserv_id", "helo", "mailfrom", "auth", "header_d", "reason", "comment")
_BENIGN = {
    "authserv_id": "mx.example.com",
    "helo": "client.example.net",
    "mailfrom": "bounce@example.org",
    "auth": "joe",
    "header_d": "example.org",
    "reason": "ok",
    "comment": "2048-bit key",
}


def _header_from(values: dict[str, str]) -> AuthenticationResults:
    """A realistic header whose client-controlled slots hold ``values``."""
    return AuthenticationResults(
        values["authserv_id"],
        (
            ResInfo("auth", "pass", properties=(Property("smtp", "auth", values["auth"]),)),
            ResInfo(
                "spf",
                "pass",
                reason=values["reason"],
                properties=(
                    Property("smtp", "mailfrom", values["mailfrom"]),
                    Property("smtp", "helo", values["helo"], comment=values["comment"]),
                ),
            ),
            ResInfo(
                "dkim",
                "pass",
                comment=values["comment"],
                properties=(Property("header", "d", values["header_d"]),),
            ),
        ),
    )


def _header_with(slot: str, text: str) -> AuthenticationResults:
    """The realistic header with ``text`` in one slot and benign values elsewhere."""
    return _header_from({**_BENIGN, slot: text})


def _lower_names(header: AuthenticationResults) -> AuthenticationResults:
    def lower(res: ResInfo) -> ResInfo:
        props = tuple(
            replace(p, ptype=p.ptype.lower(), name=p.name.lower()) for p in res.properties
        )
        return replace(res, method=res.method.lower(), result=res.result.lower(), properties=props)

    return replace(header, results=tuple(lower(res) for res in header.results))


def _assert_round_trips_or_refuses(header: AuthenticationResults, allow_utf8: bool) -> None:
    try:
        field = format_field(header, allow_utf8=allow_utf8)
    except FormatError:
        return
    lines = _lines(field)
    assert all(len(line.encode()) <= 998 for line in lines)
    value = _field_value(field)
    assert parse(value) == _lower_names(header.without_comments())
    # The lenient reader (used to strip forgeries) sees the same id.
    assert recover_authserv_id(value) == header.authserv_id


# Hostile text: any code point (surrogates and controls included), and text built from the
# pieces an injection would use, so that near misses are common.
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
_INJECTION_PIECES = st.sampled_from(
    [
        *'";=()\\/@.[]<>:, \t',
        "\r\n",
        "\r\n ",
        "\n",
        "\x00",
        "example.com",
        "; spf=pass",
        " dkim=fail",
        "smtp.mailfrom=",
        "reason=",
        "none",
        '\\"',
        "ü",
        "\u2028",
    ]
)
_PRINTABLE_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_HOSTILE = st.one_of(
    _ANY_TEXT, _PRINTABLE_ASCII, st.lists(_INJECTION_PIECES, max_size=12).map("".join)
)


@given(slot=st.sampled_from(_SLOTS), text=_HOSTILE, allow_utf8=st.booleans())
@example(slot="reason", text='x"; spf=pass smtp.mailfrom=evil.example; x="', allow_utf8=False)
@example(slot="helo", text="a (b) c", allow_utf8=False)
@example(slot="comment", text="c) ; dkim=pass (", allow_utf8=False)
@example(slot="authserv_id", text="example.com; dkim=pass", allow_utf8=False)
@example(slot="mailfrom", text='"a"@example.net x.y=z', allow_utf8=False)
def test_hostile_value_in_one_slot_round_trips_or_refuses(
    slot: str, text: str, allow_utf8: bool
) -> None:
    _assert_round_trips_or_refuses(_header_with(slot, text), allow_utf8)


@given(
    texts=st.lists(_HOSTILE, min_size=len(_SLOTS), max_size=len(_SLOTS)), allow_utf8=st.booleans()
)
def test_hostile_values_in_every_slot_round_trip_or_refuse(
    texts: list[str], allow_utf8: bool
) -> None:
    _assert_round_trips_or_refuses(_header_from(dict(zip(_SLOTS, texts, strict=True))), allow_utf8)


_KEYWORD = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)


@given(
    method=_KEYWORD.filter(lambda word: word.lower() != "none"),
    result=_KEYWORD,
    ptype=_KEYWORD,
    name=_KEYWORD,
    value=_HOSTILE,
    version=st.none() | st.from_regex(r"[0-9]{1,3}", fullmatch=True),
)
def test_any_keywords_round_trip(
    method: str, result: str, ptype: str, name: str, value: str, version: str | None
) -> None:
    resinfo = ResInfo(
        method, result, properties=(Property(ptype, name, value),), method_version=version
    )
    _assert_round_trips_or_refuses(AuthenticationResults("example.com", (resinfo,), version), True)
