"""dkimpy's RSA check done by OpenSSL (checks.dkim.rsa) gives dkimpy's verdict on every input,
and a small message is verified on the loop thread (checks.dkim.dkimpy.INLINE_MAX_BYTES).

RFC 8017 section 8.2.2 (RSASSA-PKCS1-v1_5-VERIFY), as RFC 6376 section 3.3.1 uses it; the
expected verdicts are dkimpy's own pure-Python function's, on the same inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from arproxy.checks.base import CheckContext, Value
from arproxy.checks.dkim import check
from arproxy.checks.dkim import rsa as fast_rsa
from arproxy.checks.dkim.dkimpy import INLINE_MAX_BYTES
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer

KEY_PEM = (Path(__file__).parents[2] / "fixtures" / "keys" / "rsa2048.pem").read_bytes()
PURE = dkim.crypto.RSASSA_PKCS1_v1_5_verify


def _key() -> tuple[Any, dict[str, int]]:
    private = serialization.load_pem_private_key(KEY_PEM, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    numbers = private.public_key().public_numbers()
    return private, {"modulus": numbers.n, "publicExponent": numbers.e}


def _variants(signature: bytes, modulus: int) -> list[bytes]:
    """The signature, and every kind of wrong one: flipped bits, other lengths, a value
    not below the modulus, zero, empty."""
    flipped = [
        bytes(b ^ (1 << bit) if i == index else b for i, b in enumerate(signature))
        for index in (0, 1, len(signature) // 2, len(signature) - 1)
        for bit in (0, 7)
    ]
    length = len(signature)
    over = int.from_bytes(signature, "big") + modulus
    return [
        signature,
        *flipped,
        b"\x00" + signature,  # one octet longer, same integer
        signature[1:],
        signature + b"\x00",
        over.to_bytes(length, "big")
        if over.bit_length() <= 8 * length
        else over.to_bytes(length + 1, "big"),
        modulus.to_bytes(length, "big"),
        b"\x00" * length,
        b"",
    ]


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_verdicts_are_dkimpys_on_every_kind_of_signature(algorithm: str) -> None:
    private, public = _key()
    data = b"the signed header fields, canonicalised"
    chosen = hashes.SHA256() if algorithm == "sha256" else hashes.SHA1()
    signature = private.sign(data, padding.PKCS1v15(), chosen)
    for candidate in _variants(signature, public["modulus"]):
        for digest_of in (data, b"other data"):
            expected = PURE(hashlib.new(algorithm, digest_of), candidate, public)
            assert fast_rsa.verify(hashlib.new(algorithm, digest_of), candidate, public) is expected
    assert fast_rsa.verify(hashlib.new(algorithm, data), signature, public) is True
    assert fast_rsa.verify(hashlib.new(algorithm, b"x"), signature, public) is False


def test_a_modulus_too_short_for_the_digest_raises_as_dkimpy_does() -> None:
    small = {"modulus": (1 << 480) + 1, "publicExponent": 65537}  # 61 octets < 51 + 11
    for verify in (PURE, fast_rsa.verify):
        with pytest.raises(dkim.crypto.DigestTooLargeError):
            verify(hashlib.sha256(b"x"), b"\x01" * 61, small)


def test_a_key_openssl_refuses_falls_back_to_dkimpys_arithmetic() -> None:
    _, public = _key()
    even = {"modulus": public["modulus"], "publicExponent": 2}  # OpenSSL: invalid e
    signature = b"\x01" * 256
    assert fast_rsa.verify(hashlib.sha256(b"x"), signature, even) is PURE(
        hashlib.sha256(b"x"), signature, even
    )


def test_install_replaces_the_name_dkimpys_verifier_calls() -> None:
    """dkimpy (pinned < 1.2) calls `dkim.RSASSA_PKCS1_v1_5_verify` from its verify; if that
    name goes, this fails and checks.dkim.rsa must find another way in."""
    assert callable(dkim.RSASSA_PKCS1_v1_5_verify)
    fast_rsa.install()
    fast_rsa.install()
    assert dkim.RSASSA_PKCS1_v1_5_verify is fast_rsa.verify


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="arproxy-dkim")
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


def _signed(body_size: int) -> bytes:
    body = (b"x" * 70 + b"\r\n") * (body_size // 72 + 1)
    message = b"From: alice@sender.test\r\nSubject: size\r\n\r\n" + body
    return dkim.sign(message, b"s2048", b"sender.test", KEY_PEM) + message


@pytest.mark.parametrize(
    ("size", "pool_work"), [(8 * 1024, 0), (INLINE_MAX_BYTES + 1024, 2)], ids=["small", "large"]
)
def test_small_messages_are_verified_on_the_loop_large_ones_in_the_pool(
    dns_server: KnotServer, size: int, pool_work: int
) -> None:
    async def go() -> tuple[Value, int]:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        pool = CountingPool()
        try:
            ctx = CheckContext(client_ip="127.0.0.2", message=_signed(size))
            (result,) = await check(ctx, resolver, pool=pool)
        finally:
            pool.shutdown(wait=False)
            await resolver.close()
        return result.value, pool.submitted

    assert asyncio.run(go()) == (Value.PASS, pool_work)  # Verifier, then the signature
