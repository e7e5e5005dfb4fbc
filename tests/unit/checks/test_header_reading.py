"""DKIM, then DMARC, on headers dkimpy's own splitter cannot read (real keys, Knot).

The issue's chain: a valid signature over a header with ``Subject : hello`` (or under an
unsigned ``X-Scanned : clean``) was dkim=permerror, so dmarc=fail where SPF does not align,
and with ``reject_dmarc`` a legitimate message was refused. Right, by RFC 6376 (3.4.1,
3.4.2, 5.4) and RFC 5322 (2.2.3, 4.5): dkim=pass, hence dmarc=pass (RFC 7489 section 4.2:
an aligned DKIM pass). And a check that raises on the message is permerror, never temperror.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from arproxy.checks import dkim, dmarc
from arproxy.checks.base import Check, CheckContext, MethodResult, Stage, Value
from arproxy.checks.runner import SessionChecks, configured_checks
from arproxy.config import HostPort, load_config
from arproxy.dns import Resolver

from ...arcmail import list_message
from ...dnsserver import KnotServer
from .test_dkim import MESSAGE, sign

SUBJECT = b"Subject: Lunch\r\n"


def run_checks(port: int, message: bytes, checks: list[Check]) -> dict[str, Value]:
    """DKIM and DMARC as at the end of DATA; MAIL FROM is in another domain (no SPF)."""

    async def go() -> tuple[MethodResult, ...]:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        session = SessionChecks(resolver, checks, "192.0.2.1")
        session.on_mail("someone@elsewhere.test")
        try:
            return await session.collect(message, budget=5.0)
        finally:
            session.close()
            await resolver.close()

    return {result.method: result.value for result in asyncio.run(go())}


DKIM_AND_DMARC = [dkim.CHECK, dmarc.CHECK]


def test_relaxed_signature_over_subject_space_colon_passes_dkim_and_dmarc(
    dns_server: KnotServer,
) -> None:
    signed = sign(MESSAGE, "s2048", canonicalize=(b"relaxed", b"relaxed"))
    message = signed.replace(SUBJECT, b"Subject : Lunch\r\n")
    assert run_checks(dns_server.port, message, DKIM_AND_DMARC) == {
        "dkim": Value.PASS,
        "dmarc": Value.PASS,
    }
    # The chain can fail: another subject breaks the signature, and DMARC with it.
    tampered = message.replace(b"Lunch\r\n", b"Dinner\r\n", 1)
    assert run_checks(dns_server.port, tampered, DKIM_AND_DMARC) == {
        "dkim": Value.FAIL,
        "dmarc": Value.FAIL,
    }


def test_simple_signature_under_an_unsigned_spaced_field_passes(dns_server: KnotServer) -> None:
    signed = sign(MESSAGE, "s2048", canonicalize=(b"simple", b"simple"))
    assert run_checks(dns_server.port, b"X-Scanned : clean\r\n" + signed, DKIM_AND_DMARC) == {
        "dkim": Value.PASS,
        "dmarc": Value.PASS,
    }


def test_a_header_starting_with_white_space_is_not_temporary(dns_server: KnotServer) -> None:
    """As `arproxy check` reads it (no intake): the stray line is in no field."""
    message = b" (authenticated sender)\r\n" + sign(MESSAGE, "s2048")
    assert run_checks(dns_server.port, message, DKIM_AND_DMARC) == {
        "dkim": Value.PASS,
        "dmarc": Value.PASS,
    }


# --- a check that raises on the message ------------------------------------------------------


def crashing(check: Check) -> Check:
    async def boom(ctx: CheckContext, dns: Resolver) -> tuple[MethodResult, ...]:
        raise IndexError("list index out of range")  # what dkimpy raised on a stray line

    return Check(check.method, check.stage, boom, check.on_timeout, check.on_crash)


def test_a_check_crashing_on_the_message_is_permerror_in_one_log_line(
    dns_server: KnotServer, caplog: pytest.LogCaptureFixture
) -> None:
    message = sign(MESSAGE, "s2048")
    with caplog.at_level(logging.DEBUG, logger="arproxy.checks"):
        results = run_checks(dns_server.port, message, [crashing(dkim.CHECK), dmarc.CHECK])
    # RFC 8601 2.7.1: the same message would raise again; nothing about it is temporary.
    assert results == {"dkim": Value.PERMERROR, "dmarc": Value.FAIL}
    crash_lines = [r for r in caplog.records if "failed on the message" in r.getMessage()]
    assert len(crash_lines) == 1
    assert crash_lines[0].levelno == logging.WARNING
    assert crash_lines[0].exc_info is None
    assert "IndexError" in crash_lines[0].getMessage()


def test_a_crashing_dmarc_check_is_permerror(dns_server: KnotServer) -> None:
    results = run_checks(dns_server.port, MESSAGE, [dkim.CHECK, crashing(dmarc.CHECK)])
    assert results == {"dkim": Value.NONE, "dmarc": Value.PERMERROR}


def test_every_check_that_reads_the_message_has_a_content_crash_result() -> None:
    """Kind (a): in every check that reads the message content, a crash is final
    (permerror; for arc, fail)."""
    checks = configured_checks(load_config(None).checks)
    ctx = CheckContext("192.0.2.1", message=sign(MESSAGE, "s2048"))
    reading = [check for check in checks if check.method in ("dkim", "dmarc")]
    assert len(reading) == 2
    for check in reading:
        assert check.on_crash is not None, check.method
        assert [r.value for r in check.on_crash(ctx)] == [Value.PERMERROR]
    # arc reads the message too; RFC 8617 section 10.1 registers no permerror for it, so
    # a crash on a chain is fail, and never temporary (the same message would crash again).
    (arc_check,) = [check for check in checks if check.method == "arc"]
    assert arc_check.on_crash is not None
    (crashed,) = arc_check.on_crash(CheckContext("192.0.2.1", message=list_message()))
    assert (crashed.value, getattr(crashed, "temporary", None)) == (Value.FAIL, False)
    # The only other check of the DATA stage, auth, reads the session, not the message.
    content = {"dkim", "dmarc", "arc"}
    others = {check.method for check in checks if check.stage >= Stage.DATA} - content
    assert others == {"auth"}
