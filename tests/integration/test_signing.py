"""DKIM signing and ARC sealing end to end: smtplib (SMTP AUTH over STARTTLS, or plain)
-> arproxy -> smtp-sink, the delivered message verified by independent verifiers (dkimpy,
Mail::DKIM's ARC verifier, `arproxy check`) against Knot serving the TXT records that
`arproxy dkim-keygen` printed."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from arproxy.signing.arc_seal import ArcSealer, read_chain
from arproxy.signing.keys import load_key
from arproxy.signing.signature import read_for_signing

from ..dnsserver import KnotServer
from ..peerskip import unless_peer
from .conftest import MakeArproxy
from .peers import SmtpSink
from .test_tls_auth import client_context, security_options, tls_files  # noqa: F401

PERL = shutil.which("perl")
ARC_VERIFY_PL = r"""
use strict; use warnings;
use Mail::DKIM::ARC::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0));
my $arc = Mail::DKIM::ARC::Verifier->new();
binmode STDIN;
local $/; my $message = <STDIN>;
$arc->PRINT($message); $arc->CLOSE;
print $arc->result, "\n";
"""
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: friend@elsewhere.example\r\n"
    b"Subject: signed on the way out\r\n"
    b"Date: Mon, 30 Nov 2026 18:00:00 +0000\r\n"
    b"Message-ID: <signing-test@example.org>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def keygen(directory: Path, domain: str, selector: str) -> tuple[Path, str]:
    """`arproxy dkim-keygen`: the key file and the printed TXT record line."""
    done = subprocess.run(
        [sys.executable, "-m", "arproxy", "dkim-keygen", domain, selector, "--out", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return directory / f"{selector}.{domain}.key", done.stdout.strip()


def zone(origin: str, *records: str) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 300\n"
        f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n"
        f"@ NS ns.{origin}.\nns A 127.0.0.1\n" + "".join(r + "\n" for r in records)
    )


class World:
    """Knot serving the printed records of three keys: example.org's DKIM key,
    example.com's ARC key (this ADMD's), and list.example's ARC key (an earlier hop)."""

    def __init__(self, directory: Path) -> None:
        self.dkim_key, dkim_txt = keygen(directory, "example.org", "s1")
        self.arc_key, arc_txt = keygen(directory, "example.com", "arc")
        self.list_key, list_txt = keygen(directory, "list.example", "list")
        self.knot = KnotServer(
            {
                "example.org": zone("example.org", dkim_txt),
                "example.com": zone("example.com", arc_txt),
                "list.example": zone("list.example", list_txt),
            }
        )

    def txt(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """dkimpy's dnsfunc, answered by Knot."""
        query = dns.message.make_query(name.decode().rstrip(".") + ".", dns.rdatatype.TXT)
        answer = dns.query.tcp(query, "127.0.0.1", port=self.knot.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)  # type: ignore[attr-defined]
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("signing-keys"))
    yield made
    made.knot.close()


def signing_options(world: World, files: tuple[Path, Path, Path], *, arc: bool) -> str:
    text = security_options(files) + (
        f'\n[dkim_sign]\ndomains = ["example.org"]\nselector = "s1"\nkey = "{world.dkim_key}"\n'
    )
    if arc:
        text += (
            f'\n[arc]\nseal = true\ndomain = "example.com"\nselector = "arc"\n'
            f'key = "{world.arc_key}"\n'
        )
    return text


Start = Callable[..., tuple[int, Path]]


@pytest.fixture
def start(
    make_arproxy: MakeArproxy,
    smtp_sink: SmtpSink,
    world: World,
    tls_files: tuple[Path, Path, Path],  # noqa: F811
) -> Start:
    def run(*, arc: bool = False) -> tuple[int, Path]:
        proxy = make_arproxy(
            smtp_sink.url,
            nameserver=world.knot.address,
            extra=signing_options(world, tls_files, arc=arc),
        )
        return proxy.port, proxy.log_path

    return run


def send(
    port: int, message: bytes, *, cert: Path | None, rcpt: str = "friend@elsewhere.example"
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        if cert is not None:
            client.starttls(context=client_context(cert))
            client.ehlo("client.example.org")
            client.login("alice", "correct horse")
        assert client.sendmail("alice@example.org", [rcpt], message) == {}


def delivered(sink: SmtpSink) -> bytes:
    """The message as the downstream got it, CRLF line ends (the sink's dump has LF)."""
    (got,) = sink.messages()
    return got.message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def top_field_names(message: bytes) -> list[bytes]:
    return [bytes(name).strip() for name, _ in read_for_signing(message)[0]]


def arproxy_check(world: World, message: bytes, tmp_path: Path) -> str:
    path = tmp_path / "delivered.eml"
    path.write_bytes(message)
    done = subprocess.run(
        [sys.executable, "-m", "arproxy", "check", str(path), "--nameserver", world.knot.address],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def mail_dkim_arc(world: World, message: bytes) -> str:
    done = subprocess.run(
        [str(PERL), "-e", ARC_VERIFY_PL, str(world.knot.port)],
        input=message,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout.decode().strip()


def has_mail_dkim() -> bool:
    if PERL is None:
        return False
    probe = [PERL, "-MMail::DKIM::ARC::Verifier", "-e", "1"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


needs_mail_dkim = unless_peer(
    not has_mail_dkim(), reason="Mail::DKIM (libmail-dkim-perl, scripts/test) not installed"
)


def test_authenticated_mail_of_a_listed_domain_is_signed(
    start: Start,
    smtp_sink: SmtpSink,
    world: World,
    tls_files: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    port, _ = start()
    send(port, MESSAGE, cert=tls_files[0])
    message = delivered(smtp_sink)
    # RFC 6376 section 5.6: the signature on top, above our fields.
    assert top_field_names(message)[:3] == [
        b"DKIM-Signature",
        b"Authentication-Results",
        b"Received",
    ]
    assert dkim.verify(message, dnsfunc=world.txt)
    assert b"d=example.org;" in message and b"s=s1;" in message
    report = arproxy_check(world, message, tmp_path)
    assert "dkim=pass" in report and "header.d=example.org" in report and "header.s=s1" in report


def test_unauthenticated_mail_is_never_signed(
    start: Start, smtp_sink: SmtpSink, world: World
) -> None:
    port, _ = start()
    send(port, MESSAGE, cert=None, rcpt="bob@example.com")
    message = delivered(smtp_sink)
    assert b"DKIM-Signature" not in message
    assert top_field_names(message)[:2] == [b"Authentication-Results", b"Received"]


def test_a_from_domain_not_listed_is_not_signed_and_logged(
    start: Start,
    smtp_sink: SmtpSink,
    tls_files: tuple[Path, Path, Path],  # noqa: F811
) -> None:
    port, log_path = start()
    other = MESSAGE.replace(b"alice@example.org", b"alice@other.example")
    send(port, other, cert=tls_files[0])
    assert b"DKIM-Signature" not in delivered(smtp_sink)
    assert "From domain other.example not in dkim_sign.domains: not signed" in (
        log_path.read_text()
    )


def test_arc_seal_on_a_message_without_a_chain_is_i1_cv_none(
    start: Start, smtp_sink: SmtpSink, world: World
) -> None:
    port, _ = start(arc=True)
    send(port, MESSAGE, cert=None, rcpt="bob@example.com")
    message = delivered(smtp_sink)
    assert top_field_names(message)[:5] == [
        b"ARC-Seal",
        b"ARC-Message-Signature",
        b"ARC-Authentication-Results",
        b"Authentication-Results",
        b"Received",
    ]
    fields = read_for_signing(message)[0]
    aar, ours = fields[2][1], fields[3][1]
    # RFC 8617 4.1.1: "i=1; " then our field's payload exactly.
    assert aar == b" i=1; " + ours.lstrip(b" ")
    assert b"cv=none" in fields[0][1]
    cv, _, reason = dkim.arc_verify(message, dnsfunc=world.txt)
    assert cv == dkim.CV_Pass, reason
    if has_mail_dkim():
        assert mail_dkim_arc(world, message) == "pass"


def test_arc_seal_after_a_passing_chain_is_i2_cv_pass(
    start: Start, smtp_sink: SmtpSink, world: World
) -> None:
    # The earlier hop: a mailing list at list.example sealed the message (i=1).
    listed = (
        b"Authentication-Results: list.example;\r\n\tspf=pass smtp.mailfrom=example.org\r\n"
        + MESSAGE
    )
    fields, body = read_for_signing(listed)
    payload = b"list.example;\r\n\tspf=pass smtp.mailfrom=example.org\r\n"
    sealer = ArcSealer("list.example", "list", load_key(world.list_key))
    arc_set = sealer.seal(fields, body, read_chain(fields), b"none", payload, int(time.time()))
    sealed = b"".join(arc_set) + listed
    assert dkim.arc_verify(sealed, dnsfunc=world.txt)[0] == dkim.CV_Pass
    port, _ = start(arc=True)
    send(port, sealed, cert=None, rcpt="bob@example.com")
    message = delivered(smtp_sink)
    top = read_for_signing(message)[0][0][1]
    assert b"i=2;" in top and b"cv=pass;" in top
    cv, results, reason = dkim.arc_verify(message, dnsfunc=world.txt)
    assert cv == dkim.CV_Pass, reason
    assert [r["instance"] for r in results] == [2, 1]
    if has_mail_dkim():
        assert mail_dkim_arc(world, message) == "pass"


@needs_mail_dkim
def test_mail_dkim_sees_a_broken_chain_fail(world: World) -> None:
    """The second verifier can fail: a check that could not fail would prove nothing."""
    fields, body = read_for_signing(MESSAGE)
    sealer = ArcSealer("example.com", "arc", load_key(world.arc_key))
    arc_set = sealer.seal(
        fields, body, read_chain(fields), b"none", b"x; none\r\n", int(time.time())
    )
    sealed = b"".join(arc_set) + MESSAGE
    assert mail_dkim_arc(world, sealed) == "pass"
    assert mail_dkim_arc(world, sealed.replace(b"Hello.", b"Hullo.")) == "fail"
