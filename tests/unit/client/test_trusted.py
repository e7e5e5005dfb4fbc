"""What a mail client may believe: the results of the fields carrying the trusted id.

The claim under test is the one in authres/ids.py: a field a reader trusts is exactly a field
the border would have removed had it come from outside. So behind our rewrite, the only field
a reader trusts is the one we wrote, whatever forgeries the message arrived with.

Decisions: the trusted id is exact (no ".example.com" subdomain pattern); a field that does
not parse strictly is ignored; version "01" is version 1, any other version is ignored.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import Property, ResInfo
from arproxy.client import trusted_results
from arproxy.rewrite import ForgeryPolicy, rewrite_header

from ..test_rewrite import FORGED, KEPT

OUR_ID = "example.com"
BORDER = ForgeryPolicy(own_ids=(OUR_ID, ".trusted.example"))
OURS = (
    b"Authentication-Results: example.com;\r\n"
    b"\tspf=pass smtp.mailfrom=sender.test;\r\n"
    b"\tdkim=pass header.d=sender.test header.s=s2048\r\n"
)
OUR_RESULTS = (
    ResInfo("spf", "pass", properties=(Property("smtp", "mailfrom", "sender.test"),)),
    ResInfo(
        "dkim",
        "pass",
        properties=(Property("header", "d", "sender.test"), Property("header", "s", "s2048")),
    ),
)
HEADER_END = b"Subject: hello\r\nFrom: <a@sender.test>\r\n\r\n"


def message(*fields: bytes, body: bytes = b"body\r\n") -> bytes:
    return b"".join(fields) + HEADER_END + body


def test_trusted_fields_give_their_results_in_order() -> None:
    got = trusted_results(
        message(
            b"Authentication-Results: example.com; iprev=pass policy.iprev=192.0.2.1\r\n",
            b"Authentication-Results: other.example; dkim=pass header.d=bank.example\r\n",
            OURS,
        ),
        OUR_ID,
    )
    iprev = ResInfo("iprev", "pass", properties=(Property("policy", "iprev", "192.0.2.1"),))
    assert got == (iprev, *OUR_RESULTS)


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: EXAMPLE.COM; auth=pass smtp.auth=alice\r\n",
        b"Authentication-Results: example.com.; auth=pass smtp.auth=alice\r\n",
        b'Authentication-Results: "example.com"; auth=pass smtp.auth=alice\r\n',
        b"Authentication-Results: (our border) example.com (c); auth=pass smtp.auth=alice\r\n",
        b"Authentication-Results: example.com 1; auth=pass smtp.auth=alice\r\n",
        b"Authentication-Results: example.com 01; auth=pass smtp.auth=alice\r\n",
        b"authentication-results : example.com; auth=pass smtp.auth=alice\r\n",
        b"Authentication-Results:\r\n example.com;\r\n\tauth=pass\r\n  smtp.auth=alice\r\n",
        b"Authentication-Results: example.com;\n auth=pass smtp.auth=alice\n",  # bare LF
        b"Authentication-Results: example.com; auth=pass (ok) smtp.auth=alice (c)\r\n",
    ],
)
def test_spellings_of_the_trusted_id_compare_as_the_border_compares(field: bytes) -> None:
    expected = (ResInfo("auth", "pass", properties=(Property("smtp", "auth", "alice"),)),)
    assert trusted_results(message(field), OUR_ID) == expected


def test_a_u_label_id_matches_its_a_label_spelling() -> None:
    field = b"Authentication-Results: xn--bcher-kva.example; dkim=none\r\n"
    assert trusted_results(message(field), "b\u00fccher.example") == (ResInfo("dkim", "none"),)


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: example.com 2; dkim=pass header.d=bank.example\r\n",
        b"Authentication-Results: example.com; dkim=pass (unclosed comment\r\n",
        b"Authentication-Results: example.com; dkim=pass header.b=ab/cd;\r\n",
        b"Authentication-Results: example.com garbage; dkim=pass\r\n",
        b"Authentication-Results: example.com\r\n",
        b"Authentication-Results: mx.example.com; dkim=pass\r\n",  # exact id, not subdomains
        b"Authentication-Results: example.com.evil.net; dkim=pass\r\n",
        b"Authentication-Results: example.com; none\r\n",
        b"X-Authentication-Results: example.com; dkim=pass\r\n",
        b"ARC-Authentication-Results: i=1; example.com; dkim=pass\r\n",
    ],
)
def test_fields_a_reader_does_not_act_on(field: bytes) -> None:
    assert trusted_results(message(field), OUR_ID) == ()


def test_fields_in_the_body_and_in_attached_messages_are_not_trusted() -> None:
    attached = (
        b"Content-Type: message/rfc822\r\n\r\n"
        b"Authentication-Results: example.com; dkim=pass header.d=bank.example\r\n"
        b"Subject: inner\r\n\r\ninner body\r\n"
    )
    assert trusted_results(message(body=attached), OUR_ID) == ()
    assert trusted_results(message(OURS, body=attached), OUR_ID) == OUR_RESULTS


@pytest.mark.parametrize("authserv_id", ["", "  ", ".example.com"])
def test_the_trusted_id_must_be_one_exact_id(authserv_id: str) -> None:
    with pytest.raises(ValueError, match=r"empty|subdomain pattern"):
        trusted_results(message(OURS), authserv_id)


@pytest.mark.parametrize("field", FORGED.values(), ids=FORGED.keys())
def test_no_forged_spelling_is_trusted_behind_the_border(field: bytes) -> None:
    incoming = message(field) if field.endswith(b"\n") else field
    delivered = rewrite_header(incoming, [OURS], BORDER).message
    assert trusted_results(delivered, OUR_ID) == OUR_RESULTS
    assert trusted_results(delivered, "mx1.trusted.example") == ()


@pytest.mark.parametrize("field", KEPT.values(), ids=KEPT.keys())
def test_no_field_the_border_keeps_is_trusted(field: bytes) -> None:
    assert trusted_results(message(field), OUR_ID) == ()


_INCOMING_FIELD = st.sampled_from(
    [field for field in (*FORGED.values(), *KEPT.values()) if field.endswith(b"\n")]
    + [b"Received: from a.example by b.example\r\n", b"X-Junk line without colon\r\n"]
)


@given(fields=st.lists(_INCOMING_FIELD, max_size=10), bare_lf=st.booleans())
def test_behind_the_border_only_our_field_is_trusted(fields: list[bytes], bare_lf: bool) -> None:
    incoming = message(*fields)
    if bare_lf:
        incoming = incoming.replace(b"\r\n", b"\n")
    delivered = rewrite_header(incoming, [OURS], BORDER).message
    assert trusted_results(delivered, OUR_ID) == OUR_RESULTS


@given(st.binary(max_size=300))
def test_never_raises_on_any_bytes(data: bytes) -> None:
    assert isinstance(trusted_results(data, OUR_ID), tuple)
