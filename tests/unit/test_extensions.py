"""The pure rules of arproxy.extensions and arproxy.idn, each expectation from its RFC."""

from __future__ import annotations

import pytest

from arproxy import extensions
from arproxy.authres import (
    AuthenticationResults,
    FormatError,
    Property,
    ResInfo,
    format_field,
    parse,
    with_a_labels,
)
from arproxy.extensions import (
    DOWNSTREAM_LACKS_8BITMIME,
    DOWNSTREAM_LACKS_SMTPUTF8,
    DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS,
    NOT_ASCII_WITHOUT_SMTPUTF8,
    RECIPIENT_NOT_UTF8,
    SENDER_NOT_UTF8,
    DownstreamPlan,
    Parameter,
    ParameterSyntaxError,
    address_refusal,
    content_refusal,
    offered_keywords,
    parse_parameters,
    plan_downstream,
    screen_parameters,
)
from arproxy.idn import address_with_a_labels, to_a_labels

OURS = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "PIPELINING", "HELP"})


def test_offered_keywords_skip_the_greeting() -> None:
    lines = ["250-mx.example.com", "250-SIZE 1000", "250-8BITMIME", "250-AUTH PLAIN", "250 HELP"]
    assert offered_keywords(lines) == {"SIZE", "8BITMIME", "AUTH", "HELP"}


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["SIZE=10", "body=8bitmime"], [Parameter("SIZE", "10"), Parameter("BODY", "8bitmime")]),
        (["SMTPUTF8"], [Parameter("SMTPUTF8", None)]),
        (["MT-PRIORITY=3"], [Parameter("MT-PRIORITY", "3")]),  # RFC 5321 4.1.2: "-" allowed
        (["X-ÜBER=wert"], None),  # keywords are ASCII
        (["ORCPT=utf-8;bücher"], [Parameter("ORCPT", "utf-8;bücher")]),  # RFC 6531 3.3
        (["-X=1"], None),  # a keyword starts with a letter or digit
        (["X_Y=1"], None),
        (["X="], None),  # esmtp-value = 1*char
        (["X=a=b"], None),  # "=" is not an esmtp-value character
        (["X=\x7f"], None),
        (["X=\udcfc"], None),  # a byte that was not UTF-8
        (["SIZE=1", "size=2"], None),  # one meaning per keyword
    ],
)
def test_parse_parameters(words: list[str], expected: list[Parameter] | None) -> None:
    if expected is None:
        with pytest.raises(ParameterSyntaxError):
            parse_parameters(words)
    else:
        assert parse_parameters(words) == expected


@pytest.mark.parametrize(
    ("verb", "word", "offered", "accepted"),
    [
        ("MAIL", "SIZE=10", OURS, True),
        ("MAIL", "BODY=8BITMIME", OURS, True),
        ("MAIL", "SMTPUTF8", OURS, True),
        ("MAIL", "SIZE=10", OURS - {"SIZE"}, False),  # RFC 5321 4.1.1.11: not offered
        ("MAIL", "AUTH=<>", OURS, False),  # RFC 4954 section 5: only with AUTH offered
        ("MAIL", "AUTH=<>", OURS | {"AUTH"}, True),
        ("MAIL", "RET=HDRS", OURS, False),  # RFC 3461: DSN not offered
        ("MAIL", "ENVID=x", OURS, False),
        ("MAIL", "MT-PRIORITY=3", OURS, False),
        ("MAIL", "REQUIRETLS", OURS, False),
        ("MAIL", "BY=120;R", OURS, False),
        ("MAIL", "HOLDFOR=60", OURS, False),
        ("MAIL", "X-FOO=bar", OURS, False),
        ("RCPT", "NOTIFY=NEVER", OURS, False),
        ("RCPT", "ORCPT=rfc822;a@b.example", OURS, False),
        ("RCPT", "SMTPUTF8", OURS, False),  # a MAIL parameter only
    ],
)
def test_screen_parameters(verb: str, word: str, offered: frozenset[str], accepted: bool) -> None:
    screened = screen_parameters(verb, parse_parameters([word]), offered)
    assert (len(screened.accepted), len(screened.not_offered)) == ((1, 0) if accepted else (0, 1))


@pytest.mark.parametrize("value", ["<a b>", "<a+2b@x>", "", "<\u00fc@x>"])
def test_auth_value_must_be_xtext(value: str) -> None:
    """RFC 4954 section 5 / RFC 3461 section 4: xtext, "+" and two upper-case hex digits."""
    parameters = [Parameter("AUTH", value)]
    with pytest.raises(ParameterSyntaxError):
        screen_parameters("MAIL", parameters, OURS | {"AUTH"})


@pytest.mark.parametrize(
    ("address", "smtputf8", "sender", "expected"),
    [
        ("alice@example.org", False, True, None),
        ("jürgen@example.org", False, True, NOT_ASCII_WITHOUT_SMTPUTF8),  # RFC 6531 3.5
        ("bob@bücher.example", False, False, NOT_ASCII_WITHOUT_SMTPUTF8),
        ("jürgen@example.org", True, True, None),
        ("j\udcfcrgen@example.org", True, True, SENDER_NOT_UTF8),
        ("j\udcfcrgen@example.org", False, False, RECIPIENT_NOT_UTF8),
    ],
)
def test_address_refusal(address: str, smtputf8: bool, sender: bool, expected: object) -> None:
    assert address_refusal(address, smtputf8=smtputf8, sender=sender) == expected


@pytest.mark.parametrize(
    ("options", "downstream", "carried", "refusal"),
    [
        (["BODY=8BITMIME"], {"8BITMIME"}, ("BODY=8BITMIME",), None),  # RFC 6152 section 2
        (["BODY=7BIT"], {"8BITMIME"}, ("BODY=7BIT",), None),
        (["BODY=8BITMIME"], set(), (), None),  # not offered: not sent; content decides
        (["SIZE=100"], {"SIZE"}, ("SIZE=100",), None),  # RFC 1870 section 6
        (["SIZE=100"], set(), (), None),
        (["AUTH=<>"], {"AUTH"}, (), None),  # not passed on
        (["SMTPUTF8"], {"SMTPUTF8", "8BITMIME"}, ("SMTPUTF8",), None),
        (["SMTPUTF8"], {"8BITMIME"}, (), DOWNSTREAM_LACKS_SMTPUTF8),  # RFC 6531 3.4
    ],
)
def test_plan_downstream(
    options: list[str], downstream: set[str], carried: tuple[str, ...], refusal: object
) -> None:
    plan = plan_downstream("a@example.org", "b@example.com", options, downstream)
    assert plan.refusal == refusal
    if refusal is None:
        assert plan.options == carried
        assert plan.smtputf8 == ("SMTPUTF8" in options)


def test_plan_downstream_non_ascii_address_without_smtputf8_downstream() -> None:
    """RFC 6531 section 3.5: the address itself cannot go on: 553 5.6.7."""
    for sender, recipient in [("jürgen@x.example", "b@example.com"), ("a@x.example", "b@bü.de")]:
        plan = plan_downstream(sender, recipient, ["SMTPUTF8"], {"8BITMIME"})
        assert plan.refusal == DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS


@pytest.mark.parametrize(
    ("message", "eight_bit_ok", "refused"),
    [
        (b"Subject: x\r\n\r\nascii\r\n", False, False),
        ("Subject: x\r\n\r\nGrüße\r\n".encode(), False, True),  # RFC 6152 section 3
        ("Subject: Grüße\r\n\r\nascii\r\n".encode(), False, True),
        ("Subject: x\r\n\r\nGrüße\r\n".encode(), True, False),
    ],
)
def test_content_refusal(message: bytes, eight_bit_ok: bool, refused: bool) -> None:
    plan = DownstreamPlan((), False, eight_bit_ok)
    assert content_refusal(message, plan) == (DOWNSTREAM_LACKS_8BITMIME if refused else None)


def test_is_smtputf8() -> None:
    assert extensions.is_smtputf8(["BODY=8BITMIME", "SMTPUTF8"])
    assert not extensions.is_smtputf8(["BODY=8BITMIME"])


# --- IDN ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("bücher.example", "xn--bcher-kva.example"),  # RFC 5890 section 2.3.2.1
        ("BÜCHER.Example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("faß.example", None),  # IDNA 2003 "fass", IDNA 2008 "xn--fa-hia": ambiguous
        ("\uff45xample.com", None),  # a full-width letter, mapped by IDNA 2003
        ("bü cher.example", None),  # no host name label
        ("example.com", "example.com"),
    ],
)
def test_to_a_labels(domain: str, expected: str | None) -> None:
    assert to_a_labels(domain) == expected


def test_address_with_a_labels_keeps_the_local_part() -> None:
    assert address_with_a_labels("José@Bücher.example") == "José@xn--bcher-kva.example"
    assert address_with_a_labels("postmaster") == "postmaster"
    assert address_with_a_labels("a@faß.example") is None


# --- Authentication-Results values (RFC 8616) -----------------------------------------


def _field(*properties: Property) -> AuthenticationResults:
    return AuthenticationResults("mx.example.com", (ResInfo("spf", "pass", properties=properties),))


def test_utf8_values_are_written_as_they_are_under_smtputf8() -> None:
    """RFC 8616 section 3 and RFC 6532 section 3: an SMTPUTF8 message's header may carry
    U-labels and UTF-8 local parts; what we write parses back to the same values."""
    header = _field(
        Property("smtp", "mailfrom", "jürgen@bücher.example"),
        Property("header", "from", "bücher.example"),
    )
    written = format_field(header, allow_utf8=True)
    assert parse(written.split(":", 1)[1]) == header


def test_without_smtputf8_domains_become_a_labels() -> None:
    """The same domains (RFC 8616 section 3) in the form an ASCII header can carry."""
    header = _field(
        Property("smtp", "mailfrom", "postmaster@bücher.example"),
        Property("header", "d", "bücher.example"),
        Property("smtp", "auth", "jürgen"),  # no domain: left alone
    )
    converted = with_a_labels(header)
    values = [p.value for p in converted.results[0].properties]
    assert values == ["postmaster@xn--bcher-kva.example", "xn--bcher-kva.example", "jürgen"]
    with pytest.raises(FormatError):
        format_field(converted)  # "jürgen" has no ASCII form
    ascii_only = _field(Property("header", "from", "bücher.example"))
    written = format_field(with_a_labels(ascii_only))
    assert written.isascii() and "header.from=xn--bcher-kva.example" in written


def test_utf8_local_part_has_no_ascii_form() -> None:
    header = with_a_labels(_field(Property("smtp", "mailfrom", "jürgen@bücher.example")))
    assert header.results[0].properties[0].value == "jürgen@xn--bcher-kva.example"
    with pytest.raises(FormatError):
        format_field(header)
