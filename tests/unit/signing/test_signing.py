"""DKIM signing and ARC sealing, checked by an independent verifier (dkimpy's own
`verify` and `arc_verify`, keys handed to it directly), and the key files."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import dkim
import pytest

from arproxy.checks.arc.result import ArcResult
from arproxy.checks.base import Value
from arproxy.config import HostPort, parse_config
from arproxy.dns import Resolver
from arproxy.signing import Signing, load_signing
from arproxy.signing.arc_seal import ArcSealer, read_chain
from arproxy.signing.dkim_sign import DkimSigner
from arproxy.signing.keys import (
    SigningKey,
    SigningKeyError,
    generate_key,
    load_key,
    txt_record,
    write_key,
)
from arproxy.signing.signature import RECOMMENDED_FIELDS, read_for_signing

from ...dnsserver import KnotServer

KEYS = Path(__file__).parents[2] / "fixtures" / "keys"
OUR_FIELD = (
    "Authentication-Results: example.com;\r\n"
    "\tdkim=none;\r\n"
    "\tspf=pass smtp.mailfrom=example.org\r\n"
)
MESSAGE = (
    b"Received: from somewhere by mx.example.com; Mon, 30 Nov 2026 18:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@elsewhere.example\r\n"
    b"Subject: a test\r\n"
    b"Date: Mon, 30 Nov 2026 18:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello,\r\n\r\nthe body.\r\n"
)
RSA = load_key(KEYS / "rsa2048.pem")
ED25519 = generate_key("ed25519")
LIST_KEY = load_key(KEYS / "rsa1024.pem")  # the earlier hop's (a mailing list's) key


def key_dns(records: dict[str, SigningKey]):  # type: ignore[no-untyped-def]
    """dkimpy's dnsfunc: the key records of `records` (name -> key)."""

    def lookup(name: bytes, timeout: float = 5.0) -> bytes | None:
        key = records.get(name.decode().rstrip("."))
        return None if key is None else key.public_record().encode()

    return lookup


def dkim_sign(message: bytes, key: SigningKey, domain: str = "example.org") -> bytes:
    signer = DkimSigner(frozenset({domain}), "sel", key, RECOMMENDED_FIELDS)
    fields, body = read_for_signing(message)
    return signer.signature(fields, body, domain, 1_700_000_000) + message


@pytest.mark.parametrize("key", [RSA, ED25519], ids=["rsa", "ed25519"])
def test_dkim_signature_verifies_with_dkimpy(key: SigningKey) -> None:
    signed = dkim_sign(MESSAGE, key)
    assert signed.startswith(b"DKIM-Signature: v=1;")
    assert dkim.verify(signed, dnsfunc=key_dns({"sel._domainkey.example.org": key}))


def test_from_is_over_signed_and_a_second_from_breaks_the_signature() -> None:
    # RFC 6376 section 8.15: listing From once more than it appears forbids adding one.
    signed = dkim_sign(MESSAGE, RSA)
    h = re.search(rb"h=([^;]*);", signed.replace(b"\r\n\t", b"")).group(1)  # type: ignore[union-attr]
    assert h.split(b":").count(b"from") == 2
    for name in (b"to", b"subject", b"date", b"message-id"):
        assert name in h.split(b":")
    assert b"received" not in h.split(b":")  # not in RFC 6376 5.4.1's set
    dns = key_dns({"sel._domainkey.example.org": RSA})
    added = signed.replace(b"From: Alice", b"From: Mallory <m@evil.example>\r\nFrom: Alice")
    assert not dkim.verify(added, dnsfunc=dns)


def test_signature_survives_relaxed_changes_and_fails_on_body_change() -> None:
    dns = key_dns({"sel._domainkey.example.org": RSA})
    signed = dkim_sign(MESSAGE, RSA)
    assert dkim.verify(signed.replace(b"Subject: a test", b"Subject:   a  test"), dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"the body", b"the bodY"), dnsfunc=dns)


def seal(message: bytes, cv: bytes, key: SigningKey = RSA, domain: str = "example.com") -> bytes:
    fields, body = read_for_signing(message)
    payload = OUR_FIELD.encode()[len("Authentication-Results:") :].lstrip()
    sealer = ArcSealer(domain, "arc", key)
    return (
        b"".join(sealer.seal(fields, body, read_chain(fields), cv, payload, 1_700_000_000))
        + message
    )


def arc_dns() -> object:
    return key_dns({"arc._domainkey.example.com": RSA, "arc._domainkey.list.example": LIST_KEY})


def test_first_arc_set_verifies_cv_none_and_carries_our_results_exactly() -> None:
    message = OUR_FIELD.encode() + MESSAGE
    sealed = seal(message, b"none")
    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=arc_dns())
    assert cv == dkim.CV_Pass, reason
    assert [r["instance"] for r in results] == [1]
    top = sealed.split(b"\r\n")
    assert top[0].startswith(b"ARC-Seal: i=1;")
    # RFC 8617 4.1.1: the AAR is i=1 then our field's payload, byte for byte.
    aar = b"ARC-Authentication-Results: i=1; " + OUR_FIELD.encode().split(b": ", 1)[1]
    assert aar in sealed
    assert sealed.index(aar) < sealed.index(OUR_FIELD.encode())
    assert b"cv=none" in sealed


def test_second_arc_set_on_a_passing_chain_is_i2_cv_pass() -> None:
    first = seal(OUR_FIELD.encode() + MESSAGE, b"none", LIST_KEY, "list.example")
    second = seal(OUR_FIELD.encode() + first, b"pass")
    cv, results, reason = dkim.arc_verify(second, dnsfunc=arc_dns())
    assert cv == dkim.CV_Pass, reason
    assert [r["instance"] for r in results] == [2, 1]
    assert read_chain(read_for_signing(second)[0]).latest_cv == b"pass"


def test_a_failed_chain_seal_covers_only_its_own_set() -> None:
    # RFC 8617 section 5.1.2: cv=fail; the seal signs only the new set.
    first = seal(OUR_FIELD.encode() + MESSAGE, b"none", LIST_KEY, "list.example")
    broken = first.replace(b"the body", b"another body")
    sealed = seal(OUR_FIELD.encode() + broken, b"fail")
    cv, results, _ = dkim.arc_verify(sealed, dnsfunc=arc_dns())
    assert cv is None  # dkimpy: "ARC-Seal[2] reported failure, the chain is terminated"
    # (dkimpy checks every seal over every set, which 5.1.2 rules out for this one;
    # a verifier stops at cv=fail, RFC 8617 section 5.2 step 2.)
    assert results[0]["ams-valid"] and results[0]["cv"] == b"fail"


def test_cv_must_match_the_instance() -> None:
    with pytest.raises(ValueError, match="cv=pass at i=1"):
        seal(MESSAGE, b"pass")


class _Result:
    def __init__(self, method: str, value: str) -> None:
        self.method = method
        self.value = value


def chain_state(signing: Signing, message: bytes, results: list[_Result]) -> bytes | None:
    return asyncio.run(
        signing._chain_state(message, results, None, None)  # type: ignore[arg-type]
    )


def test_chain_state_for_cv() -> None:
    signing = Signing(arc=ArcSealer("example.com", "arc", RSA))
    assert chain_state(signing, MESSAGE, []) == b"none"
    first = seal(OUR_FIELD.encode() + MESSAGE, b"none")
    # The ARC verification check's verdict is used as given.
    assert chain_state(signing, first, [_Result("arc", "pass")]) == b"pass"
    assert chain_state(signing, first, [_Result("arc", "fail")]) == b"fail"
    # RFC 8617 5.1.1: a chain whose latest seal says cv=fail is not sealed again.
    failed = seal(OUR_FIELD.encode() + first.replace(b"the body", b"x"), b"fail")
    assert chain_state(signing, failed, [_Result("arc", "fail")]) is None
    # An incomplete set (no ARC-Seal at i=1) is a failed chain, whatever was said.
    incomplete = re.sub(rb"ARC-Seal: [^\r]*\r\n(\t[^\r]*\r\n)*", b"", first, count=1)
    assert chain_state(signing, incomplete, [_Result("arc", "pass")]) == b"fail"


def test_stamp_signs_only_authenticated_mail_of_listed_domains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signing = Signing(dkim=DkimSigner(frozenset({"example.org"}), "sel", RSA, RECOMMENDED_FIELDS))

    def stamp(message: bytes, authenticated: bool) -> bytes:
        return asyncio.run(
            signing.stamp(
                message,
                OUR_FIELD,
                [],
                authenticated=authenticated,
                resolver=None,
                pool=None,  # type: ignore[arg-type]
            )
        )

    assert stamp(MESSAGE, False) == MESSAGE
    other = MESSAGE.replace(b"alice@example.org", b"alice@other.example")
    with caplog.at_level("INFO", "arproxy.signing"):
        assert stamp(other, True) == other
    assert "From domain other.example not in dkim_sign.domains" in caplog.text
    signed = stamp(MESSAGE, True)
    assert dkim.verify(signed, dnsfunc=key_dns({"sel._domainkey.example.org": RSA}))


def test_keys_load_and_refuse(tmp_path: Path) -> None:
    assert RSA.bits == 2048 and RSA.algorithm == b"rsa-sha256"
    with pytest.raises(SigningKeyError, match="512-bit RSA key; at least 1024"):
        load_key(KEYS / "rsa512.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(SigningKeyError, match=r"junk\.pem: not an unencrypted PEM private key"):
        load_key(junk)
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_key(tmp_path / "missing.pem")
    written = tmp_path / "s.example.org.key"
    write_key(written, ED25519)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert load_key(written).public_record() == ED25519.public_record()


def test_txt_record_strings_are_at_most_255_octets() -> None:
    # RFC 1035 section 3.3: a character-string is at most 255 octets.
    line = txt_record("example.org", "s1", RSA)
    assert line.startswith('s1._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=')
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == RSA.public_record()
    assert "k=ed25519" in txt_record("example.org", "s1", ED25519)


def test_an_ed25519_arc_key_is_refused(tmp_path: Path) -> None:
    # ARC verifiers (dkimpy's arc_verify, Mail::DKIM) accept only rsa-sha256 seals.
    path = tmp_path / "arc.key"
    write_key(path, ED25519)
    config = parse_config(
        f'[arc]\nseal = true\ndomain = "example.com"\nselector = "arc"\nkey = "{path}"\n', "t"
    )
    with pytest.raises(SigningKeyError, match=r"arc\.key: an Ed25519 key"):
        load_signing(config)


def own_verdict(message: bytes, port: int) -> bytes | None:
    """cv= for `message` when no ARC check ran: arproxy verifies the chain itself,
    its keys fetched from the test Knot through our resolver."""

    async def run() -> bytes | None:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        try:
            signing = Signing(arc=ArcSealer("example.com", "arc", RSA))
            return await signing._chain_state(message, [], resolver, None)
        finally:
            await resolver.close()

    return asyncio.run(run())


def test_own_chain_verification_through_our_resolver(dns_server: KnotServer) -> None:
    # dkim-keys.test publishes tests/fixtures/keys/rsa2048.pem's key at s2048.
    fields, body = read_for_signing(OUR_FIELD.encode() + MESSAGE)
    payload = b"list.example; none\r\n"
    sealer = ArcSealer("dkim-keys.test", "s2048", RSA)
    sealed = (
        b"".join(sealer.seal(fields, body, read_chain(fields), b"none", payload, 1_700_000_000))
        + OUR_FIELD.encode()
        + MESSAGE
    )
    assert own_verdict(sealed, dns_server.port) == b"pass"
    assert own_verdict(sealed.replace(b"the body", b"a body"), dns_server.port) == b"fail"
    # A key that cannot be fetched now (SERVFAIL): no seal, the next hop may judge.
    elsewhere = ArcSealer("host.servfail.test", "s", RSA)
    unknown = (
        b"".join(elsewhere.seal(fields, body, read_chain(fields), b"none", payload, 1_700_000_000))
        + OUR_FIELD.encode()
        + MESSAGE
    )
    assert own_verdict(unknown, dns_server.port) is None


@pytest.mark.parametrize(
    ("verdict", "cv"),
    [
        (ArcResult(Value.PASS), b"pass"),
        (ArcResult(Value.FAIL, reason="seal does not verify"), b"fail"),
        # RFC 8617 section 5.1.1: cv=fail ends the chain at every later hop, so a key
        # that is unavailable for now (a temporary DNS failure) gets no seal at all.
        (ArcResult(Value.FAIL, reason="key lookup failed temporarily", temporary=True), None),
    ],
)
def test_the_arc_checks_verdict_gives_cv_and_a_temporary_failure_no_seal(
    verdict: ArcResult, cv: bytes | None
) -> None:
    chained = seal(OUR_FIELD.encode() + MESSAGE, b"none", LIST_KEY, "list.example")

    async def run() -> bytes | None:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)  # never asked
        try:
            signing = Signing(arc=ArcSealer("example.com", "arc", RSA))
            return await signing._chain_state(chained, [verdict], resolver, None)
        finally:
            await resolver.close()

    assert asyncio.run(run()) == cv
