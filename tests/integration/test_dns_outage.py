"""A DNS outage never becomes a permanent refusal, end to end.

The sender's world during an outage, served by a real Knot: every query about the MAIL FROM
domain tempfail.example and about the DKIM keys of pass.example answers SERVFAIL, and only
the `_dmarc.pass.example` record still answers (as when it is cached). arproxy runs with
`dns.timeout = 1`, relays to smtp-sink, and a client bound to 127.0.0.2 sends a message
From pass.example signed by pass.example.

The key query fails with SERVFAIL rather than going unanswered: both are the same
temporary failure to the checks (dns.Lookup TEMPFAIL, RFC 6376 section 6.1.2 temperror),
and Knot cannot leave one name unanswered without stalling the worker that serves the
client's next query (its dnsproxy module blocks a worker, and the kernel sends every query
from our one c-ares socket to the same worker), which made such a test flaky.

SPF and DKIM are temperror; the signature would align, so DMARC is temperror too
(RFC 7489 sections 6.6.2 and 11.2: a later attempt might produce a final result), never
`fail (p=reject)`; and no `[policy]` switch turns a temperror into a 5xx.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator

import pytest

from arproxy.config import HostPort
from arproxy.dns import Lookup, Resolver, Status

from ..dnsserver import KnotServer
from .conftest import MakeArproxy
from .peers import SmtpSink
from .test_checks_e2e import message_from, our_field, signed, summary

PASS_EXAMPLE = """$ORIGIN pass.example.
$TTL 300
@       SOA ns.pass.example. hostmaster.pass.example. 1 3600 600 86400 60
@       NS  ns.pass.example.
ns      A   127.0.0.1
_dmarc  TXT "v=DMARC1; p=reject"
"""


@pytest.fixture(scope="module")
def outage() -> Iterator[KnotServer]:
    server = KnotServer(
        {"pass.example": PASS_EXAMPLE},
        servfail_zones=("servfail.test", "tempfail.example", "_domainkey.pass.example"),
    )
    yield server
    server.close()


def test_the_outage_is_what_it_claims(outage: KnotServer) -> None:
    async def ask() -> list[Lookup]:
        resolver = Resolver([HostPort("127.0.0.1", outage.port)], timeout=1.0)
        try:
            return [
                await resolver.lookup("tempfail.example", "TXT"),
                await resolver.lookup("sel._domainkey.pass.example", "TXT"),
                await resolver.lookup("_dmarc.pass.example", "TXT"),
            ]
        finally:
            await resolver.close()

    spf_record, key, dmarc = asyncio.run(ask())
    assert (spf_record.status, key.status) == (Status.TEMPFAIL, Status.TEMPFAIL)
    assert dmarc.texts() == [b"v=DMARC1; p=reject"], dmarc


MESSAGE = signed(message_from("User <user@pass.example>", "outage"), b"pass.example", b"sel")


def send(port: int) -> tuple[int, bytes]:
    """MAIL FROM user@tempfail.example, the signed message; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("mail.sender.test")
        client.mail("user@tempfail.example")
        assert client.rcpt("bob@example.com")[0] == 250
        return client.data(MESSAGE)


def test_outage_with_reject_and_tempfail_gives_451(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, outage: KnotServer
) -> None:
    policy = "[policy]\nreject_dmarc = true\ntempfail_on_temperror = true"
    proxy = make_arproxy(smtp_sink.url, nameserver=outage.address, policy=policy)
    code, text = send(proxy.port)
    assert (code, text[:4]) == (451, b"4.7.")  # the sender retries; never 550 5.7.1
    assert smtp_sink.messages() == []
    assert "=temperror)" in proxy.log
    assert "dmarc=fail" not in proxy.log


def test_outage_with_reject_only_delivers_with_the_temperrors_written(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, outage: KnotServer
) -> None:
    proxy = make_arproxy(
        smtp_sink.url, nameserver=outage.address, policy="[policy]\nreject_dmarc = true"
    )
    code, _text = send(proxy.port)
    assert code == 250
    results = summary(our_field(smtp_sink))
    assert [r[:2] for r in results] == [
        ("iprev", "pass"),
        ("spf", "temperror"),
        ("dkim", "temperror"),
        ("dmarc", "temperror"),
        ("arc", "none"),  # no ARC field: nothing to look up (RFC 8617 section 5.2 step 1)
    ]
    assert results[1][2] == {"smtp.mailfrom": "tempfail.example"}
    assert results[2][2]["header.d"] == "pass.example"
    # No disposition for a result that is not final.
    assert results[3][2] == {"header.from": "pass.example"}
