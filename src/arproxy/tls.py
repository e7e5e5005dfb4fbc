"""TLS for STARTTLS and SMTP AUTH: server contexts, reloading, a throwaway certificate.

The certificate and key are checked with `cryptography` before OpenSSL sees them, so
that every problem names the file it is in (OpenSSL's own errors do not), and an
encrypted key is refused instead of making OpenSSL prompt on the terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from arproxy.files import write_atomically

KEY_MODE = 0o600
CERT_MODE = 0o644
_CLOCK_SKEW = datetime.timedelta(hours=1)  # so a peer whose clock is a little behind agrees
_MAX_COMMON_NAME = 64  # RFC 5280 ub-common-name


class TlsError(Exception):
    """A certificate or key that cannot be used; `str()` names the file and the problem."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for `cert` (PEM, leaf first, then any chain) and `key` (PEM).

    TLS 1.2 or newer with Python's default cipher list for servers (forward-secret
    AEAD suites only); no client certificate asked for; no compression; no
    renegotiation. Raises TlsError. Blocking, but only for two small file reads.
    """
    _check_pair(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # before verify_mode: OpenSSL refuses the other order
    context.verify_mode = ssl.CERT_NONE
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:  # e.g. a key too weak for OpenSSL's security level
        raise TlsError(f"{cert}, {key}: refused by OpenSSL: {exc.reason or exc}") from exc
    except OSError as exc:  # the files changed since _check_pair read them
        raise TlsError(f"{cert}, {key}: cannot load: {exc.strerror or exc}") from exc
    return context


class ReloadableContext:
    """The server context to give new connections; `reload` swaps it (e.g. on SIGHUP).

    Connections already established keep the context they started with; a failed
    reload keeps the current one, so a half-renewed certificate never takes TLS down.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        """Raises TlsError: at startup a bad pair must stop us, not be logged."""
        self.cert = cert
        self.key = key
        self._current = server_context(cert, key)
        self.last_error: TlsError | None = None

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def reload(self) -> bool:
        """Re-read cert and key; False (and `last_error` set) if they are unusable."""
        try:
            context = server_context(self.cert, self.key)
        except TlsError as exc:
            self.last_error = exc
            return False
        self._current = context
        self.last_error = None
        return True

    def front_context(self) -> ssl.SSLContext:
        """A context for a listener that fixes its context at start (implicit TLS).

        Each handshake switches to `current` in the SNI callback, which runs before
        the certificate is chosen, so a reload reaches that listener too.
        """
        front = server_context(self.cert, self.key)

        def use_current(
            ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
        ) -> None:
            ssl_object.context = self._current

        front.sni_callback = use_current
        return front


def make_self_signed(cert: Path, key: Path, hostname: str, days: int = 365) -> None:
    """Write a new EC P-256 key (mode 0600) and a self-signed certificate for `hostname`.

    For trying arproxy out and for tests, not for production: no client trusts it.
    Each file is replaced atomically; missing directories are created. Raises
    TlsError for a file that cannot be written or a name that cannot be certified.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    private_key = ec.generate_private_key(ec.SECP256R1())
    certificate = _self_signed(private_key, hostname, days)
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key, key_pem, KEY_MODE)
    _write_atomically(cert, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def ensure_self_signed(cert: Path, key: Path, hostname: str) -> bool:
    """Make a self-signed pair unless both files exist; whether it made one.

    With only one of the two present (an interrupted earlier run), both are made
    anew: a certificate without its key, or a key without its certificate, is useless.

    Race-free across processes (two instances, or workers, started together with the
    same paths): the check and the writing happen under an exclusive `flock` on
    `<key>.lock` beside the key, so one process makes the pair and the others find it
    complete; each file is replaced atomically. Raises TlsError when the lock file
    cannot be made.
    """
    lock_path = key.with_name(f"{key.name}.lock")
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, KEY_MODE)
    except OSError as exc:
        raise TlsError(f"{lock_path}: cannot lock: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, and at process exit
        if cert.exists() and key.exists():
            return False
        make_self_signed(cert, key, hostname)
        return True
    finally:
        os.close(lock)  # the lock file stays: removing it would let a third race in


# --- checking a pair ---------------------------------------------------------------------


def _check_pair(cert: Path, key: Path) -> None:
    leaf = _read_certificates(cert)[0]
    private_key = _read_private_key(key)
    if _spki(leaf.public_key()) != _spki(private_key.public_key()):
        raise TlsError(f"{key}: this key does not belong to the certificate in {cert}")


def _read_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{path}: no usable PEM certificate ({exc})") from exc


def _read_private_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "key")
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "encrypted, no password given"
        raise TlsError(f"{path}: the key is encrypted; arproxy needs it unencrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{path}: no usable PEM private key ({exc})") from exc
    return private_key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _no_password() -> bytes:
    # Never called for a key _check_pair accepted; here so that a key swapped for an
    # encrypted one meanwhile fails instead of OpenSSL prompting on our terminal.
    raise TlsError("the key is encrypted; arproxy needs it unencrypted")


# --- making a self-signed pair -----------------------------------------------------------


def _self_signed(
    private_key: ec.EllipticCurvePrivateKey, hostname: str, days: int
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    common_name = hostname if len(hostname) <= _MAX_COMMON_NAME else "arproxy"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    key_id = x509.SubjectKeyIdentifier.from_public_key(private_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SERVER_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(key_id, critical=False)
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT), which wants this too.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )


_SERVER_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _san(hostname: str) -> x509.GeneralName:
    """The subjectAltName entry for `hostname`: an IP address entry for an IP literal."""
    with contextlib.suppress(ValueError):
        return x509.IPAddress(ipaddress.ip_address(hostname))
    try:
        a_label = hostname.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise TlsError(f"{hostname!r} is not a host name a certificate can carry") from exc
    if not a_label:
        raise TlsError("a certificate needs a host name")
    return x509.DNSName(a_label)


def _write_atomically(target: Path, data: bytes, mode: int) -> None:
    try:
        write_atomically(target, data, mode, create_parents=True)
    except OSError as exc:
        raise TlsError(f"{target}: cannot write: {exc.strerror or exc}") from exc
