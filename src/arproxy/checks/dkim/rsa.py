"""RSASSA-PKCS1-v1_5 verification (RFC 8017 section 8.2.2) in C, for dkimpy.

dkimpy verifies RSA signatures in pure Python (its `dkim.crypto`): about 0.7 ms for a
2048-bit key, most of it converting integers to bytes. It has no hook for another
verifier, so `install` replaces the one name its verifier calls, `dkim.RSASSA_PKCS1_v1_5_verify`
(dkimpy < 1.2 is pinned; tests/unit/checks/test_dkim_rsa.py fails if the name goes), with
`verify`, which gives exactly dkimpy's answer on every input:

- the common case, a signature of exactly the modulus' length whose integer is below the
  modulus, is checked by `cryptography` (OpenSSL): RSAVP1, then the EMSA-PKCS1-v1_5 encoding
  of the digest compared in full (RFC 8017 sections 5.2.2, 8.2.2 and 9.2), which is what
  dkimpy computes;
- anything else (a signature of another length, or not below the modulus: RFC 8017 calls
  both invalid, dkimpy pads or reduces them) is handed to dkimpy's own function, so that
  no edge case changes its verdict; and so are hashes other than SHA-256 and SHA-1.

The caller keeps its error handling: dkimpy's DigestTooLargeError for a modulus too short
for the digest is raised in the same condition, before any arithmetic.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import dkim
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_PURE_PYTHON = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
# RFC 8017 section 9.2 step 3: the DigestInfo of SHA-1 and SHA-256 is 35 and 51 octets, and
# the encoding needs it plus 11; dkimpy raises DigestTooLargeError below that.
_DIGEST_INFO_LENGTH = {"sha256": 51, "sha1": 35}


class _Hash(Protocol):
    name: str

    def digest(self) -> bytes: ...


def verify(hash: _Hash, signature: bytes, public_key: dict[str, Any]) -> bool:
    """dkimpy's `RSASSA_PKCS1_v1_5_verify(hash, signature, public_key)`, same answers.

    `hash`: a hashlib-like object holding the hashed data (`name`, `digest()`);
    `public_key`: dkimpy's {'modulus': n, 'publicExponent': e}. Raise
    dkim.crypto.DigestTooLargeError if the modulus is too short for the digest.
    """
    name = hash.name.lower()
    algorithm = _HASHES.get(name)
    modulus: int = public_key["modulus"]
    exponent: int = public_key["publicExponent"]
    length = (modulus.bit_length() + 7) // 8
    if algorithm is None or not isinstance(modulus, int) or not isinstance(exponent, int):
        return bool(_PURE_PYTHON(hash, signature, public_key))
    if _DIGEST_INFO_LENGTH[name] + 11 > length:
        raise dkim.crypto.DigestTooLargeError()
    if len(signature) != length or int.from_bytes(signature, "big") >= modulus:
        return bool(_PURE_PYTHON(hash, signature, public_key))
    try:
        key = _public_key(modulus, exponent)
    except ValueError:
        return bool(_PURE_PYTHON(hash, signature, public_key))  # OpenSSL refuses the key
    try:
        key.verify(signature, hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    """The key object for (n, e); cached: the same few signers sign most mail."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def install() -> None:
    """Make dkimpy's verifier use `verify` (idempotent; cheap enough to call per message)."""
    if dkim.RSASSA_PKCS1_v1_5_verify is not verify:
        dkim.RSASSA_PKCS1_v1_5_verify = verify
