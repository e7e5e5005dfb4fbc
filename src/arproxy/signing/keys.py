"""Signing keys: loading a PEM private key, making a new pair, and the TXT record to publish.

A key is RSA (RFC 6376 section 3.3.1; at least 1024 bits, RFC 8301 section 3.2, 2048
recommended) or Ed25519 (RFC 8463). Keys are read once, at start-up (and at reload): a key
that cannot be used is a `SigningKeyError` whose message is one line naming the file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from arproxy.files import write_atomically

MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: verifiers MUST NOT accept smaller keys
RECOMMENDED_RSA_BITS = 2048
KEY_FILE_MODE = 0o600
TXT_STRING_MAX = 255  # RFC 1035 section 3.3: one character-string holds 255 octets

KeyType = Literal["rsa", "ed25519"]


class SigningKeyError(Exception):
    """A signing key that cannot be used; `str()` is one line naming the file."""


@dataclass(frozen=True)
class SigningKey:
    """One private key, ready to sign.

    `algorithm` is the a= value (b"rsa-sha256" or b"ed25519-sha256"); `bits` the RSA
    modulus size (256 for Ed25519).
    """

    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    path: Path | None = None

    @property
    def kind(self) -> KeyType:
        return "rsa" if isinstance(self.private, rsa.RSAPrivateKey) else "ed25519"

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"

    @property
    def bits(self) -> int:
        return self.private.key_size if isinstance(self.private, rsa.RSAPrivateKey) else 256

    def sign(self, data: bytes) -> bytes:
        """The signature of the header hash input `data` (RFC 6376 section 3.7).

        RSA: RSASSA-PKCS1-v1_5 over SHA-256(data) (RFC 6376 section 3.3.1). Ed25519:
        PureEdDSA over SHA-256(data), the hash itself being the signed message
        (RFC 8463 section 3).
        """
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        return self.private.sign(digest.finalize())

    def public_record(self) -> str:
        """The key record's text (RFC 6376 section 3.6.1): "v=DKIM1; k=...; p=..."."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            # p= is the DER SubjectPublicKeyInfo (RFC 6376 section 3.6.1).
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
        # RFC 8463 section 4: p= is the raw 32-octet Ed25519 public key.
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def load_key(path: Path) -> SigningKey:
    """Read a PEM private key (PKCS#1 or PKCS#8, unencrypted). Raises SigningKeyError
    when the file cannot be read, is not such a key, or is an RSA key under 1024 bits."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"{path}: not an unencrypted PEM private key (RSA or Ed25519)"
        ) from exc
    if not isinstance(private, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise SigningKeyError(f"{path}: a {type(private).__name__}; use RSA or Ed25519")
    key = SigningKey(private, path)
    if key.kind == "rsa" and key.bits < MIN_RSA_BITS:
        raise SigningKeyError(
            f"{path}: a {key.bits}-bit RSA key; at least {MIN_RSA_BITS} (RFC 8301), "
            f"{RECOMMENDED_RSA_BITS} recommended"
        )
    return key


def generate_key(kind: KeyType, bits: int = RECOMMENDED_RSA_BITS) -> SigningKey:
    """A new private key; `bits` applies to RSA only. Raises ValueError under 1024 bits."""
    if kind == "ed25519":
        return SigningKey(ed25519.Ed25519PrivateKey.generate())
    if bits < MIN_RSA_BITS:
        raise ValueError(f"{bits}-bit RSA keys are refused by verifiers (RFC 8301): use 2048")
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def private_pem(key: SigningKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    return key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_key(target: Path, key: SigningKey) -> None:
    """Write the private key to `target` atomically, mode 0600. Raises OSError."""
    write_atomically(target, private_pem(key), KEY_FILE_MODE)


def txt_record(domain: str, selector: str, key: SigningKey) -> str:
    """The zone-file line to publish: `SELECTOR._domainkey.DOMAIN. IN TXT "..." "..."`,
    the record split into character-strings of at most 255 octets (RFC 6376 section
    3.6.2.2: a verifier concatenates them)."""
    record = key.public_record()
    strings = [record[i : i + TXT_STRING_MAX] for i in range(0, len(record), TXT_STRING_MAX)]
    owner = f"{selector}._domainkey.{domain.rstrip('.')}."
    return f"{owner} IN TXT " + " ".join(f'"{s}"' for s in strings)
