"""The arc check (RFC 8617 section 5.2) against real key records (Knot serving
tests/fixtures/zones/{arc.test,lists.example,forwarder.test}.zone).

Chains are built with dkimpy's arc_sign (tests/arcmail.py); the instance limits are then
tested on chains edited by hand, so that each rule of section 5.2 is shown to make the
status fail by itself, not only through dkimpy's own checks.
"""

from __future__ import annotations

import asyncio
import re

import authres as authres_package
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import AuthenticationResults, format_field, parse
from arproxy.checks.arc import MAX_SETS, ArcResult, check, oldest_pass
from arproxy.checks.arc.verify import InstanceVerdict
from arproxy.checks.base import CheckContext, Value
from arproxy.checks.dkim.dkimpy import runs_inline
from arproxy.checks.runner import configured_checks
from arproxy.config import HostPort, parse_config
from arproxy.dns import Resolver

from ...arcmail import TRUSTED, UNTRUSTED, as_list_sends_it, authored, list_message, sealed
from ...dnsserver import KnotServer


def run_arc(port: int, message: bytes, client_ip: str = "127.0.0.2") -> ArcResult:
    async def go() -> tuple[ArcResult, ...]:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        try:
            return await check(CheckContext(client_ip=client_ip, message=message), resolver)
        finally:
            await resolver.close()

    (result,) = asyncio.run(go())
    return result


def two_hops() -> bytes:
    """Sealed by the list, then by a forwarder that changed nothing (cv=pass at i=2)."""
    return sealed(list_message(), UNTRUSTED, chain_status=b"pass")


def edit_set(message: bytes, instance: int, old: bytes, new: bytes, *, field: bytes) -> bytes:
    """`message` with `old` replaced by `new` in the `field` of ARC set `instance`."""
    pattern = re.compile(
        rb"^" + field + rb": i=" + str(instance).encode() + rb";.*?(?=^\S)", re.S | re.M
    )
    found = pattern.search(message)
    assert found is not None, (field, instance)
    changed = found.group(0).replace(old, new, 1)
    assert changed != found.group(0), (old, field)
    return message[: found.start()] + changed + message[found.end() :]


# --- none and pass ---------------------------------------------------------------------


def test_no_arc_field_is_none_with_the_client_address(dns_server: KnotServer) -> None:
    result = run_arc(dns_server.port, authored())
    assert result.value is Value.NONE
    # RFC 8617 section 10.1: smtp.remote-ip, whatever the status.
    assert result.to_resinfo().properties[0].value == "127.0.0.2"


def test_a_list_sealed_message_passes_with_its_sealer_and_results(dns_server: KnotServer) -> None:
    result = run_arc(dns_server.port, list_message())
    assert result.value is Value.PASS
    assert result.sealer == "lists.example"
    assert result.sets == 1 and result.oldest_pass == 0
    recorded = {(r.method, r.result) for r in result.sealer_results or ()}
    assert ("dmarc", "pass") in recorded


def test_two_hops_pass_and_oldest_pass_zero_is_not_written(dns_server: KnotServer) -> None:
    result = run_arc(dns_server.port, two_hops())
    assert (result.value, result.sets, result.oldest_pass) == (Value.PASS, 2, 0)
    assert result.sealer == "forwarder.test"
    names = [f"{p.ptype}.{p.name}" for p in result.to_resinfo().properties]
    assert names == ["smtp.remote-ip"]  # RFC 8617 section 10.1: oldest-pass only when > 0


def test_oldest_pass_when_a_later_hop_changed_the_body(dns_server: KnotServer) -> None:
    # The second hop adds its own footer, then seals: AMS i=1 no longer validates, AMS
    # i=2 does, so the oldest instance whose AMS still validates is 2 (5.2 step 5).
    changed = list_message() + b"forwarded by forwarder.test\r\n"
    result = run_arc(dns_server.port, sealed(changed, UNTRUSTED, chain_status=b"pass"))
    assert (result.value, result.oldest_pass) == (Value.PASS, 2)
    props = {f"{p.ptype}.{p.name}": p.value for p in result.to_resinfo().properties}
    assert props == {"smtp.remote-ip": "127.0.0.2", "header.oldest-pass": "2"}


def test_oldest_pass_is_the_instance_after_the_newest_failing_ams() -> None:
    # RFC 8617 5.2 step 5, newest first: AMS 3 ok, AMS 2 fails -> 3; all ok -> 0.
    verdicts = (
        InstanceVerdict(3, True, True),
        InstanceVerdict(2, False, True),
        InstanceVerdict(1, True, True),
    )
    assert oldest_pass(verdicts) == 3
    assert oldest_pass(tuple(InstanceVerdict(i, True, True) for i in (2, 1))) == 0


def test_exactly_fifty_sets_pass(dns_server: KnotServer) -> None:
    message = list_message()
    for _ in range(MAX_SETS - 1):
        message = sealed(message, UNTRUSTED, chain_status=b"pass")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.sets) == (Value.PASS, MAX_SETS), result.reason


# --- the structure rules (5.2 steps 1 to 3), on hand-edited chains ----------------------


def test_more_than_fifty_sets_fail(dns_server: KnotServer) -> None:
    # RFC 8617 4.2.1: i= ranges over 1..50; dkimpy's arc_sign refuses a 51st, so the
    # extra set is copied from set 1 with its instance raised.
    message = list_message()
    for _ in range(MAX_SETS - 1):
        message = sealed(message, UNTRUSTED, chain_status=b"pass")
    newest = re.findall(rb"^ARC-[A-Za-z-]+: i=50;.*?(?=^\S)", message, re.S | re.M)
    assert len(newest) == 3
    extra = b"".join(f.replace(b"i=50;", b"i=51;", 1) for f in newest)
    result = run_arc(dns_server.port, extra + message)
    assert result.value is Value.FAIL
    assert result.reason == "ARC instance 51 over the limit of 50"


@pytest.mark.parametrize(
    ("field", "old", "new", "reason"),
    [
        (b"ARC-Seal", b"i=1;", b"", "ARC-Seal without a valid i= tag"),
        (
            b"ARC-Message-Signature",
            b"i=1;",
            b"i=x;",
            "ARC-Message-Signature without a valid i= tag",
        ),
        (
            b"ARC-Authentication-Results",
            b"i=1;",
            b"",
            "ARC-Authentication-Results without a valid i= tag",
        ),
        (b"ARC-Seal", b"i=1;", b"i=0;", "ARC instance 0"),
        (b"ARC-Seal", b"cv=none", b"cv=pass", "ARC-Seal i=1 has cv=pass, not none"),
    ],
)
def test_a_broken_first_set_fails(
    dns_server: KnotServer, field: bytes, old: bytes, new: bytes, reason: str
) -> None:
    message = edit_set(list_message(), 1, old, new, field=field)
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, reason)


def test_cv_none_after_the_first_set_fails(dns_server: KnotServer) -> None:
    message = edit_set(two_hops(), 2, b"cv=pass", b"cv=none", field=b"ARC-Seal")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "ARC-Seal i=2 has cv=none, not pass")


def test_a_duplicated_instance_fails(dns_server: KnotServer) -> None:
    message = two_hops()
    aar = re.search(rb"^ARC-Authentication-Results: i=2;.*?(?=^\S)", message, re.S | re.M)
    assert aar is not None
    result = run_arc(dns_server.port, aar.group(0) + message)
    assert (result.value, result.reason) == (
        Value.FAIL,
        "duplicate ARC-Authentication-Results for i=2",
    )


def test_a_gap_in_the_instances_fails(dns_server: KnotServer) -> None:
    message = two_hops()
    for field in (b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"):
        message = edit_set(message, 2, b"i=2;", b"i=3;", field=field)
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (
        Value.FAIL,
        "ARC instances not a sequence from 1: i=2 missing",
    )


def test_an_incomplete_set_fails(dns_server: KnotServer) -> None:
    message = re.sub(rb"^ARC-Message-Signature: i=2;.*?(?=^\S)", b"", two_hops(), flags=re.S | re.M)
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "incomplete ARC set i=2")


def test_a_newest_seal_saying_fail_fails(dns_server: KnotServer) -> None:
    # Signed by dkimpy with cv=fail: every signature is good, the status is still fail.
    message = sealed(list_message(), UNTRUSTED, chain_status=b"fail")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "the newest ARC-Seal (i=2) says cv=fail")


# --- the signatures (5.2 steps 4 and 6) ----------------------------------------------------


def test_a_body_changed_after_the_seal_fails(dns_server: KnotServer) -> None:
    message = list_message().replace(b"See you at noon.", b"See you at ten.")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "ARC-Message-Signature i=1 did not verify")


def test_a_tampered_newest_ams_fails(dns_server: KnotServer) -> None:
    message = edit_set(
        two_hops(), 2, b"c=relaxed/relaxed", b"c=relaxed/simple", field=b"ARC-Message-Signature"
    )
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "ARC-Message-Signature i=2 did not verify")


def test_a_tampered_older_seal_fails(dns_server: KnotServer) -> None:
    message = edit_set(two_hops(), 1, b"d=lists.example", b"d=forwarder.test", field=b"ARC-Seal")
    result = run_arc(dns_server.port, message)
    assert result.value is Value.FAIL
    assert result.reason in {"ARC-Seal i=2 did not verify", "ARC-Seal i=1 did not verify"}


def test_a_changed_aar_breaks_the_seal(dns_server: KnotServer) -> None:
    # A forger rewriting what the trusted hop recorded: the seal covers the AAR.
    message = list_message().replace(
        b"dmarc=pass header.from=arc.test", b"dmarc=pass header.from=bank.example"
    )
    result = run_arc(dns_server.port, message)
    assert (result.value, result.reason) == (Value.FAIL, "ARC-Seal i=1 did not verify")


def test_a_missing_key_fails_for_good(dns_server: KnotServer) -> None:
    message = sealed(as_list_sends_it(authored()), TRUSTED, selector=b"nokey")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.temporary) == (Value.FAIL, False)


def test_a_key_lookup_failure_is_a_temporary_fail(dns_server: KnotServer) -> None:
    # servfail.test answers SERVFAIL (tests/dnsserver.py). RFC 8617 10.1 registers no
    # temperror for arc: fail, marked temporary so that policy builds nothing final on it.
    message = sealed(as_list_sends_it(authored()), b"servfail.test")
    result = run_arc(dns_server.port, message)
    assert (result.value, result.temporary) == (Value.FAIL, True)
    assert result.reason == "key lookup failed temporarily"


def test_hostile_sealer_values_never_reach_the_field(dns_server: KnotServer) -> None:
    message = edit_set(
        list_message(), 1, b"d=lists.example", b"d=l\xc3\xa9\x01.example", field=b"ARC-Seal"
    )
    result = run_arc(dns_server.port, message)
    assert result.value is Value.FAIL and result.sealer is None
    format_field(AuthenticationResults("example.com", (result.to_resinfo(),)))


# --- the field: written by our formatter, read back by ours and by `authres` ---------------


@pytest.mark.parametrize(
    "result",
    [
        ArcResult(Value.PASS, "127.0.0.2", oldest_pass=2),
        ArcResult(Value.PASS, "2001:db8::1", oldest_pass=0),
        ArcResult(Value.FAIL, "127.0.0.2", reason="ARC-Seal i=1 did not verify"),
        ArcResult(Value.NONE, "127.0.0.2"),
    ],
)
def test_the_field_parses_back_with_both_parsers(result: ArcResult) -> None:
    header = AuthenticationResults("example.com", (result.to_resinfo(),))
    field = format_field(header)
    assert parse(field.split(":", 1)[1]) == header.without_comments()
    theirs = authres_package.AuthenticationResultsHeader.parse(field.rstrip("\r\n"))
    (res,) = theirs.results
    assert (res.method, res.result) == ("arc", result.value.value)
    props = {f"{p.type}.{p.name}": p.value for p in res.properties}
    assert props["smtp.remote-ip"] == result.client_ip
    if result.value is Value.PASS and result.oldest_pass:
        assert props["header.oldest-pass"] == str(result.oldest_pass)
    if result.value is Value.FAIL:
        assert res.reason == result.reason


def test_arc_is_on_by_default_and_can_be_switched_off() -> None:
    assert "arc" in {c.method for c in configured_checks(parse_config("", "t").checks)}
    off = parse_config("[checks]\narc = false\n", "t").checks
    assert "arc" not in {c.method for c in configured_checks(off)}


def test_no_client_address_no_remote_ip(dns_server: KnotServer) -> None:
    # `arproxy check` without --client-ip runs the message checks as client 0.0.0.0:
    # no client, so no smtp.remote-ip (it would name an address nobody connected from).
    result = run_arc(dns_server.port, list_message(), client_ip="0.0.0.0")
    assert (result.value, result.client_ip) == (Value.PASS, None)
    assert result.to_resinfo().properties == ()


def test_a_large_message_is_verified_in_the_pool(dns_server: KnotServer) -> None:
    # Over dkimpy.INLINE_MAX_BYTES the header read and the hashing run in the pool;
    # the verdicts are the same.
    big = authored(body="A line of a long list digest.\r\n" * 4000)
    assert not runs_inline(big)
    message = sealed(as_list_sends_it(big))
    assert run_arc(dns_server.port, message).value is Value.PASS
    tampered = message.replace(b"long list digest", b"long list digesT", 1)
    assert run_arc(dns_server.port, tampered).value is Value.FAIL


@given(
    value=st.sampled_from([Value.NONE, Value.PASS, Value.FAIL]),
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    oldest=st.integers(min_value=0, max_value=MAX_SETS),
    reason=st.text(max_size=60),
)
def test_any_arc_result_is_written_and_read_back(
    value: Value, address: str, oldest: int, reason: str
) -> None:
    """Whatever the values (the reason may hold anything), the field formats and both
    parsers read the same method, result and properties back (RFC 8601 section 2.2)."""
    result = ArcResult(value, address, oldest_pass=oldest, reason=reason)
    header = AuthenticationResults("example.com", (result.to_resinfo(),))
    field = format_field(header)
    assert parse(field.split(":", 1)[1]) == header.without_comments()
    (theirs,) = authres_package.AuthenticationResultsHeader.parse(field.rstrip("\r\n")).results
    assert (theirs.method, theirs.result) == ("arc", value.value)
    read = {f"{p.type}.{p.name}": p.value for p in theirs.properties}
    ours = {f"{p.ptype}.{p.name}": p.value for p in result.to_resinfo().properties}
    # authres 1.2.0 drops a quoted-string pvalue followed by another property (an IPv6
    # address must be quoted: ":" is a tspecial, RFC 2045); what it reads is ours.
    assert read.items() <= ours.items()
    if ":" not in address:
        assert read == ours
