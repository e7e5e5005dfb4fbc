"""The dkim check against real key records (tests/fixtures/zones/dkim-*.test.zone, Knot).

Messages are signed at test time with dkimpy and the keys in tests/fixtures/keys; the
signatures are then edited where a test needs a defect dkimpy would not sign.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import AuthenticationResults, Property, format_field, parse
from arproxy.checks.base import CheckContext, Stage, Value
from arproxy.checks.dkim import CHECK, DkimResult, check, dkimpy_message, header_b_prefixes
from arproxy.checks.dkim.dkimpy import Verifier, verify_signature
from arproxy.checks.dkim.keys import judge_key
from arproxy.checks.dkim.types import Key
from arproxy.config import HostPort
from arproxy.dns import Resolver
from arproxy.header import read_header

from ...dnsserver import KnotServer

KEYS = Path(__file__).parents[2] / "fixtures" / "keys"
MESSAGE = (
    b"From: Alice <alice@dkim-keys.test>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Lunch\r\n"
    b"Message-ID: <1@dkim-keys.test>\r\n"
    b"\r\n"
    b"Noon at the usual place?\r\n"
)
SIGNED_HEADERS = [b"from", b"to", b"subject"]


def private_key(bits: int) -> bytes:
    return (KEYS / f"rsa{bits}.pem").read_bytes()


def sign(
    message: bytes,
    selector: str,
    domain: str = "dkim-keys.test",
    *,
    bits: int = 2048,
    algorithm: bytes = b"rsa-sha256",
    identity: bytes | None = None,
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"),
) -> bytes:
    """`message` with one more DKIM-Signature on top."""
    signature: bytes = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_key(bits),
        identity=identity,
        signature_algorithm=algorithm,
        include_headers=SIGNED_HEADERS,
        canonicalize=canonicalize,
    )
    return signature + message


def edit_tag(message: bytes, pattern: bytes, replacement: bytes) -> bytes:
    """Rewrite the first (top) signature's tags; `pattern` starts at a tag name."""
    edited, count = re.subn(rb"(?<=[\s;])" + pattern, replacement, message, count=1)
    assert count == 1, pattern
    return edited


def run_dkim(
    port: int, message: bytes, *, max_signatures: int = 5, timeout: float = 1.0
) -> tuple[DkimResult, ...]:
    results, _ = run_dkim_counting(port, message, max_signatures=max_signatures, timeout=timeout)
    return results


def run_dkim_counting(
    port: int, message: bytes, *, max_signatures: int = 5, timeout: float = 1.0
) -> tuple[tuple[DkimResult, ...], int]:
    """The results and how many DNS queries the check sent."""

    async def go() -> tuple[tuple[DkimResult, ...], int]:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=timeout)
        ctx = CheckContext(client_ip="127.0.0.2", message=message)
        try:
            results = await check(ctx, resolver, max_signatures=max_signatures)
        finally:
            await resolver.close()
        return results, resolver.queries_sent

    return asyncio.run(go())


def run_one(port: int, message: bytes) -> DkimResult:
    (result,) = run_dkim(port, message)
    return result


def written(*results: DkimResult) -> str:
    """The field we would write, unfolded (one line, no CRLF) for substring checks."""
    return re.sub(r"\r\n[ \t]+", " ", formatted(*results)).removesuffix("\r\n")


def formatted(*results: DkimResult) -> str:
    resinfos = tuple(r.to_resinfo() for r in results)
    return format_field(AuthenticationResults("mx.example.org", resinfos))


def parsed_back(*results: DkimResult) -> AuthenticationResults:
    field = formatted(*results)
    return parse(field.split(":", 1)[1])


# --- results by the key record -------------------------------------------------------


@pytest.mark.parametrize("bits", [1024, 2048, 4096])
def test_pass_reports_the_signature_and_the_key_size(dns_server: KnotServer, bits: int) -> None:
    message = sign(MESSAGE, f"s{bits}", bits=bits)
    result = run_one(dns_server.port, message)
    assert (result.value, result.keysize, result.reason) == (Value.PASS, bits, None)
    assert (result.domain, result.identity, result.selector, result.algorithm) == (
        "dkim-keys.test",
        "@dkim-keys.test",
        f"s{bits}",
        "rsa-sha256",
    )
    b_value = re.search(rb"(?<=[\s;])b=([^;]*)", message)
    assert b_value is not None
    assert result.b_prefix == re.sub(rb"\s+", b"", b_value.group(1))[:8].decode()
    assert f"dkim=pass ({bits}-bit key) header.d=dkim-keys.test" in written(result)


@pytest.mark.parametrize(
    "selector",
    [
        "multi",  # a TXT record that is not a key, then the key: the key is used
        "alias",  # the key behind a CNAME
        "services",  # s=email:tlsrpt, a list that includes e-mail
    ],
)
def test_pass_through_the_less_common_key_records(dns_server: KnotServer, selector: str) -> None:
    result = run_one(dns_server.port, sign(MESSAGE, selector))
    assert (result.value, result.keysize) == (Value.PASS, 2048)


@pytest.mark.parametrize(
    ("selector", "domain", "bits", "reason"),
    [
        ("missing", "dkim-keys.test", 2048, "no key for signature"),  # NXDOMAIN
        ("nodata", "dkim-keys.test", 2048, "no key for signature"),  # a name without TXT
        ("malformed", "dkim-broken.test", 2048, "key syntax error"),
        ("badversion", "dkim-broken.test", 2048, "key syntax error"),
        ("revoked", "dkim-broken.test", 2048, "key revoked"),
        ("small", "dkim-broken.test", 512, "key too small"),
        ("ed25519", "dkim-broken.test", 2048, "inappropriate key algorithm"),
        ("tlsrpt", "dkim-broken.test", 2048, "key not for e-mail"),
        ("sha1only", "dkim-broken.test", 2048, "inappropriate hash algorithm"),
    ],
)
def test_permerror_for_a_key_that_cannot_be_used(
    dns_server: KnotServer, selector: str, domain: str, bits: int, reason: str
) -> None:
    result = run_one(dns_server.port, sign(MESSAGE, selector, domain, bits=bits))
    assert (result.value, result.reason) == (Value.PERMERROR, reason)
    assert (result.domain, result.selector) == (domain, selector)
    assert f'dkim=permerror reason="{reason}" header.d={domain}' in written(result)


def test_key_too_small_claims_no_key_size(dns_server: KnotServer) -> None:
    result = run_one(dns_server.port, sign(MESSAGE, "small", "dkim-broken.test", bits=512))
    assert result.keysize is None  # not a key we verify with: no "(512-bit key)" claim
    assert "bit key" not in written(result)


def test_strict_key_refuses_a_subdomain_identity(dns_server: KnotServer) -> None:
    sub = sign(MESSAGE, "strict", "dkim-broken.test", identity=b"@mail.dkim-broken.test")
    same = sign(MESSAGE, "strict", "dkim-broken.test", identity=b"@dkim-broken.test")
    assert run_one(dns_server.port, sub).reason == "i= domain not allowed by key (t=s)"
    assert run_one(dns_server.port, same).value is Value.PASS


def test_ed25519_signature_needs_pynacl(dns_server: KnotServer) -> None:
    message = (
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=dkim-broken.test; s=ed25519; h=from;\r\n"
        b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAAAAAAAAAA\r\n" + MESSAGE
    )
    result = run_one(dns_server.port, message)
    if importlib.util.find_spec("nacl") is None:
        assert (result.value, result.reason) == (Value.PERMERROR, "ed25519 not supported")
    else:
        assert result.value is Value.FAIL  # the key is usable; the signature is junk


# --- results by the message and the signature ---------------------------------------------


def test_tampered_body_fails(dns_server: KnotServer) -> None:
    message = sign(MESSAGE, "s2048").replace(b"Noon", b"Midnight")
    result = run_one(dns_server.port, message)
    assert (result.value, result.reason, result.keysize) == (
        Value.FAIL,
        "body hash did not verify",
        2048,
    )


def test_tampered_header_fails(dns_server: KnotServer) -> None:
    message = sign(MESSAGE, "s2048").replace(b"Subject: Lunch", b"Subject: Wire money")
    result = run_one(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "signature did not verify")


def test_a_second_from_field_fails(dns_server: KnotServer) -> None:
    # An added From above the signed one: dkimpy also hashes the extra instance.
    message = sign(MESSAGE, "s2048").replace(b"From:", b"From: ceo@bank.test\r\nFrom:", 1)
    assert run_one(dns_server.port, message).value is Value.FAIL


def test_wrong_key_fails(dns_server: KnotServer) -> None:
    # Signed with the 1024-bit key, published key is the 2048-bit one.
    result = run_one(dns_server.port, sign(MESSAGE, "s2048", bits=1024))
    assert (result.value, result.reason, result.keysize) == (
        Value.FAIL,
        "signature did not verify",
        2048,
    )


@pytest.mark.parametrize(
    ("pattern", "replacement", "reason"),
    [
        (rb"h=[^;]*;", b"h=to : subject;", "From field not signed"),
        (rb"bh=[^;]*;", b"", "signature missing required tag"),
        (rb"a=rsa-sha256;", b"a=rsa-sha512;", "unknown algorithm"),
        (rb"v=1;", b"v=2;", "incompatible version"),
        (rb"t=\d+;", b"t=999999999; x=1000000000;", "signature expired"),
        (rb"t=\d+;", b"t=9999999999;", "signature timestamp in the future"),
        (rb"i=[^;]*;", b"i=@example.net;", "i= not within d="),
        (rb"c=[^;]*;", b"c=odd/simple;", "signature syntax error"),
        (rb"d=[^;]*;", b"d=dkim-keys.test; d=again.test;", "signature syntax error"),
        # dkimpy crashes on these (IndexError, ValueError): still one permerror each.
        (rb"i=[^;]*;", b"i=dkim-keys.test;", "signature syntax error"),
        (rb"q=[^;]*;", b"q=dns/txt; l=;", "signature syntax error"),
        (rb"s=[^;]*;", b"s=two..dots;", "d= or s= not a domain name"),
    ],
)
def test_permerror_for_a_signature_that_cannot_be_checked(
    dns_server: KnotServer, pattern: bytes, replacement: bytes, reason: str
) -> None:
    message = edit_tag(sign(MESSAGE, "s2048"), pattern, replacement)
    result = run_one(dns_server.port, message)
    assert (result.value, result.reason) == (Value.PERMERROR, reason)


def test_rsa_sha1_is_not_accepted(dns_server: KnotServer) -> None:
    message = sign(MESSAGE, "s2048", algorithm=b"rsa-sha1")
    result = run_one(dns_server.port, message)
    assert (result.value, result.reason, result.algorithm) == (
        Value.PERMERROR,
        "rsa-sha1 not accepted",
        "rsa-sha1",
    )


def test_unsigned_message_is_none(dns_server: KnotServer) -> None:
    result = run_one(dns_server.port, MESSAGE)
    assert result == DkimResult(Value.NONE)
    assert written(result).endswith("; dkim=none")


def test_a_line_that_is_not_a_field_is_not_hashed(dns_server: KnotServer) -> None:
    """Formerly permerror "message header not parsable" (dkimpy's own splitter refused the
    whole message). The stray line belongs to no field, so no signer hashed it; the signed
    fields are intact: pass (RFC 6376 section 5.4, only the fields of h= are hashed)."""
    broken = b"Not a header field\r\n" + MESSAGE
    assert run_one(dns_server.port, broken) == DkimResult(Value.NONE)
    signed_broken = b"Not a header field\r\n" + sign(MESSAGE, "s2048")
    assert run_one(dns_server.port, signed_broken).value is Value.PASS


# --- the header as arproxy reads it (arproxy.header), not as dkimpy would split it ----------

SUBJECT = b"Subject: Lunch\r\n"
SPACED_SUBJECT = b"Subject : Lunch\r\n"


def test_relaxed_signature_over_a_subject_with_space_before_the_colon(
    dns_server: KnotServer,
) -> None:
    """RFC 6376 section 3.4.2: relaxed header canonicalisation deletes the white space
    before the colon, so ``Subject : Lunch`` hashes as ``subject:Lunch``, exactly as
    ``Subject: Lunch`` does; ``Subject :`` is a Subject field (RFC 5322 section 4.5)."""
    signed = sign(MESSAGE, "s2048", canonicalize=(b"relaxed", b"relaxed"))
    spaced = signed.replace(SUBJECT, SPACED_SUBJECT)
    assert spaced != signed
    assert run_one(dns_server.port, spaced).value is Value.PASS
    # The Subject field is really hashed: another subject fails.
    assert run_one(dns_server.port, spaced.replace(b"Lunch\r\n", b"Dinner\r\n", 1)).value is (
        Value.FAIL
    )


def test_simple_signature_with_an_unsigned_spaced_field_added_on_top(
    dns_server: KnotServer,
) -> None:
    """RFC 6376 section 5.4: a field not in h= is not hashed, whatever its syntax."""
    signed = sign(MESSAGE, "s2048", canonicalize=(b"simple", b"simple"))
    assert run_one(dns_server.port, b"X-Scanned : clean\r\n" + signed).value is Value.PASS


def test_simple_signature_hashes_the_spaced_name_as_sent(dns_server: KnotServer) -> None:
    """RFC 6376 section 3.4.1: simple header canonicalisation hashes the field exactly as
    it is in the message, white space before the colon included. Signed here by hand (the
    RFC's algorithm, not dkimpy's code), so the verifier is checked against the RFC."""
    message = MESSAGE.replace(SUBJECT, SPACED_SUBJECT)
    signed = sign_simple_by_hand(message, "s2048")
    assert run_one(dns_server.port, signed).value is Value.PASS
    # One more space changes the hashed bytes (relaxed would not see it; simple must).
    respaced = signed.replace(SPACED_SUBJECT, b"Subject  : Lunch\r\n")
    assert run_one(dns_server.port, respaced).value is Value.FAIL


def test_a_header_starting_with_white_space_is_never_temporary(dns_server: KnotServer) -> None:
    """Formerly temperror "timeout": dkimpy raised IndexError on the leading continuation
    line and the runner reported its timeout. The stray line belongs to no field (RFC 5322
    section 2.2.3: nothing before it to continue) and is not hashed: the signature passes."""
    signed = sign(MESSAGE, "s2048")
    assert run_one(dns_server.port, b" (authenticated sender)\r\n" + signed).value is Value.PASS


def sign_simple_by_hand(message: bytes, selector: str, domain: str = "dkim-keys.test") -> bytes:
    """A c=simple/simple rsa-sha256 signature over From, To, Subject, computed from RFC 6376
    alone (sections 3.4.1, 3.4.3, 3.7) for a header without folded lines."""
    header, _, body = message.partition(b"\r\n\r\n")
    body = body.rstrip(b"\r\n") + b"\r\n" if body.strip(b"\r\n") else b"\r\n"  # 3.4.3
    lines = [line + b"\r\n" for line in header.split(b"\r\n")]
    hashed: list[bytes] = []
    for name in SIGNED_HEADERS:  # 5.4.2: the last instance of each name, bottom up
        hashed.extend(
            line for line in reversed(lines) if line.split(b":")[0].rstrip().lower() == name
        )
    body_hash = base64.b64encode(hashlib.sha256(body).digest())
    unsigned = (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d="
        + domain.encode()
        + b"; s="
        + selector.encode()
        + b"; h="
        + b":".join(SIGNED_HEADERS)
        + b"; bh="
        + body_hash
        + b"; b="
    )
    key = serialization.load_pem_private_key(private_key(2048), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(b"".join(hashed) + unsigned, padding.PKCS1v15(), hashes.SHA256())
    return unsigned + base64.b64encode(signature) + b"\r\n" + message


def test_dkimpy_reads_the_header_we_set() -> None:
    """The hook arproxy relies on: dkimpy's DKIM object verifies from its ``headers`` and
    ``body`` attributes (filled here by our reader), not from a message of its own. If a
    dkimpy release renames them, this fails (and pyproject pins dkimpy below 1.2)."""
    relaxed = sign(MESSAGE, "s2048", canonicalize=(b"relaxed", b"relaxed"))
    signed = relaxed.replace(SUBJECT, SPACED_SUBJECT)
    record = b"k=rsa; p=" + (KEYS / "rsa2048.pub.b64").read_bytes().strip()

    def verifier(message: bytes) -> dkim.DKIM:
        verifier = dkim.DKIM(b"")
        verifier.headers, verifier.body = dkimpy_message(message, read_header(message))
        return verifier

    def key(name: bytes, timeout: float = 5) -> bytes:
        return record

    assert verifier(signed).verify(dnsfunc=key) is True
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        verifier(signed + b"tampered\r\n").verify(dnsfunc=key)
    with pytest.raises(dkim.MessageFormatError):
        dkim.DKIM(signed)  # dkimpy's own splitter: why we do not let it split


# --- DNS trouble -----------------------------------------------------------------------------


def test_servfail_for_the_key_is_temperror(dns_server: KnotServer) -> None:
    result = run_one(dns_server.port, sign(MESSAGE, "s2048", "servfail.test"))
    assert (result.value, result.reason, result.domain) == (
        Value.TEMPERROR,
        "key lookup failed temporarily",
        "servfail.test",
    )


def test_dns_server_down_is_temperror() -> None:
    server = KnotServer()
    try:
        server.stop()
        (result,) = run_dkim(server.port, sign(MESSAGE, "s2048"), timeout=0.3)
    finally:
        server.close()
    assert (result.value, result.reason) == (Value.TEMPERROR, "key lookup failed temporarily")


def test_syntax_is_judged_before_a_failed_lookup(dns_server: KnotServer) -> None:
    # RFC 6376 6.1.1 comes before 6.1.2: no DNS trouble turns a bad signature into temperror.
    message = edit_tag(sign(MESSAGE, "s2048", "servfail.test"), rb"h=[^;]*;", b"h=subject;")
    results, queries = run_dkim_counting(dns_server.port, message)
    assert [r.value for r in results] == [Value.PERMERROR]
    assert queries == 0


def test_on_timeout_is_one_bare_temperror() -> None:
    (result,) = CHECK.on_timeout(CheckContext(client_ip="192.0.2.1", message=MESSAGE))
    assert isinstance(result, DkimResult)
    assert result.value is Value.TEMPERROR
    assert result.to_resinfo().properties == ()
    assert (CHECK.method, CHECK.stage) == ("dkim", Stage.DATA)


# --- several signatures ---------------------------------------------------------------------


def test_two_signatures_two_results_in_header_order(dns_server: KnotServer) -> None:
    good = sign(MESSAGE, "s2048")
    both = sign(good, "s2048", bits=1024)  # on top, and signed with the wrong key
    first, second = run_dkim(dns_server.port, both)
    assert (first.value, second.value) == (Value.FAIL, Value.PASS)
    assert first.b_prefix is not None and second.b_prefix is not None
    assert not first.b_prefix.startswith(second.b_prefix)
    assert not second.b_prefix.startswith(first.b_prefix)
    resinfos = parsed_back(first, second).results
    assert [(r.method, r.result) for r in resinfos] == [("dkim", "fail"), ("dkim", "pass")]
    assert [p.value for p in resinfos[0].properties if p.name == "b"] == [first.b_prefix]


def test_signatures_beyond_the_limit_are_not_verified(dns_server: KnotServer) -> None:
    message = sign(sign(sign(MESSAGE, "s1024", bits=1024), "s2048"), "missing")
    results, queries = run_dkim_counting(dns_server.port, message, max_signatures=2)
    assert [r.value for r in results] == [Value.PERMERROR, Value.PASS, Value.POLICY]
    assert [r.selector for r in results] == ["missing", "s2048", None]
    assert results[2].reason == "signatures over the limit of 2 not verified: 1"
    assert queries == 2  # the s1024 key was never asked for
    assert written(results[2]).endswith(
        'dkim=policy reason="signatures over the limit of 2 not verified: 1"'
    )


# --- what we write is what we mean ---------------------------------------------------------

HOSTILE_SIGNATURE = (
    b'DKIM-Signature: v=1; a=rsa-sha256; d=evil.test (x) dkim=pass header.d="bank.test";\r\n'
    b' s=sel" ; dkim=pass header.d=bank.test ; i=\\"@evil.test; h=from;\r\n'
    b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAAAAAAAAAA\r\n"
)


def test_hostile_tags_cannot_inject_results(dns_server: KnotServer) -> None:
    (result,) = run_dkim(dns_server.port, HOSTILE_SIGNATURE + MESSAGE)
    assert result.value is Value.PERMERROR
    assert result.domain == 'evil.test (x) dkim=pass header.d="bank.test"'
    assert result.selector == 'sel"'
    header = parsed_back(result)
    (resinfo,) = header.results
    assert (resinfo.method, resinfo.result) == ("dkim", "permerror")
    values = {p.name: p.value for p in resinfo.properties}
    assert (values["d"], values["s"], values["i"]) == (
        result.domain,
        result.selector,
        result.identity,
    )


def test_unwritable_tags_are_left_out(dns_server: KnotServer) -> None:
    signature = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=b\xc3\xa4nk.test; s=a\x01b; h=from;\r\n"
        b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AA!AAAAAAAAA\r\n"
    )
    (result,) = run_dkim(dns_server.port, signature + MESSAGE)
    (resinfo,) = parsed_back(result).results
    assert {p.name for p in resinfo.properties} == {"a"}  # d= non-ASCII, s= control, b= junk


_ANY_TEXT = st.one_of(st.none(), st.text(max_size=40))


@given(d=_ANY_TEXT, i=_ANY_TEXT, s=_ANY_TEXT, a=_ANY_TEXT, b=_ANY_TEXT, reason=_ANY_TEXT)
def test_any_tag_values_write_exactly_one_result(
    d: str | None, i: str | None, s: str | None, a: str | None, b: str | None, reason: str | None
) -> None:
    result = DkimResult(
        Value.FAIL, domain=d, identity=i, selector=s, algorithm=a, b_prefix=b, reason=reason
    )
    (resinfo,) = parsed_back(result).results
    assert (resinfo.method, resinfo.result) == ("dkim", "fail")
    expected = {
        name: value
        for name, value in (("d", d), ("i", i), ("s", s), ("a", a), ("b", b))
        if value and value.isascii() and value.isprintable()
    }
    assert {p.name: p.value for p in resinfo.properties} == expected
    assert all(p.ptype == "header" for p in resinfo.properties)


def test_none_writes_no_properties() -> None:
    assert DkimResult(Value.NONE, domain="example.com").to_resinfo().properties == ()


def test_pass_writes_no_reason() -> None:
    resinfo = DkimResult(Value.PASS, domain="example.com", keysize=2048, reason="x").to_resinfo()
    assert (resinfo.reason, resinfo.comment) == (None, "2048-bit key")
    assert resinfo.properties == (Property("header", "d", "example.com"),)


# --- header.b (RFC 6008) ---------------------------------------------------------------------


def test_header_b_is_eight_characters_when_that_is_unique() -> None:
    assert header_b_prefixes(["ABCDEFGHIJ", "ZYXWVUTSRQ"]) == ["ABCDEFGH", "ZYXWVUTS"]


def test_header_b_grows_until_unique() -> None:
    shared = "A" * 12
    assert header_b_prefixes([shared + "B/x", shared + "C+y", "Q" * 20]) == [
        shared + "B",
        shared + "C",
        "Q" * 8,
    ]


def test_header_b_without_a_unique_prefix_is_the_whole_value() -> None:
    assert header_b_prefixes(["ABCDEFGHIJ", "ABCDEFGHIJ"]) == ["ABCDEFGHIJ", "ABCDEFGHIJ"]
    assert header_b_prefixes(["ABCDEFGHIJ", "ABCDEFGHIJK"]) == ["ABCDEFGHIJ", "ABCDEFGHIJK"]
    assert header_b_prefixes(["ABC"]) == ["ABC"]


def test_header_b_is_left_out_when_missing_or_not_base64() -> None:
    assert header_b_prefixes([None, "AB CD", "", "ABCDEFGHIJ"]) == [None, None, None, "ABCDEFGH"]


_B64 = st.text(alphabet="AB+/", min_size=1, max_size=24)


@given(st.lists(_B64, max_size=8))
def test_header_b_identifies_its_signature(values: list[str]) -> None:
    for value, prefix in zip(values, header_b_prefixes(values), strict=True):
        assert prefix is not None and value.startswith(prefix)
        assert len(prefix) >= min(8, len(value))
        matching = [other for other in values if other.startswith(prefix)]
        shortened = prefix != value
        distinguishable = values.count(value) == 1 and not any(
            other != value and other.startswith(value) for other in values
        )
        if shortened or distinguishable:
            assert matching == [value]


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m,  # verifies
        lambda m: m.replace(b"Subject: Lunch", b"Subject: Dinner"),  # header: fail
        lambda m: m + b"tampered\r\n",  # body hash: fail
        lambda m: edit_tag(m, rb"v=1", b"v=2"),  # permerror before the key
        lambda m: edit_tag(m, rb"a=rsa-sha256", b"a=rsa-sha512"),  # unknown algorithm
    ],
)
def test_the_key_as_dkimpy_read_it_gives_what_dkimpy_verify_gives(
    edit: Callable[[bytes], bytes],
) -> None:
    """The fast path (`Key.evaluated` handed to dkimpy's verify_sig_process) and dkimpy's
    own `verify` (which parses the key record again) give the same outcome, RFC 6376 6.1."""
    message = edit(sign(MESSAGE, "s2048"))
    record = b"k=rsa; p=" + (KEYS / "rsa2048.pub.b64").read_bytes().strip()
    tags = {b"a": b"rsa-sha256", b"d": b"dkim-keys.test", b"s": b"s2048"}
    key = judge_key(record, tags)
    assert key.evaluated is not None
    plain = Key(key.record, key.keysize)  # no reading: dkimpy's verify parses the record

    def outcome(chosen: Key) -> tuple[Value, str] | None:
        verifier = Verifier(message)
        found = asyncio.run(verify_signature(verifier, verifier.signatures()[0], chosen))
        return None if found is None else (found.value, found.reason)

    assert outcome(key) == outcome(plain)
