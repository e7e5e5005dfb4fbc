"""Header surgery: forged Authentication-Results fields go, everything else stays byte-exact.

Our id here is example.com, and we trust every subdomain of trusted.example. The forged
spellings below are all ways a field can claim one of those ids to a reader; the kept fields
are those that claim another id or are not Authentication-Results fields at all.

Decisions: X-Authentication-Results, ARC-Authentication-Results and Original-Authentication-
Results are other fields and are kept (ARC ones are sealed; changing them breaks the chain).
A field whose lenient id is another id is kept even if our id appears later in it.
"""

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import (
    AuthenticationResults,
    Property,
    ResInfo,
    authserv_id_matches,
    format_field,
    normalize_authserv_id,
    recover_authserv_id,
)
from arproxy.rewrite import ForgeryPolicy, RewriteOutcome, rewrite_header

OWN_IDS = ("example.com", ".trusted.example")
POLICY = ForgeryPolicy(own_ids=OWN_IDS)
RENAME = ForgeryPolicy(own_ids=OWN_IDS, action="rename")

FORGED: dict[str, bytes] = {
    "plain": b"Authentication-Results: example.com; spf=pass smtp.mailfrom=example.net\r\n",
    "name lower-case": b"authentication-results: example.com; none\r\n",
    "name upper-case": b"AUTHENTICATION-RESULTS: example.com; none\r\n",
    "name mixed case": b"aUtHeNtIcAtIoN-rEsUlTs: example.com; none\r\n",
    "SP before colon": b"Authentication-Results  : example.com; none\r\n",
    "HT before colon": b"Authentication-Results\t: example.com; none\r\n",
    "no space after colon": b"Authentication-Results:example.com; none\r\n",
    "folded before id": b"Authentication-Results:\r\n example.com; none\r\n",
    "folded after id": b"Authentication-Results: example.com\r\n\t; dkim=pass\r\n",
    "tab folding": b"Authentication-Results:\r\n\texample.com;\r\n\tdkim=pass header.d=x.ex\r\n",
    "comment before id": b"Authentication-Results: (trusted) example.com; none\r\n",
    "nested comment before id": b"Authentication-Results: (a (b) \\) c) example.com; none\r\n",
    "folded comment before id": b"Authentication-Results: (a\r\n b) example.com; none\r\n",
    "comment after id": b"Authentication-Results: example.com (our MTA); none\r\n",
    "comment glued to id": b"Authentication-Results: example.com(c); none\r\n",
    "quoted-string id": b'Authentication-Results: "example.com"; none\r\n',
    "quoted-string id with escapes": b'Authentication-Results: "exam\\ple.com"; none\r\n',
    "quoted id with spaces": b'Authentication-Results: " example.com "; none\r\n',
    "id upper-case": b"Authentication-Results: EXAMPLE.COM; none\r\n",
    "id mixed case": b"Authentication-Results: Example.Com; dkim=pass\r\n",
    "trailing dot": b"Authentication-Results: example.com.; none\r\n",
    "version token": b"Authentication-Results: example.com 1; dkim=pass\r\n",
    "unknown version": b"Authentication-Results: example.com 2; dkim=pass\r\n",
    "none upper-case": b"Authentication-Results: example.com; NONE\r\n",
    "malformed remainder": b"Authentication-Results: example.com; dkim=pass header.b=ab/cd;\r\n",
    "garbage remainder": b"Authentication-Results: example.com garbage garbage\r\n",
    "id only": b"Authentication-Results: example.com\r\n",
    "id only, no line end": b"Authentication-Results: example.com",
    "empty result list": b"Authentication-Results: example.com;\r\n",
    "unbalanced quote": b'Authentication-Results: "example.com; dkim=pass\r\n',
    "unbalanced comment before id": b"Authentication-Results: (x example.com; dkim=pass\r\n",
    "unclosed comment after id": b"Authentication-Results: example.com (c; dkim=pass\r\n",
    "subdomain of trusted": b"Authentication-Results: mx1.trusted.example; dkim=pass\r\n",
    "deep subdomain, case, dot": b"Authentication-Results: A.B.Trusted.Example.; none\r\n",
    "port after id": b"Authentication-Results: example.com:25; none\r\n",
    "job id after id": b"Authentication-Results: example.com/1; dmarc=pass\r\n",
    "bracketed id": b"Authentication-Results: [example.com]; none\r\n",
    "angle-bracketed id": b"Authentication-Results: <example.com>; none\r\n",
    "zero-width space in id": "Authentication-Results: exam\u200bple.com; none\r\n".encode(),
    "full-width id": "Authentication-Results: \uff45\uff58ample.\uff43om; none\r\n".encode(),
    "ideographic dot": "Authentication-Results: example\u3002com; none\r\n".encode(),
    "undecodable byte after id": b"Authentication-Results: example.com\xff; none\r\n",
    "undecodable byte in name area": b"Authentication-Results: \xffexample.com; none\r\n",
    "NUL after id": b"Authentication-Results: example.com\x00; none\r\n",
    "bare CR inside value": b"Authentication-Results: example.com;\r dkim=pass\r\n",
}

KEPT: dict[str, bytes] = {
    "other id": b"Authentication-Results: other.example; dkim=pass header.d=example.com\r\n",
    "our id as a suffix label": b"Authentication-Results: example.com.evil.net; none\r\n",
    "our id as a string suffix": b"Authentication-Results: notexample.com; none\r\n",
    "parent of a trusted subdomain": b"Authentication-Results: trusted.example; none\r\n",
    "lookalike of trusted": b"Authentication-Results: mx.nottrusted.example; none\r\n",
    "quoted other id": b'Authentication-Results: "other.example"; none\r\n',
    "our id only in a comment": b"Authentication-Results: other.example (example.com); none\r\n",
    "our id in a value": b"Authentication-Results: x.example; spf=pass smtp.helo=example.com\r\n",
    "mailbox as id": b"Authentication-Results: user@example.com; none\r\n",  # id "user"
    "exchange style": (
        b"Authentication-Results: spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com;"
        b" dkim=pass (signature was verified) header.d=example.com;dmarc=pass action=none"
        b" header.from=example.com;\r\n"
    ),
    "exchange style, spaced": b"Authentication-Results: spf = pass smtp.mailfrom=example.com\r\n",
    "ARC-Authentication-Results": b"ARC-Authentication-Results: i=1; example.com; dkim=pass\r\n",
    "X-Authentication-Results": b"X-Authentication-Results: example.com; none\r\n",
    "Original-Authentication-Results": b"Original-Authentication-Results: example.com; none\r\n",
    "longer field name": b"Authentication-Results-Copy: example.com; none\r\n",
    "A-R in another field's value": b"Comments: Authentication-Results: example.com; none\r\n",
    "continuation of another field": b"Subject: hi\r\n Authentication-Results: example.com\r\n",
}

TOP = b"Received: from a.example by b.example; Tue, 1 Oct 2024 10:00:00 +0000\r\n"
BOTTOM = b"Subject: test\r\nFrom: <a@example.org>\r\n"
BODY = b"\r\nbody line\r\nAuthentication-Results: example.com; none\r\n"
OURS = b"Authentication-Results: example.com; spf=pass smtp.mailfrom=example.org\r\n"


def _rewrite(message: bytes, policy: ForgeryPolicy = POLICY) -> RewriteOutcome:
    return rewrite_header(message, [], policy)


@pytest.mark.parametrize("field", FORGED.values(), ids=FORGED.keys())
def test_forged_spelling_is_removed(field: bytes) -> None:
    if not field.endswith(b"\n"):  # a field with no line end can only be last
        outcome = _rewrite(TOP + field)
        assert outcome.message == TOP
    else:
        outcome = _rewrite(TOP + field + BOTTOM + BODY)
        assert outcome.message == TOP + BOTTOM + BODY
    assert len(outcome.removed) == 1
    assert authserv_id_matches(outcome.removed[0], OWN_IDS)


@pytest.mark.parametrize("field", FORGED.values(), ids=FORGED.keys())
def test_forged_spelling_is_renamed(field: bytes) -> None:
    message = TOP + field + BOTTOM + BODY if field.endswith(b"\n") else TOP + field
    outcome = _rewrite(message, RENAME)
    name_length = field.index(b"-") + len(b"-Results")
    renamed = b"Original-Authentication-Results" + field[name_length:]
    assert outcome.message == message.replace(field, renamed)
    assert len(outcome.removed) == 1


@pytest.mark.parametrize("field", KEPT.values(), ids=KEPT.keys())
def test_other_field_is_kept(field: bytes) -> None:
    message = TOP + field + BOTTOM + BODY
    assert _rewrite(message) == RewriteOutcome(message, ())
    assert _rewrite(message, RENAME) == RewriteOutcome(message, ())


def test_removed_lists_recovered_ids_in_header_order() -> None:
    message = (
        FORGED["quoted-string id"] + TOP + FORGED["id upper-case"] + FORGED["subdomain of trusted"]
    )
    assert _rewrite(message).removed == ("example.com", "EXAMPLE.COM", "mx1.trusted.example")


def test_multiple_forged_fields_anywhere_in_the_header() -> None:
    message = (
        FORGED["plain"]
        + TOP
        + FORGED["tab folding"]
        + KEPT["other id"]
        + FORGED["comment before id"]
        + BOTTOM
        + FORGED["id only"]  # the very bottom of the header
        + BODY
    )
    outcome = _rewrite(message)
    assert outcome.message == TOP + KEPT["other id"] + BOTTOM + BODY
    assert len(outcome.removed) == 4


def test_field_after_a_junk_line_is_removed() -> None:
    junk = b"this line is not a header field\r\n"
    continuation = b"  and neither is this one\r\n"
    message = TOP + junk + continuation + FORGED["plain"] + BOTTOM + BODY
    outcome = _rewrite(message)
    assert outcome.message == TOP + junk + continuation + BOTTOM + BODY


def test_bare_lf_message() -> None:
    def lf(data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n")

    message = lf(TOP + FORGED["tab folding"] + KEPT["other id"] + BOTTOM + BODY)
    outcome = rewrite_header(message, [OURS], POLICY)
    assert outcome.message == lf(OURS + TOP + KEPT["other id"] + BOTTOM + BODY)


def test_crlf_message_keeps_crlf_prepends() -> None:
    outcome = rewrite_header(TOP + BOTTOM + BODY, [OURS], POLICY)
    assert outcome.message == OURS + TOP + BOTTOM + BODY


def test_message_without_body_is_all_header() -> None:
    message = TOP + FORGED["plain"] + BOTTOM
    assert _rewrite(message).message == TOP + BOTTOM


def test_body_and_attached_message_are_untouched() -> None:
    attached = (
        b"Content-Type: message/rfc822\r\n\r\n"
        + FORGED["plain"]
        + b"Subject: inner\r\n\r\ninner body\r\n"
    )
    body = b"\r\n--b\r\n" + attached + b"--b--\r\n"
    message = TOP + b'Content-Type: multipart/mixed; boundary="b"\r\n' + FORGED["plain"] + body
    outcome = _rewrite(message)
    assert outcome.message == TOP + b'Content-Type: multipart/mixed; boundary="b"\r\n' + body


def test_prepend_order_and_rename_together() -> None:
    received = b"Received: from c.example by d.example; Tue, 1 Oct 2024 10:00:00 +0000\r\n"
    message = TOP + FORGED["SP before colon"] + BODY
    outcome = rewrite_header(message, [OURS, received], RENAME)
    renamed = b"Original-Authentication-Results  : example.com; none\r\n"
    assert outcome.message == OURS + received + TOP + renamed + BODY


def test_prepend_must_end_with_crlf() -> None:
    with pytest.raises(ValueError, match="CRLF"):
        rewrite_header(TOP, [b"Authentication-Results: example.com; none"], POLICY)


LF_OURS = OURS.replace(b"\r\n", b"\n")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", OURS),
        (b"\r\n", OURS + b"\r\n"),
        (b"\n\n", LF_OURS + b"\n\n"),
        (b"\r", OURS + b"\r"),
        (b":", OURS + b":"),
        (b" x", OURS + b" x"),
        (b"\xff\xfe", OURS + b"\xff\xfe"),
        (TOP + b"\r\n", OURS + TOP + b"\r\n"),
        (FORGED["plain"] * 3, OURS),
        (b"\r\n" + FORGED["plain"], OURS + b"\r\n" + FORGED["plain"]),
    ],
)
def test_edge_messages(message: bytes, expected: bytes) -> None:
    assert rewrite_header(message, [OURS], POLICY).message == expected


# --- the authserv-id comparison ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com.", "example.com"),
        (" example.com\t", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("example.com..", "example.com."),
        ("a\udcff.example", "a\udcff.example"),
        ("x" * 70 + ".ü", "x" * 70 + ".ü"),  # IDNA refuses a 70-octet label: case-folding only
    ],
)
def test_normalize_authserv_id(written: str, normal: str) -> None:
    assert normalize_authserv_id(written) == normal


@pytest.mark.parametrize(
    ("candidate", "trusted", "matches"),
    [
        ("example.com", ["example.com"], True),
        ("Example.COM.", ["example.com"], True),
        ("example.com", ["EXAMPLE.com."], True),
        ("mx.example.com", ["example.com"], False),
        ("mx.example.com", [".example.com"], True),
        ("a.b.example.com", [".example.com"], True),
        ("example.com", [".example.com"], False),
        (".example.com", [".example.com"], False),
        ("notexample.com", [".example.com"], False),
        ("example.com.evil.net", [".example.com", "example.com"], False),
        ("xn--bcher-kva.example", ["bücher.example"], True),
        ("mx.bücher.example", [".xn--bcher-kva.example"], True),
        ("other.example", [], False),
        ("", ["example.com"], False),
    ],
)
def test_authserv_id_matches(candidate: str, trusted: list[str], matches: bool) -> None:
    assert authserv_id_matches(candidate, trusted) is matches


# --- property tests ----------------------------------------------------------------------------

_OTHER_IDS = st.sampled_from(
    ["other.example", "example.com.evil.net", "notexample.com", "trusted.example", "mx.example.org"]
) | st.from_regex(r"[a-z]{1,10}\.(org|net)", fullmatch=True)
_RESULTS = st.lists(
    st.builds(
        ResInfo,
        method=st.sampled_from(["spf", "dkim", "dmarc", "auth"]),
        result=st.sampled_from(["pass", "fail", "none"]),
        properties=st.lists(
            st.builds(
                Property,
                ptype=st.just("smtp"),
                name=st.just("mailfrom"),
                value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
            ),
            max_size=2,
        ).map(tuple),
    ),
    max_size=3,
).map(tuple)


def _other_ar_field(authserv_id: str, results: tuple[ResInfo, ...]) -> bytes:
    return format_field(AuthenticationResults(authserv_id, results)).encode()


def _forged_ar_field(spelling: str, results: tuple[ResInfo, ...]) -> bytes:
    return format_field(AuthenticationResults(spelling, results)).encode()


_OWN_SPELLINGS = st.sampled_from(
    ["example.com", "EXAMPLE.COM", "example.com.", "mx.trusted.example", "A.Trusted.Example."]
)
_PLAIN_FIELDS = st.sampled_from(
    [TOP, BOTTOM, b"Message-ID: <1@example.org>\r\n", b"X-Long: a\r\n\tb\r\n c\r\n"]
) | st.from_regex(rb"X-[A-Za-z]{1,8}: [ -~]{0,40}\r\n", fullmatch=True)
_JUNK_LINES = st.sampled_from([b"not a field\r\n", b">From nobody\r\n"])

_FORGED_FIELDS = st.sampled_from([f for f in FORGED.values() if f.endswith(b"\r\n")]) | st.builds(
    _forged_ar_field, _OWN_SPELLINGS, _RESULTS
)


def _kept(field: bytes) -> tuple[bytes, int, bytes]:
    return field, 0, field


def _forged(field: bytes) -> tuple[bytes, int, bytes]:
    return b"", 1, field


def _after_bare_cr(field: bytes) -> tuple[bytes, int, bytes]:
    """A forged field glued to the line before it by a bare CR (Python's parser splits there)."""
    before = b"X-Before: a\r"
    return before, 1, before + field


# (bytes that must remain, number of forged fields, bytes written into the header)
_FIELD = st.one_of(
    _PLAIN_FIELDS.map(_kept),
    st.sampled_from(list(KEPT.values())).map(_kept),
    st.builds(_other_ar_field, _OTHER_IDS, _RESULTS).map(_kept),
    _JUNK_LINES.map(_kept),
    _FORGED_FIELDS.map(_forged),
    _FORGED_FIELDS.map(_after_bare_cr),
)


@given(
    fields=st.lists(_FIELD, max_size=12),
    body=st.none() | st.binary(max_size=200),
    bare_lf=st.booleans(),
)
def test_random_header_blocks(
    fields: list[tuple[bytes, int, bytes]], body: bytes | None, bare_lf: bool
) -> None:
    def line_ends(data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n") if bare_lf else data

    separator_and_body = b"" if body is None else line_ends(b"\r\n") + body
    message = b"".join(line_ends(written) for _, _, written in fields) + separator_and_body
    prepend = [b"Received: by us.example; Tue, 1 Oct 2024 10:00:00 +0000\r\n"]

    outcome = rewrite_header(message, prepend, POLICY)

    # Exactly the forged fields are gone; every other byte, body included, is where it was.
    our_fields = line_ends(prepend[0]) if message else prepend[0]  # CRLF if nothing to follow
    kept = b"".join(line_ends(remaining) for remaining, _, _ in fields)
    assert outcome.message == our_fields + kept + separator_and_body
    assert len(outcome.removed) == sum(count for _, count, _ in fields)
    # Our own scan finds nothing more to remove.
    assert _rewrite(outcome.message).removed == ()
    # An independent reader (the stdlib parser) sees no field that claims our id.
    parsed = email.message_from_bytes(outcome.message, policy=email.policy.compat32)
    for value in parsed.get_all("Authentication-Results", []):
        recovered = recover_authserv_id(str(value))
        assert recovered is None or not authserv_id_matches(recovered, OWN_IDS)


def test_stdlib_reader_sees_a_field_after_a_bare_cr() -> None:
    """Why the rewrite splits lines at a bare CR too: the stdlib parser does."""
    message = b"X-Before: a\r" + FORGED["plain"] + BODY
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert parsed.get_all("Authentication-Results")
    assert _rewrite(message).message == b"X-Before: a\r" + BODY


@given(st.binary(max_size=300), st.sampled_from([POLICY, RENAME]))
def test_never_raises_on_any_bytes(message: bytes, policy: ForgeryPolicy) -> None:
    outcome = rewrite_header(message, [OURS], policy)
    assert outcome.message.startswith((OURS, LF_OURS))
    if policy.action == "rename":
        assert len(outcome.message) >= len(message)
    else:
        assert len(outcome.message) <= len(message) + len(OURS)


@given(
    fields=st.lists(_FIELD, max_size=8),
    next_hop_id=st.sampled_from(["example.net", "mx.other.example", "example.com.evil.net"]),
)
def test_our_field_survives_a_later_hop_of_another_admd(
    fields: list[tuple[bytes, int, bytes]], next_hop_id: str
) -> None:
    """What we prepend stays in view: a later border (another ADMD) strips its own id,
    never ours, and our field stays the first Authentication-Results a reader sees."""
    message = b"".join(written for _, _, written in fields) + b"\r\nbody\r\n"
    ours = rewrite_header(message, [OURS], POLICY).message
    later = rewrite_header(
        ours, [b"Received: by next.example\r\n"], ForgeryPolicy(own_ids=(next_hop_id,))
    )
    assert later.message.startswith(b"Received: by next.example\r\n" + OURS)
    parsed = email.message_from_bytes(later.message, policy=email.policy.compat32)
    first = parsed.get_all("Authentication-Results", [])[0]
    assert recover_authserv_id(str(first)) == "example.com"
