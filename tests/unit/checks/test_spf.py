"""SPF against a real DNS server: tests/fixtures/zones/spf-*.test.zone and sender.test.

127.0.0.2 is the authorized client of every zone; 127.0.0.3 is authorized nowhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import spf
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import AuthenticationResults, ResInfo, format_field, parse
from arproxy.checks.base import CheckContext, Value
from arproxy.checks.spf import (
    HELO_CHECK,
    MAILFROM_CHECK,
    DnsBridge,
    SpfRequest,
    SpfResult,
    UnexpectedSpfResult,
    check_helo,
    check_mailfrom,
    evaluate_blocking,
    identity_domain,
    reported,
    spf_value,
)
from arproxy.checks.spf import bridge as spf_bridge
from arproxy.config import HostPort
from arproxy.dns import Lookup, Resolver

from ...dnsserver import KnotServer

GOOD = "127.0.0.2"
STRANGER = "127.0.0.3"


class SlowResolver(Resolver):
    """Our resolver, each query delayed on the event loop and recorded."""

    def __init__(self, port: int, delay: float) -> None:
        super().__init__([HostPort("127.0.0.1", port)], timeout=1.0)
        self.delay = delay
        self.asked: list[str] = []

    async def lookup(self, name: str, rtype: str) -> Lookup:
        self.asked.append(f"{name}/{rtype}")
        await asyncio.sleep(self.delay)
        return await super().lookup(name, rtype)


def new_resolver(port: int) -> Resolver:
    return Resolver([HostPort("127.0.0.1", port)], timeout=1.0)


def mailfrom(
    port: int, ip: str, mail_from: str, helo: str = "mail.sender.test"
) -> tuple[SpfResult, ...]:
    async def go() -> tuple[SpfResult, ...]:
        resolver = new_resolver(port)
        try:
            ctx = CheckContext(client_ip=ip, helo=helo, mail_from=mail_from)
            return await check_mailfrom(ctx, resolver)
        finally:
            await resolver.close()

    return asyncio.run(go())


def helo_check(port: int, ip: str, helo: str) -> tuple[tuple[SpfResult, ...], int]:
    """The HELO results and how many DNS queries they took."""

    async def go() -> tuple[tuple[SpfResult, ...], int]:
        resolver = new_resolver(port)
        try:
            results = await check_helo(CheckContext(client_ip=ip, helo=helo), resolver)
            return results, resolver.queries_sent
        finally:
            await resolver.close()

    return asyncio.run(go())


def one_value(port: int, ip: str, mail_from: str) -> Value:
    (result,) = mailfrom(port, ip, mail_from)
    return result.value


def written(*resinfos: ResInfo) -> str:
    """The field as we write it, unfolded."""
    field = format_field(AuthenticationResults("mx.example.com", resinfos))
    return re.sub(r"\r\n[ \t]+", " ", field).removesuffix("\r\n")


def read_back(*resinfos: ResInfo) -> AuthenticationResults:
    field = format_field(AuthenticationResults("mx.example.com", resinfos))
    return parse(field.split(":", 1)[1])


# --- results of the MAIL FROM identity ------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "sender", "value"),
    [
        (GOOD, "alice@sender.test", Value.PASS),
        (STRANGER, "alice@sender.test", Value.FAIL),
        (GOOD, "a@strict.spf-results.test", Value.PASS),
        (STRANGER, "a@strict.spf-results.test", Value.FAIL),
        (STRANGER, "a@soft.spf-results.test", Value.SOFTFAIL),
        (STRANGER, "a@neutral.spf-results.test", Value.NEUTRAL),
        (STRANGER, "a@bare.spf-results.test", Value.NEUTRAL),
        # none: a TXT that is not SPF, no TXT at all (NODATA), no such name (NXDOMAIN)
        (GOOD, "a@other.spf-results.test", Value.NONE),
        (GOOD, "a@addressonly.spf-results.test", Value.NONE),
        (GOOD, "a@absent.spf-results.test", Value.NONE),
        # permerror: syntax errors, two SPF records, include of a domain without SPF
        (GOOD, "a@badip.spf-results.test", Value.PERMERROR),
        (GOOD, "a@badmech.spf-results.test", Value.PERMERROR),
        (GOOD, "a@two.spf-results.test", Value.PERMERROR),
        (GOOD, "a@noneinclude.spf-results.test", Value.PERMERROR),
        # temperror: SERVFAIL for the domain itself, or for an include
        (GOOD, "a@host.servfail.test", Value.TEMPERROR),
        (GOOD, "a@tempinclude.spf-results.test", Value.TEMPERROR),
    ],
)
def test_mailfrom_results(dns_server: KnotServer, ip: str, sender: str, value: Value) -> None:
    assert one_value(dns_server.port, ip, sender) is value


@pytest.mark.parametrize(
    ("ip", "sender", "value"),
    [
        (GOOD, "a@viainclude.spf-results.test", Value.PASS),
        (GOOD, "a@viaa.spf-results.test", Value.PASS),  # A
        ("::1", "a@viaa.spf-results.test", Value.PASS),  # AAAA
        (GOOD, "a@viamx.spf-results.test", Value.PASS),  # MX, then A
        (GOOD, "a@viaptr.spf-results.test", Value.PASS),  # PTR, then A
        (STRANGER, "a@viaptr.spf-results.test", Value.FAIL),
        (GOOD, "a@viaexists.spf-results.test", Value.PASS),  # %{i}
        (GOOD, "a@split.spf-results.test", Value.PASS),  # TXT in two strings
        (GOOD, "a@alias.spf-results.test", Value.PASS),  # TXT through a CNAME
    ],
)
def test_every_kind_of_answer_reaches_pyspf(
    dns_server: KnotServer, ip: str, sender: str, value: Value
) -> None:
    assert one_value(dns_server.port, ip, sender) is value


@pytest.mark.parametrize(
    ("ip", "sender", "value"),
    [
        (STRANGER, "bob@bylocalpart.spf-results.test", Value.PASS),
        (STRANGER, "alice@bylocalpart.spf-results.test", Value.FAIL),
        # "alice+tag.users..." is asked (NXDOMAIN: a void lookup), then ip4 matches.
        (GOOD, "alice+tag@bylocalpart.spf-results.test", Value.PASS),
        # pyspf alone would split this sender at its first "@".
        (GOOD, '"b@d"@bylocalpart.spf-results.test', Value.PASS),
        (STRANGER, '"b@d"@bylocalpart.spf-results.test', Value.FAIL),
    ],
)
def test_local_part_macro(dns_server: KnotServer, ip: str, sender: str, value: Value) -> None:
    assert one_value(dns_server.port, ip, sender) is value


@pytest.mark.parametrize(
    ("sender", "value"),
    [
        ("bob@plus.example", Value.PASS),
        # RFC 7208 sections 7.1 and 7.3: %{l} is the local-part as it is, "+" and "=" too;
        # the names are asked and exist, so sub-addressed and SRS senders pass.
        ("bob+tag@plus.example", Value.PASS),
        ("SRS0=ab12=tt=example.org=bob@plus.example", Value.PASS),
        ("alice+tag@plus.example", Value.FAIL),  # asked, NXDOMAIN: exists does not match
    ],
)
def test_names_with_any_visible_character_are_asked(
    dns_server: KnotServer, sender: str, value: Value
) -> None:
    async def go() -> tuple[SpfResult, list[str]]:
        resolver = SlowResolver(dns_server.port, delay=0.0)
        ctx = CheckContext(client_ip=STRANGER, helo="mail.sender.test", mail_from=sender)
        try:
            (result,) = await check_mailfrom(ctx, resolver)
        finally:
            await resolver.close()
        return result, resolver.asked

    result, asked = asyncio.run(go())
    assert result.value is value
    local_part = sender.rpartition("@")[0]
    assert f"{local_part.lower()}._spf.plus.example/A" in asked  # pyspf lower-cases names


@pytest.mark.parametrize(
    ("ip", "sender", "value"),
    [
        # RFC 7208 section 5.5: a DNS error on the A lookup of one PTR name skips that name.
        ("127.0.0.10", "a@ptrskip.spf-results.test", Value.PASS),
        ("127.0.0.5", "a@ptrskip.spf-results.test", Value.FAIL),
        # ... and one on the PTR lookup makes the mechanism not match (no reverse zone:
        # the server refuses, a temporary error).
        ("192.0.2.1", "a@ptrskip.spf-results.test", Value.FAIL),
        # Section 7.3 %{p}: the validated name, or "unknown" when there is none.
        ("127.0.0.10", "a@pmacro.spf-results.test", Value.PASS),
        ("127.0.0.5", "a@pmacro.spf-results.test", Value.FAIL),
    ],
)
def test_ptr_dns_errors_skip_the_name(
    dns_server: KnotServer, ip: str, sender: str, value: Value
) -> None:
    assert one_value(dns_server.port, ip, sender) is value


@pytest.mark.parametrize(
    ("sender", "value"),
    [
        # RFC 7208 section 4.6.4: a %{l} label of 64 octets cannot exist, like an NXDOMAIN.
        ("x" * 64 + "@longvoids2.spf-limits.test", Value.PASS),  # two voids, then ip4
        ("x" * 64 + "@longvoids3.spf-limits.test", Value.PERMERROR),  # three: over the limit
        ("x" * 63 + "@longvoids3.spf-limits.test", Value.PERMERROR),  # asked, NXDOMAIN x 3
        ("bob@longvoids3.spf-limits.test", Value.PERMERROR),
    ],
)
def test_names_no_dns_can_carry_are_void(dns_server: KnotServer, sender: str, value: Value) -> None:
    assert "dns" in vars(spf.query)  # the pyspf method our override replaces
    assert one_value(dns_server.port, GOOD, sender) is value


def test_ptr_hook_is_called(dns_server: KnotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyspf must call `validated_ptrs` for ptr (our override of it is the section 5.5 fix);
    if a pyspf release stops doing so, this fails."""
    calls: list[str] = []
    original = spf_bridge._Query.validated_ptrs

    def counting(self: Any) -> list[str]:
        calls.append(self.i)
        result: list[str] = original(self)
        return result

    assert "validated_ptrs" in vars(spf.query)
    monkeypatch.setattr(spf_bridge._Query, "validated_ptrs", counting)
    assert one_value(dns_server.port, "127.0.0.10", "a@ptrskip.spf-results.test") is Value.PASS
    assert calls == ["127.0.0.10"]


def test_budget_spent_during_ptr_is_still_temperror(dns_server: KnotServer) -> None:
    """The skip is for a DNS error about one name, not for the evaluation's time limit
    (section 4.6.4): with the budget gone the result stays temperror."""

    async def go() -> str:
        resolver = SlowResolver(dns_server.port, delay=0.2)
        bridge = DnsBridge(asyncio.get_running_loop(), resolver, lookup_timeout=2.0)
        request = SpfRequest("127.0.0.10", "a", "ptrskip.spf-results.test", "mail.sender.test")
        try:
            outcome, _, _ = await asyncio.to_thread(evaluate_blocking, bridge, request, 0.3)
        finally:
            await resolver.close()
        return outcome

    assert asyncio.run(go()) == "temperror"


@pytest.mark.parametrize(
    ("sender", "value"),
    [
        ("a@c2.spf-limits.test", Value.PASS),  # exactly 10 DNS-querying terms
        ("a@c1.spf-limits.test", Value.PERMERROR),  # 11
        ("a@twovoids.spf-limits.test", Value.PASS),
        ("a@threevoids.spf-limits.test", Value.PERMERROR),  # NXDOMAIN x 3
        ("a@nodatavoids.spf-limits.test", Value.PERMERROR),  # NODATA x 3
        ("a@manymx.spf-limits.test", Value.PERMERROR),  # 11 MX names
    ],
)
def test_processing_limits(dns_server: KnotServer, sender: str, value: Value) -> None:
    assert one_value(dns_server.port, GOOD, sender) is value


def test_mailfrom_result_names_the_domain_only(dns_server: KnotServer) -> None:
    (result,) = mailfrom(dns_server.port, GOOD, "<Alice@Sender.Test>")
    assert (result.identity, result.domain, result.client_ip) == ("mailfrom", "sender.test", GOOD)
    assert written(result.to_resinfo()) == (
        "Authentication-Results: mx.example.com; "
        "spf=pass (127.0.0.2 is authorized) smtp.mailfrom=sender.test"
    )


def test_idn_domain_is_checked_and_reported_as_a_label(dns_server: KnotServer) -> None:
    (result,) = mailfrom(dns_server.port, GOOD, "alice@bücher.spf-results.test")
    assert (result.value, result.domain) == (Value.PASS, "xn--bcher-kva.spf-results.test")


@pytest.mark.parametrize("sender", ["x@[192.0.2.1]", "nodomain", "x@localhost", "x@a..b.test"])
def test_mailfrom_without_a_domain_name_is_none_without_dns(
    dns_server: KnotServer, sender: str
) -> None:
    (result,) = mailfrom(dns_server.port, GOOD, sender)
    assert (result.value, result.identity) == (Value.NONE, "mailfrom")
    assert result.reason == "not a domain name"  # decided before any lookup


# --- the HELO identity ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "helo", "value", "domain"),
    [
        (GOOD, "mail.sender.test", Value.PASS, "mail.sender.test"),
        (STRANGER, "mail.sender.test", Value.FAIL, "mail.sender.test"),
        (GOOD, "MAIL.SENDER.TEST.", Value.PASS, "mail.sender.test"),
        (GOOD, "addressonly.spf-results.test", Value.NONE, "addressonly.spf-results.test"),
        (GOOD, "host.servfail.test", Value.TEMPERROR, "host.servfail.test"),
    ],
)
def test_helo_results(
    dns_server: KnotServer, ip: str, helo: str, value: Value, domain: str
) -> None:
    (result,), _queries = helo_check(dns_server.port, ip, helo)
    assert (result.value, result.identity, result.domain) == (value, "helo", domain)


@pytest.mark.parametrize(
    "helo", ["[127.0.0.2]", "[IPv6:::1]", "127.0.0.2", "localhost", "not a domain!", "a_b.test", ""]
)
def test_helo_that_is_not_a_domain_name_is_none(dns_server: KnotServer, helo: str) -> None:
    (result,), queries = helo_check(dns_server.port, GOOD, helo)
    assert (result.value, result.identity, result.domain) == (Value.NONE, "helo", helo)
    assert queries == 0


def test_no_helo_no_result(dns_server: KnotServer) -> None:
    async def go() -> tuple[SpfResult, ...]:
        resolver = new_resolver(dns_server.port)
        try:
            return await check_helo(CheckContext(client_ip=GOOD), resolver)
        finally:
            await resolver.close()

    assert asyncio.run(go()) == ()


# --- the null sender and the one reported result --------------------------------------


def test_null_sender_is_reported_as_the_helo_identity(dns_server: KnotServer) -> None:
    assert mailfrom(dns_server.port, GOOD, "<>") == ()
    assert mailfrom(dns_server.port, GOOD, "") == ()
    (helo,), _ = helo_check(dns_server.port, GOOD, "mail.sender.test")
    chosen = reported(helo, None)
    assert chosen is helo
    assert chosen is not None
    assert written(chosen.to_resinfo()) == (
        "Authentication-Results: mx.example.com; "
        "spf=pass (127.0.0.2 is authorized) smtp.helo=mail.sender.test"
    )


HELO_PASS = SpfResult(Value.PASS, "helo", "mail.sender.test", GOOD)
HELO_FAIL = SpfResult(Value.FAIL, "helo", "mail.sender.test", STRANGER)
MAIL_PASS = SpfResult(Value.PASS, "mailfrom", "sender.test", GOOD)
MAIL_FAIL = SpfResult(Value.FAIL, "mailfrom", "sender.test", STRANGER)
MAIL_TEMPERROR = SpfResult(Value.TEMPERROR, "mailfrom", "sender.test", GOOD)


@pytest.mark.parametrize(
    ("helo", "mail", "chosen"),
    [
        (HELO_PASS, MAIL_FAIL, MAIL_FAIL),  # a MAIL FROM result always wins
        (HELO_FAIL, MAIL_PASS, MAIL_PASS),  # even over a definitive HELO fail
        (HELO_PASS, MAIL_TEMPERROR, MAIL_TEMPERROR),
        (None, MAIL_PASS, MAIL_PASS),
        (HELO_FAIL, None, HELO_FAIL),  # the null sender
        (None, None, None),
    ],
)
def test_reported_selection(
    helo: SpfResult | None, mail: SpfResult | None, chosen: SpfResult | None
) -> None:
    assert reported(helo, mail) is chosen


# --- temporary failures, time limits, the event loop ----------------------------------


def test_dns_server_down_is_temperror() -> None:
    server = KnotServer()
    port = server.port
    server.close()
    (result,) = mailfrom(port, GOOD, "alice@sender.test")
    (helo,), _ = helo_check(port, GOOD, "mail.sender.test")
    # RFC 7208 section 4.4: a DNS error other than NXDOMAIN is temperror; the reason
    # names the lookup that failed (the first one: nothing was evaluated past it).
    assert (result.value, helo.value) == (Value.TEMPERROR, Value.TEMPERROR)
    assert "DNS TXT sender.test: " in result.reason, result.reason
    assert "DNS TXT mail.sender.test: " in helo.reason, helo.reason


REQUEST = SpfRequest(GOOD, "alice", "sender.test", "mail.sender.test")


def test_closed_event_loop_gives_temperror(dns_server: KnotServer) -> None:
    async def go() -> tuple[str, str, str]:
        resolver = new_resolver(dns_server.port)
        gone = asyncio.new_event_loop()
        gone.close()
        bridge = DnsBridge(gone, resolver, lookup_timeout=0.5)
        try:
            return await asyncio.to_thread(evaluate_blocking, bridge, REQUEST, 5.0)
        finally:
            await resolver.close()

    outcome, explanation, _ = asyncio.run(go())
    assert outcome == "temperror"
    assert "event loop closed" in explanation


def test_unanswered_query_gives_temperror_after_the_lookup_timeout(dns_server: KnotServer) -> None:
    async def go() -> tuple[str, str]:
        resolver = SlowResolver(dns_server.port, delay=30.0)
        bridge = DnsBridge(asyncio.get_running_loop(), resolver, lookup_timeout=0.2)
        try:
            outcome, explanation, _ = await asyncio.to_thread(
                evaluate_blocking, bridge, REQUEST, 5.0
            )
        finally:
            await resolver.close()
        return outcome, explanation

    # Ended by the lookup's own timeout (0.2 s), not by the evaluation's 5 s budget
    # ("query time spent") nor by the answer 30 s later (which would pass).
    outcome, explanation = asyncio.run(go())
    assert outcome == "temperror"
    assert "DNS TXT sender.test: no answer in time" in explanation, explanation


def test_query_time_budget_gives_temperror(dns_server: KnotServer) -> None:
    # 11 queries of 0.1 s each (c2: its record, then 10 includes) against a 0.35 s budget.
    async def go() -> tuple[str, int]:
        resolver = SlowResolver(dns_server.port, delay=0.1)
        bridge = DnsBridge(asyncio.get_running_loop(), resolver, lookup_timeout=2.0)
        request = SpfRequest(GOOD, "a", "c2.spf-limits.test", "mail.sender.test")
        try:
            outcome, _, _ = await asyncio.to_thread(evaluate_blocking, bridge, request, 0.35)
        finally:
            await resolver.close()
        return outcome, len(resolver.asked)

    outcome, asked = asyncio.run(go())
    assert outcome == "temperror"
    assert asked < 11


def test_cancelled_check_stops_at_the_query_in_progress(dns_server: KnotServer) -> None:
    async def go() -> list[str]:
        resolver = SlowResolver(dns_server.port, delay=0.3)
        ctx = CheckContext(client_ip=GOOD, helo="x.test", mail_from="a@c1.spf-limits.test")
        task = asyncio.create_task(check_mailfrom(ctx, resolver))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # time for two more queries, had the worker gone on
        await resolver.close()
        return resolver.asked

    assert asyncio.run(go()) == ["c1.spf-limits.test/TXT"]


def test_worker_ends_as_temperror_when_its_event_loop_goes_away(
    dns_server: KnotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[tuple[str, str]] = []
    finished = threading.Event()

    def recording(
        bridge: DnsBridge, request: SpfRequest, query_time: float
    ) -> tuple[str, str, str]:
        try:
            outcome, explanation, mechanism = evaluate_blocking(bridge, request, query_time)
            outcomes.append((outcome, explanation))
            return outcome, explanation, mechanism
        finally:
            finished.set()

    monkeypatch.setattr(spf_bridge, "evaluate_blocking", recording)

    async def abandon() -> None:
        # The loop ends (asyncio.run cancels what is left, then closes) while the worker
        # waits for a query that would take 30 s.
        resolver = SlowResolver(dns_server.port, delay=30.0)
        ctx = CheckContext(client_ip=GOOD, helo="x.test", mail_from="alice@sender.test")
        abandoned = asyncio.create_task(check_mailfrom(ctx, resolver))
        await asyncio.sleep(0.1)
        assert not abandoned.done()
        await resolver.close()

    asyncio.run(abandon())
    assert finished.wait(60)  # a bound for the thread to end at all, not a speed
    # Ended because the loop went away (the check was cancelled), not by waiting out
    # its lookup timeout ("no answer in time") or the 30 s answer.
    ((outcome, explanation),) = outcomes
    assert outcome == "temperror"
    assert "cancelled" in explanation or "event loop closed" in explanation, explanation


def test_event_loop_keeps_running_while_pyspf_works(
    dns_server: KnotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyspf blocks its thread on every query: it runs in the pool it is given, never on
    the loop's thread, and its queries go through the loop (asserted by where each runs,
    not by how long the loop stood still)."""
    evaluated_on: list[str] = []
    evaluate = spf_bridge.evaluate_blocking

    def recording(
        bridge: DnsBridge, request: SpfRequest, query_time: float
    ) -> tuple[str, str, str]:
        evaluated_on.append(threading.current_thread().name)
        return evaluate(bridge, request, query_time)

    monkeypatch.setattr(spf_bridge, "evaluate_blocking", recording)

    async def go() -> tuple[SpfResult, str, list[str]]:
        resolver = SlowResolver(dns_server.port, delay=0.05)
        ctx = CheckContext(client_ip=GOOD, helo="x.test", mail_from="a@c2.spf-limits.test")
        pool = ThreadPoolExecutor(2, thread_name_prefix="arproxy-spf")
        try:
            (result,) = await check_mailfrom(ctx, resolver, pool=pool)
        finally:
            pool.shutdown(wait=False)
            await resolver.close()
        return result, threading.current_thread().name, resolver.asked

    result, loop_thread, asked = asyncio.run(go())
    assert result.value is Value.PASS
    # c2: its record, then 10 includes (RFC 7208 section 4.6.4's limit), each a query
    # the loop answered while pyspf waited in its thread.
    assert len(asked) == 11, asked
    assert len(evaluated_on) == 1 and evaluated_on[0].startswith("arproxy-spf"), evaluated_on
    assert evaluated_on[0] != loop_thread


def test_our_query_without_a_bridge_does_no_dns_of_its_own() -> None:
    """Our pyspf query asks only its bridge: without one it refuses (temperror) rather
    than fall back to pyspf's blocking DNS, and pyspf's global lookup stays pyspf's."""
    original = spf.DNSLookup
    query = spf_bridge._Query(
        None, i=GOOD, s="alice@sender.test", h="mail.sender.test", strict=True
    )
    outcome, _code, _explanation = query.check()
    assert outcome == "temperror"
    assert spf.DNSLookup is original


# --- on_timeout ----------------------------------------------------------------------


def test_on_timeout_gives_temperror_for_the_identity() -> None:
    ctx = CheckContext(client_ip=GOOD, helo="mail.sender.test", mail_from="alice@sender.test")
    assert HELO_CHECK.on_timeout(ctx) == (
        SpfResult(Value.TEMPERROR, "helo", "mail.sender.test", GOOD, reason="timeout"),
    )
    assert MAILFROM_CHECK.on_timeout(ctx) == (
        SpfResult(Value.TEMPERROR, "mailfrom", "sender.test", GOOD, reason="timeout"),
    )


def test_on_timeout_without_anything_to_look_up() -> None:
    null_sender = CheckContext(client_ip=GOOD, helo="[127.0.0.2]", mail_from="<>")
    assert MAILFROM_CHECK.on_timeout(null_sender) == ()
    (helo,) = HELO_CHECK.on_timeout(null_sender)
    assert helo.value is Value.NONE  # what the check itself gives, with no DNS


def test_checks_are_declared_for_their_stages() -> None:
    assert (HELO_CHECK.method, HELO_CHECK.stage.name) == ("spf", "HELO")
    assert (MAILFROM_CHECK.method, MAILFROM_CHECK.stage.name) == ("spf", "MAIL")


# --- result values and what we write --------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "value"),
    [
        ("pass", Value.PASS),
        ("fail", Value.FAIL),
        ("softfail", Value.SOFTFAIL),
        ("neutral", Value.NEUTRAL),
        ("none", Value.NONE),
        ("permerror", Value.PERMERROR),
        ("temperror", Value.TEMPERROR),
    ],
)
def test_pyspf_results_map_to_values(outcome: str, value: Value) -> None:
    assert spf_value(outcome) is value


@pytest.mark.parametrize("outcome", ["ambiguous", "local", "trusted", "error", "unknown"])
def test_other_pyspf_results_are_refused(outcome: str) -> None:
    with pytest.raises(UnexpectedSpfResult):
        spf_value(outcome)


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (MAIL_PASS, "spf=pass (127.0.0.2 is authorized) smtp.mailfrom=sender.test"),
        (MAIL_FAIL, "spf=fail (127.0.0.3 is not authorized) smtp.mailfrom=sender.test"),
        (
            dataclasses.replace(MAIL_FAIL, value=Value.SOFTFAIL),
            "spf=softfail (127.0.0.3 is probably not authorized) smtp.mailfrom=sender.test",
        ),
        (
            dataclasses.replace(MAIL_FAIL, value=Value.NEUTRAL),
            "spf=neutral (127.0.0.3 is neither authorized nor refused) smtp.mailfrom=sender.test",
        ),
        (
            dataclasses.replace(MAIL_PASS, value=Value.NONE),
            "spf=none (no SPF record) smtp.mailfrom=sender.test",
        ),
        (
            dataclasses.replace(MAIL_PASS, value=Value.POLICY),
            "spf=policy (127.0.0.2 is authorized only by +all: not accepted by local policy) "
            "smtp.mailfrom=sender.test",
        ),
        (MAIL_TEMPERROR, "spf=temperror (temporary DNS error) smtp.mailfrom=sender.test"),
        (
            dataclasses.replace(MAIL_PASS, value=Value.PERMERROR),
            "spf=permerror (unusable SPF record) smtp.mailfrom=sender.test",
        ),
        (HELO_FAIL, "spf=fail (127.0.0.3 is not authorized) smtp.helo=mail.sender.test"),
        (
            SpfResult(Value.NONE, "helo", "[127.0.0.2]", GOOD),
            'spf=none (no domain name to check) smtp.helo="[127.0.0.2]"',
        ),
        (
            SpfResult(Value.NONE, "helo", "[ipv6:0::1]", "::1"),
            'spf=none (no domain name to check) smtp.helo="[IPv6:::1]"',
        ),
        (
            SpfResult(Value.PASS, "mailfrom", "sender.test", "::ffff:127.0.0.2"),
            "spf=pass (127.0.0.2 is authorized) smtp.mailfrom=sender.test",
        ),
        (
            SpfResult(Value.PASS, "mailfrom", "sender.test"),
            "spf=pass (the client is authorized) smtp.mailfrom=sender.test",
        ),
    ],
)
def test_resinfo_text(result: SpfResult, text: str) -> None:
    assert written(result.to_resinfo()) == f"Authentication-Results: mx.example.com; {text}"
    (back,) = read_back(result.to_resinfo()).results
    assert (back.method, back.result) == ("spf", result.value.value)


def test_policy_result_reads_back_as_policy() -> None:
    policy = dataclasses.replace(MAIL_PASS, value=Value.POLICY)
    (back,) = read_back(policy.to_resinfo()).results
    assert (back.result, back.properties[0].ptype, back.properties[0].name) == (
        "policy",
        "smtp",
        "mailfrom",
    )
    assert back.properties[0].value == "sender.test"


def test_reason_is_never_written() -> None:
    result = dataclasses.replace(MAIL_FAIL, reason="see http://evil.example/?q=(dkim=pass)")
    assert "evil" not in written(result.to_resinfo())
    assert read_back(result.to_resinfo()).results[0].reason is None


HOSTILE = [
    "evil.example; dkim=pass",
    'evil.example" ; dkim=pass header.d=bank.example ; x="',
    "evil.example) ; dkim=pass (",
    "evil.example\r\nAuthentication-Results: mx.example.com; dkim=pass",
    "évil.example\x00",
    "bank.example\u2028; dkim=pass",
    "[127.0.0.1]; dkim=pass",
    "[IPv6:fe80::1%eth0;dkim=pass]",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_mail_from_domain_cannot_add_results(dns_server: KnotServer, hostile: str) -> None:
    (result,) = mailfrom(dns_server.port, GOOD, f"alice@{hostile}")
    parsed = read_back(result.to_resinfo())
    assert [(r.method, r.result, r.properties) for r in parsed.results] == [("spf", "none", ())]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_helo_cannot_add_results(dns_server: KnotServer, hostile: str) -> None:
    (result,), _ = helo_check(dns_server.port, GOOD, hostile)
    parsed = read_back(result.to_resinfo())
    assert [(r.method, r.result, r.properties) for r in parsed.results] == [("spf", "none", ())]


# A domain name, or (HELO) an address literal: never other client text.
WRITABLE_IDENTITY = re.compile(r"[a-z0-9.-]+|\[(?:IPv6:)?[0-9a-f:.]+\]")


@given(
    value=st.sampled_from(list(Value)),
    identity=st.sampled_from(["helo", "mailfrom"]),
    domain=st.text(),
    client_ip=st.one_of(st.none(), st.text(), st.ip_addresses().map(str)),
)
def test_any_identity_text_is_written_safely(
    value: Value, identity: Any, domain: str, client_ip: str | None
) -> None:
    result = SpfResult(value, identity, domain, client_ip, reason=domain)
    (back,) = read_back(result.to_resinfo()).results
    assert (back.method, back.result) == ("spf", value.value)
    for prop in back.properties:
        assert (prop.ptype, prop.name) == ("smtp", identity)
        assert WRITABLE_IDENTITY.fullmatch(prop.value)


# --- identity_domain ------------------------------------------------------------------

DOMAIN_CASES: list[tuple[str, str | None]] = [
    ("sender.test", "sender.test"),
    ("Mail.Sender.TEST.", "mail.sender.test"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("localhost", None),
    ("127.0.0.2", None),
    ("[127.0.0.2]", None),
    ("-a.example", None),
    ("a-.example", None),
    ("a..example", None),
    (".example", None),
    ("a_b.example", None),
    ("a b.example", None),
    ("x" * 64 + ".example", None),
    (("a" * 63 + ".") * 4 + "example", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "domain"), DOMAIN_CASES)
def test_identity_domain(text: str, domain: str | None) -> None:
    assert identity_domain(text) == domain


@pytest.mark.parametrize(
    ("sender", "value"),
    [
        ("a@plusall.spf-policy.test", Value.POLICY),
        ("a@bareall.spf-policy.test", Value.POLICY),
        ("a@upperall.spf-policy.test", Value.POLICY),
        ("a@ipandall.spf-policy.test", Value.PASS),
        ("a@includeall.spf-policy.test", Value.POLICY),
        ("a@includeplus.spf-policy.test", Value.PASS),
    ],
)
def test_a_pass_by_all_alone_is_policy(dns_server: KnotServer, sender: str, value: Value) -> None:
    """+all authorizes every host on the Internet: local policy reports spf=policy, so
    DMARC cannot align on it; a pass by a real mechanism before it stays a pass."""
    ctx = CheckContext(client_ip=GOOD, helo="mail.sender.test", mail_from=sender)

    async def go() -> tuple[SpfResult, ...]:
        resolver = new_resolver(dns_server.port)
        try:
            return await check_mailfrom(ctx, resolver)
        finally:
            await resolver.close()

    (result,) = asyncio.run(go())
    assert result.value is value
    if value is Value.POLICY:
        text = format_field(AuthenticationResults("example.com", (result.to_resinfo(),)))
        assert "spf=policy" in text
        assert "(127.0.0.2 is authorized only by +all" in text


class CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the work given to it."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="arproxy-spf")
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


def test_warm_cache_evaluates_on_the_loop_thread_with_no_pool_work(
    dns_server: KnotServer,
) -> None:
    """With every record cached, SPF needs no thread: the same result, no hop."""

    async def go() -> tuple[SpfResult, SpfResult, int, int]:
        resolver = new_resolver(dns_server.port)
        pool = CountingPool()
        ctx = CheckContext(client_ip=GOOD, helo="x.test", mail_from="alice@sender.test")
        try:
            (cold,) = await check_mailfrom(ctx, resolver, pool=pool)
            after_cold = pool.submitted
            sent = resolver.queries_sent
            (warm,) = await check_mailfrom(ctx, resolver, pool=pool)
            assert resolver.queries_sent == sent
        finally:
            pool.shutdown(wait=False)
            await resolver.close()
        return cold, warm, after_cold, pool.submitted - after_cold

    cold, warm, cold_submits, warm_submits = asyncio.run(go())
    assert cold.value is Value.PASS and warm == cold
    assert (cold_submits, warm_submits) == (1, 0)


def test_cache_only_evaluation_gives_up_at_the_first_uncached_lookup(
    dns_server: KnotServer,
) -> None:
    """A cold cache: evaluate_cached answers None (no query sent), the pool does the work."""

    async def go() -> tuple[object, int]:
        resolver = new_resolver(dns_server.port)
        request = SpfRequest(GOOD, "alice", "sender.test", "mail.sender.test")
        try:
            return spf_bridge.evaluate_cached(resolver, request, 20.0), resolver.queries_sent
        finally:
            await resolver.close()

    assert asyncio.run(go()) == (None, 0)


def test_a_miss_swallowed_by_pyspf_still_discards_the_cached_attempt() -> None:
    """pyspf wraps the exp= lookup in a bare except (RFC 7208 section 6.2): the bridge
    records the miss, so the attempt is dropped rather than answered without it."""

    class Resolverish:
        def cached(self, name: str, rtype: str) -> None:
            return None

    bridge = spf_bridge.CacheOnlyBridge(Resolverish())  # type: ignore[arg-type]
    with pytest.raises(spf_bridge._CacheMiss):
        bridge.lookup("exp.sender.test", "TXT", 1.0)
    assert bridge.missed
