from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from arproxy.tls import (
    ReloadableContext,
    TlsError,
    ensure_self_signed,
    make_self_signed,
    server_context,
)

HOSTNAME = "mx.example.test"
# Building a client that still speaks TLS 1.1 is the point of one test.
ALLOW_OLD_TLS = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    made = Pair(tmp_path / "var" / "cert.pem", tmp_path / "var" / "key.pem")
    make_self_signed(made.cert, made.key, HOSTNAME)
    return made


def client_trusting(cert: Path) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=cert)
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default
    return client


@dataclass(frozen=True)
class Handshake:
    client_version: str | None
    server_version: str | None
    server_error: BaseException | None
    peer_cert: bytes | None


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    """A real handshake over loopback, upgraded from plain TCP as STARTTLS does."""

    async def main() -> Handshake:
        outcome: asyncio.Future[str | BaseException | None] = asyncio.Future()

        async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await writer.start_tls(server)
                outcome.set_result(writer.get_extra_info("ssl_object").version())
            except (ssl.SSLError, ConnectionError) as exc:
                outcome.set_result(exc)
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener, asyncio.timeout(10):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            version = peer = None
            try:
                await writer.start_tls(client, server_hostname=HOSTNAME)
                tls = writer.get_extra_info("ssl_object")
                version, peer = tls.version(), tls.getpeercert(binary_form=True)
            except (ssl.SSLError, ConnectionError):
                pass  # what the server saw is what counts
            server_side = await outcome
            writer.close()
        if isinstance(server_side, BaseException):
            return Handshake(version, None, server_side, peer)
        return Handshake(version, server_side, None, peer)

    return asyncio.run(main())


def der(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def test_real_handshake_negotiates_at_least_tls_1_2(pair: Pair) -> None:
    result = handshake(server_context(pair.cert, pair.key), client_trusting(pair.cert))
    assert result.server_error is None
    assert result.client_version == result.server_version
    assert result.server_version in {"TLSv1.2", "TLSv1.3"}
    assert result.peer_cert == der(pair.cert)


def test_tls_1_2_client_accepted(pair: Pair) -> None:
    client = client_trusting(pair.cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    result = handshake(server_context(pair.cert, pair.key), client)
    assert result.server_version == "TLSv1.2"


def old_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    client = unverifying_client()
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not offer TLS 1.1 otherwise
    client.minimum_version = ssl.TLSVersion.TLSv1_1
    client.maximum_version = maximum
    return client


@ALLOW_OLD_TLS
def test_tls_1_1_client_refused(pair: Pair) -> None:
    result = handshake(server_context(pair.cert, pair.key), old_client(ssl.TLSVersion.TLSv1_1))
    assert result.client_version is None
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.server_error.reason == "UNSUPPORTED_PROTOCOL"


@ALLOW_OLD_TLS
def test_the_tls_1_1_client_does_work_where_allowed(pair: Pair) -> None:
    """Control: the refusal above is the server's minimum, not a broken client."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.load_cert_chain(pair.cert, pair.key)
    assert handshake(permissive, old_client(ssl.TLSVersion.TLSv1_1)).server_version == "TLSv1.1"
    ours = server_context(pair.cert, pair.key)
    assert handshake(ours, old_client(ssl.TLSVersion.TLSv1_2)).server_version == "TLSv1.2"


def test_server_context_settings(pair: Pair) -> None:
    context = server_context(pair.cert, pair.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_self_signed_pair(pair: Pair) -> None:
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [HOSTNAME]
    assert sorted(p.name for p in pair.cert.parent.iterdir()) == ["cert.pem", "key.pem"]


def test_self_signed_for_an_ip_literal(tmp_path: Path) -> None:
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "127.0.0.1", days=1)
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_ensure_self_signed_creates_only_when_missing(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert ensure_self_signed(cert, key, HOSTNAME)
    first = cert.read_bytes()
    assert not ensure_self_signed(cert, key, HOSTNAME)
    assert cert.read_bytes() == first
    key.unlink()
    assert ensure_self_signed(cert, key, HOSTNAME)
    server_context(cert, key)  # a matching pair again


def _ensure_after(barrier: Any, cert: Path, key: Path, made: Any) -> None:
    barrier.wait()
    made.put(ensure_self_signed(cert, key, HOSTNAME))


def test_ensure_self_signed_is_race_free_across_processes(tmp_path: Path) -> None:
    # Instances started at the same moment with the same paths: one makes the pair,
    # the others use it; the key always belongs to the certificate.
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        cert, key = tmp_path / f"r{round_}" / "cert.pem", tmp_path / f"r{round_}" / "key.pem"
        barrier, made = context.Barrier(4), context.Queue()
        workers = [
            context.Process(target=_ensure_after, args=(barrier, cert, key, made)) for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        assert sorted(made.get(timeout=5) for _ in workers) == [False, False, False, True]
        server_context(cert, key)  # raises TlsError if the key is not the cert's


def test_errors_name_the_file(pair: Pair, tmp_path: Path) -> None:
    other = Pair(tmp_path / "other-cert.pem", tmp_path / "other-key.pem")
    make_self_signed(other.cert, other.key, HOSTNAME)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        serialization.load_pem_private_key(pair.key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (tmp_path / "missing.pem", pair.key, "missing.pem: cannot read the certificate"),
        (pair.cert, tmp_path / "missing.pem", "missing.pem: cannot read the key"),
        (garbage, pair.key, "garbage.pem: no usable PEM certificate"),
        (pair.cert, garbage, "garbage.pem: no usable PEM private key"),
        (pair.cert, other.key, "other-key.pem: this key does not belong"),
        (pair.cert, encrypted, "encrypted-key.pem: the key is encrypted"),
    ]
    for cert, key, message in cases:
        with pytest.raises(TlsError) as caught:
            server_context(cert, key)
        assert message in str(caught.value)


def test_reload_with_a_broken_key_keeps_the_old_context(pair: Pair) -> None:
    reloadable = ReloadableContext(pair.cert, pair.key)
    before = reloadable.current
    pair.key.write_text("-----BEGIN PRIVATE KEY-----\ntruncated\n")
    assert not reloadable.reload()
    assert reloadable.current is before
    assert reloadable.last_error is not None
    assert str(pair.key) in str(reloadable.last_error)
    assert handshake(reloadable.current, client_trusting(pair.cert)).server_version


def test_reload_with_a_new_pair_switches(pair: Pair) -> None:
    reloadable = ReloadableContext(pair.cert, pair.key)
    before = reloadable.current
    old_cert = der(pair.cert)
    make_self_signed(pair.cert, pair.key, HOSTNAME)  # e.g. a renewal
    assert reloadable.reload()
    assert reloadable.last_error is None
    assert reloadable.current is not before
    result = handshake(reloadable.current, client_trusting(pair.cert))
    assert result.peer_cert == der(pair.cert) != old_cert
    # Whoever holds the old context (a connection made before) still has the old pair.
    assert handshake(before, unverifying_client()).peer_cert == old_cert


def unverifying_client() -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client


def test_a_bad_pair_at_startup_raises(tmp_path: Path) -> None:
    with pytest.raises(TlsError):
        ReloadableContext(tmp_path / "cert.pem", tmp_path / "key.pem")
