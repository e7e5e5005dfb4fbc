"""The dmarc check against real policy records (tests/fixtures/zones/dmarc-*.test.zone, Knot).

SPF and DKIM outcomes are given as tiny dataclasses of our own: DMARC reads them through its
own protocols, never through checks/spf/ or checks/dkim/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arproxy.authres import AuthenticationResults, ResInfo, format_field, parse
from arproxy.checks.base import CheckContext, MethodResult, Stage, Value
from arproxy.checks.dmarc import (
    CHECK,
    AuthorError,
    DmarcRecord,
    DmarcResult,
    RecordError,
    author_domains,
    check,
    is_dmarc_record,
    organizational_domain,
    parse_record,
)
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer


@dataclass(frozen=True)
class Spf:
    value: Value
    identity: str
    domain: str
    method: str = "spf"

    def to_resinfo(self) -> ResInfo:
        return ResInfo("spf", self.value.value)


@dataclass(frozen=True)
class Dkim:
    value: Value
    domain: str | None
    method: str = "dkim"

    def to_resinfo(self) -> ResInfo:
        return ResInfo("dkim", self.value.value)


def message(*from_values: str, extra: str = "") -> bytes:
    fields = "".join(f"From:{value}\r\n" for value in from_values)
    return (f"{fields}To: bob@example.net\r\nSubject: hello\r\n{extra}\r\nBody text.\r\n").encode()


def run_dmarc(
    port: int,
    author: str | bytes,
    *prior: MethodResult,
    mail_from: str = "someone@elsewhere.test",
    draw: Callable[[], float] = lambda: 0.0,
) -> DmarcResult:
    """The one result for a message whose From field is `author` (or the whole message)."""
    raw = author if isinstance(author, bytes) else message(f" {author}")
    ctx = CheckContext("192.0.2.1", "mx.example.net", mail_from, message=raw, prior=prior)

    async def go() -> DmarcResult:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        try:
            (result,) = await check(ctx, resolver, draw=draw)
        finally:
            await resolver.close()
        return result

    return asyncio.run(go())


def field_of(result: DmarcResult) -> str:
    return format_field(AuthenticationResults("mx.example.com", (result.to_resinfo(),)))


def parsed_back(result: DmarcResult) -> ResInfo:
    parsed = parse(field_of(result).split(":", 1)[1])
    (resinfo,) = parsed.results
    return resinfo


def properties(resinfo: ResInfo) -> dict[str, str]:
    return {f"{p.ptype}.{p.name}": p.value for p in resinfo.properties}


# --- Alignment -------------------------------------------------------------------------------

DKIM_PASS_ORG = Dkim(Value.PASS, "dmarc-reject.test")


@pytest.mark.parametrize(
    ("author", "prior", "value", "policy"),
    [
        # Relaxed DKIM: d= a subdomain of the From domain, and the other way round.
        ("a@dmarc-reject.test", [Dkim(Value.PASS, "mail.dmarc-reject.test")], Value.PASS, "reject"),
        ("a@sub.dmarc-reject.test", [DKIM_PASS_ORG], Value.PASS, "quarantine"),
        (
            "a@dmarc-reject.test",
            [Dkim(Value.PASS, "MAIL.Dmarc-Reject.TEST.")],
            Value.PASS,
            "reject",
        ),
        # Relaxed SPF (MAIL FROM identity).
        (
            "a@dmarc-reject.test",
            [Spf(Value.PASS, "mailfrom", "bounce.dmarc-reject.test")],
            Value.PASS,
            "reject",
        ),
        # Any one aligned passing signature is enough among several.
        (
            "a@dmarc-reject.test",
            [Dkim(Value.PASS, "sender.test"), Dkim(Value.FAIL, None), DKIM_PASS_ORG],
            Value.PASS,
            "reject",
        ),
        # Passes that do not align: fail.
        (
            "a@dmarc-reject.test",
            [Dkim(Value.PASS, "sender.test"), Spf(Value.PASS, "mailfrom", "sender.test")],
            Value.FAIL,
            "reject",
        ),
        # A shared public suffix is not an organizational domain.
        ("a@dmarc-reject.test", [Dkim(Value.PASS, "test")], Value.FAIL, "reject"),
        # Aligned results that did not pass, none temporary: fail.
        (
            "a@dmarc-reject.test",
            [
                Dkim(Value.FAIL, "dmarc-reject.test"),
                Dkim(Value.PERMERROR, "dmarc-reject.test"),
                Spf(Value.SOFTFAIL, "mailfrom", "dmarc-reject.test"),
            ],
            Value.FAIL,
            "reject",
        ),
        # A d= that is no domain name aligns with nothing.
        ("a@dmarc-reject.test", [Dkim(Value.PASS, "dmarc-reject.test;x")], Value.FAIL, "reject"),
        # The HELO identity does not count when there is a MAIL FROM (RFC 7489 3.1.2).
        (
            "a@dmarc-reject.test",
            [Spf(Value.PASS, "helo", "mx.dmarc-reject.test")],
            Value.FAIL,
            "reject",
        ),
        # No authentication results at all.
        ("a@dmarc-reject.test", [], Value.FAIL, "reject"),
    ],
)
def test_relaxed_alignment(
    dns_server: KnotServer, author: str, prior: list[MethodResult], value: Value, policy: str
) -> None:
    result = run_dmarc(dns_server.port, author, *prior)
    assert (result.value, result.policy) == (value, policy)


SPF_TEMP = Spf(Value.TEMPERROR, "mailfrom", "tempfail.example")
DKIM_TEMP = Dkim(Value.TEMPERROR, "dmarc-reject.test")


@pytest.mark.parametrize(
    ("prior", "mail_from", "value"),
    [
        # The outage: SPF of an unrelated MAIL FROM and the aligned signature's key
        # both temperror. The signature might pass on a retry: temperror, no disposition
        # (RFC 7489 sections 6.6.2 and 11.2; RFC 8601 section 2.7.1).
        ((SPF_TEMP, DKIM_TEMP), "user@tempfail.example", Value.TEMPERROR),
        ((DKIM_TEMP,), "someone@elsewhere.test", Value.TEMPERROR),
        # An aligned SPF identity in temperror, relaxed alignment (section 3.1.2).
        (
            (Spf(Value.TEMPERROR, "mailfrom", "bounce.dmarc-reject.test"),),
            "x@bounce.dmarc-reject.test",
            Value.TEMPERROR,
        ),
        # The HELO identity stands in for the null sender only (section 3.1.2).
        ((Spf(Value.TEMPERROR, "helo", "mx.dmarc-reject.test"),), "<>", Value.TEMPERROR),
        ((Spf(Value.TEMPERROR, "helo", "mx.dmarc-reject.test"),), "a@x.test", Value.FAIL),
        # Temperrors that could never align: the fail is final.
        ((SPF_TEMP, Dkim(Value.TEMPERROR, "sender.test")), "user@tempfail.example", Value.FAIL),
        ((Dkim(Value.TEMPERROR, None),), "someone@elsewhere.test", Value.FAIL),
        # An aligned pass is final whatever else is temporary.
        ((DKIM_TEMP, DKIM_PASS_ORG), "someone@elsewhere.test", Value.PASS),
    ],
)
def test_an_aligned_identity_in_temperror_makes_dmarc_temperror(
    dns_server: KnotServer, prior: tuple[MethodResult, ...], mail_from: str, value: Value
) -> None:
    result = run_dmarc(dns_server.port, "user@dmarc-reject.test", *prior, mail_from=mail_from)
    assert result.value is value
    if value is Value.TEMPERROR:
        assert result.policy is None  # no disposition for a result that is not final
        written = properties(parsed_back(result))
        assert written == {"header.from": "dmarc-reject.test"}
        assert "dis=" not in field_of(result)
    if value is Value.FAIL:
        assert result.policy == "reject"


_VALUES = [Value.PASS, Value.FAIL, Value.SOFTFAIL, Value.NONE, Value.PERMERROR, Value.TEMPERROR]
_DOMAINS = ["dmarc-reject.test", "mail.dmarc-reject.test", "sender.test"]
_PRIOR = st.one_of(
    st.builds(
        Spf,
        st.sampled_from(_VALUES),
        st.sampled_from(["mailfrom", "helo"]),
        st.sampled_from(_DOMAINS),
    ),
    st.builds(Dkim, st.sampled_from(_VALUES), st.sampled_from([*_DOMAINS, None])),
)


def _resolved(prior: list[MethodResult], value: Value) -> list[MethodResult]:
    """`prior` with every temperror replaced by `value`: one outcome of a later attempt."""
    return [
        dataclasses.replace(r, value=value) if r.value is Value.TEMPERROR else r  # type: ignore[type-var]
        for r in prior
    ]


@settings(max_examples=60)
@given(prior=st.lists(_PRIOR, max_size=4), mail_from=st.sampled_from(["<>", "a@x.test"]))
def test_a_fail_is_final_and_a_temperror_is_not(
    dns_server: KnotServer, prior: list[MethodResult], mail_from: str
) -> None:
    """RFC 7489 section 11.2: fail is final, temperror means a later attempt might give a
    final result. So a fail stays a fail whatever the temperrors turn into, and a
    temperror becomes a pass if they all pass (and a fail if they all fail)."""
    run = functools.partial(run_dmarc, dns_server.port, "a@dmarc-reject.test", mail_from=mail_from)
    result = run(*prior)
    if result.value is Value.FAIL:
        assert run(*_resolved(prior, Value.PASS)).value is Value.FAIL
    if result.value is Value.TEMPERROR:
        assert run(*_resolved(prior, Value.PASS)).value is Value.PASS
        assert run(*_resolved(prior, Value.FAIL)).value is Value.FAIL


@pytest.mark.parametrize("mail_from", ["<>", ""])
def test_helo_identity_counts_for_the_null_sender(dns_server: KnotServer, mail_from: str) -> None:
    helo_pass = Spf(Value.PASS, "helo", "mx.dmarc-reject.test")
    result = run_dmarc(
        dns_server.port, "postmaster@dmarc-reject.test", helo_pass, mail_from=mail_from
    )
    assert result.value is Value.PASS


@pytest.mark.parametrize(
    ("prior", "value"),
    [
        (Dkim(Value.PASS, "dmarc-strict.test"), Value.PASS),
        (Dkim(Value.PASS, "DMARC-Strict.Test"), Value.PASS),
        (Dkim(Value.PASS, "mail.dmarc-strict.test"), Value.FAIL),
        (Spf(Value.PASS, "mailfrom", "dmarc-strict.test"), Value.PASS),
        (Spf(Value.PASS, "mailfrom", "bounce.dmarc-strict.test"), Value.FAIL),
    ],
)
def test_strict_alignment(dns_server: KnotServer, prior: MethodResult, value: Value) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-strict.test", prior)
    assert (result.value, result.policy) == (value, "reject")


def test_strict_fails_where_relaxed_passes(dns_server: KnotServer) -> None:
    subdomain_signature = [Dkim(Value.PASS, "mail.dmarc-strict.test")]
    assert run_dmarc(dns_server.port, "a@dmarc-strict.test", *subdomain_signature).value is (
        Value.FAIL
    )
    relaxed_signature = [Dkim(Value.PASS, "mail.dmarc-reject.test")]
    assert run_dmarc(dns_server.port, "a@dmarc-reject.test", *relaxed_signature).value is (
        Value.PASS
    )


# --- Policy discovery -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("author", "value", "policy", "published"),
    [
        ("a@dmarc-reject.test", Value.FAIL, "reject", ("reject", "quarantine", None)),
        # No record at the subdomain: the organizational domain's, with its sp=.
        ("a@sub.dmarc-reject.test", Value.FAIL, "quarantine", ("reject", "quarantine", None)),
        ("a@deep.sub.dmarc-reject.test", Value.FAIL, "quarantine", ("reject", "quarantine", None)),
        ("a@sub.dmarc-none.test", Value.FAIL, "reject", ("none", "reject", None)),
        ("a@dmarc-none.test", Value.FAIL, "none", ("none", "reject", None)),
        # The subdomain's own record wins; a non-DMARC TXT there is ignored.
        ("a@own.dmarc-reject.test", Value.FAIL, "none", ("none", None, None)),
        ("a@other.dmarc-reject.test", Value.FAIL, "quarantine", ("reject", "quarantine", None)),
        ("a@split.dmarc-none.test", Value.FAIL, "quarantine", ("quarantine", None, None)),
        ("a@mixed.dmarc-two.test", Value.FAIL, "reject", ("reject", None, None)),
        # Invalid p= rescued by a valid rua= (RFC 7489 6.6.3 step 6.1).
        ("a@rua.dmarc-invalid.test", Value.FAIL, "none", ("none", None, None)),
        ("a@nop.dmarc-invalid.test", Value.FAIL, "none", ("none", None, None)),
        # U-label From domain: looked up as its A-label, which has its own record.
        ("a@b\u00fccher.dmarc-reject.test", Value.FAIL, "none", ("none", None, None)),
    ],
)
def test_policy_discovery(
    dns_server: KnotServer,
    author: str,
    value: Value,
    policy: str,
    published: tuple[str | None, str | None, int | None],
) -> None:
    result = run_dmarc(dns_server.port, author)
    assert (result.value, result.policy) == (value, policy)
    assert (result.p, result.sp, result.pct) == published


def test_idn_author_domain_is_reported_as_its_a_label(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "=?utf-8?q?J=C3=BCrgen?= <j@B\u00dcCHER.dmarc-reject.test>")
    assert result.from_domain == "xn--bcher-kva.dmarc-reject.test"
    assert properties(parsed_back(result))["header.from"] == "xn--bcher-kva.dmarc-reject.test"


@pytest.mark.parametrize(
    "author",
    [
        "a@dmarc-norecord.test",
        "a@sub.dmarc-norecord.test",
        "a@dmarc-two.test",  # two DMARC records (RFC 7489 6.6.3 step 5)
        "a@sub.dmarc-two.test",  # two at the organizational domain
    ],
)
def test_no_policy_is_none(dns_server: KnotServer, author: str) -> None:
    result = run_dmarc(dns_server.port, author, DKIM_PASS_ORG)
    assert (result.value, result.policy, result.p) == (Value.NONE, None, None)
    assert result.from_domain == author.split("@")[1]


def test_invalid_record_without_rua_is_permerror(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-invalid.test")
    assert (result.value, result.from_domain, result.policy) == (
        Value.PERMERROR,
        "dmarc-invalid.test",
        None,
    )


# --- pct= sampling (RFC 7489 6.6.4) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("author", "draw", "policy"),
    [
        ("a@dmarc-pct.test", 0.0, "reject"),
        ("a@dmarc-pct.test", 0.49, "reject"),
        ("a@dmarc-pct.test", 0.5, "quarantine"),  # outside the sample: the next weaker policy
        ("a@dmarc-pct.test", 0.99, "quarantine"),
        ("a@quarantine.dmarc-pct.test", 0.0, "none"),  # pct=0 samples nothing
    ],
)
def test_pct_sampling_of_failing_mail(
    dns_server: KnotServer, author: str, draw: float, policy: str
) -> None:
    result = run_dmarc(dns_server.port, author, draw=lambda: draw)
    assert (result.value, result.policy) == (Value.FAIL, policy)


def test_pct_does_not_touch_passing_mail(dns_server: KnotServer) -> None:
    aligned = Dkim(Value.PASS, "dmarc-pct.test")

    def no_draw() -> float:
        raise AssertionError("a passing message is not sampled")

    result = run_dmarc(dns_server.port, "a@dmarc-pct.test", aligned, draw=no_draw)
    assert (result.value, result.policy, result.pct) == (Value.PASS, "reject", 50)
    assert "(p=reject sp=reject pct=50 dis=none)" in field_of(result)


# --- DNS trouble ---------------------------------------------------------------------------------


def test_servfail_at_the_from_domain_is_temperror(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@mail.servfail.test", DKIM_PASS_ORG)
    assert (result.value, result.from_domain) == (Value.TEMPERROR, "mail.servfail.test")


def test_servfail_at_the_organizational_domain_is_temperror() -> None:
    # _dmarc.sub.orgfail.test answers (no record), _dmarc.orgfail.test is SERVFAIL.
    child = (
        "$ORIGIN _dmarc.sub.orgfail.test.\n$TTL 300\n"
        "@ SOA ns.orgfail.test. hostmaster.orgfail.test. 1 3600 600 86400 60\n"
        "@ NS ns.orgfail.test.\n"
    )
    server = KnotServer({"_dmarc.sub.orgfail.test": child}, servfail_zones=("orgfail.test",))
    try:
        result = run_dmarc(server.port, "a@sub.orgfail.test")
    finally:
        server.close()
    assert (result.value, result.from_domain) == (Value.TEMPERROR, "sub.orgfail.test")
    assert "_dmarc.orgfail.test" in result.reason


def test_server_down_is_temperror() -> None:
    server = KnotServer()
    port = server.port
    server.close()
    result = run_dmarc(port, "a@dmarc-reject.test", DKIM_PASS_ORG)
    assert (result.value, result.from_domain) == (Value.TEMPERROR, "dmarc-reject.test")


# --- The author domain (RFC 7489 6.6.1) -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        message(),  # no From field
        message(" a@dmarc-reject.test", " b@dmarc-reject.test"),  # two From fields
        message(" a@dmarc-reject.test", extra="FROM : b@dmarc-none.test\r\n"),
        message(" garbage"),
        message(""),
        message(" Undisclosed:;"),  # RFC 6854 group without a mailbox: no domain
        message(" a@[192.0.2.1]"),
        message(" <>"),
        message(" a@dmarc-reject.test."),
        message(" a@-bad-.test"),
        message(" a@localhost"),  # not a fully-qualified name
        message(" a@\u05d0a.test"),  # U-label the IDNA codec refuses (bidi rule)
        message(" a@xn--zz.test"),  # an A-label that is not valid punycode
        message(" x@=?utf-8?q?dmarc-reject.test?="),  # encoded-word in the addr-spec
        message(" a@dmarc-reject.test <b@dmarc-none.test>"),
        message(" a@dmarc-reject.test; dkim=pass"),
        message(" (" * 3000 + "a@dmarc-reject.test"),  # the stdlib parser recurses too deep
        message(" " + "x" * 5000 + "@dmarc-reject.test"),
        b"From: a@dmarc-reject.test\x00\r\n\r\nbody\r\n",
        message(" " + ", ".join(f"a@d{i}.test" for i in range(6))),  # too many domains
        b"\r\nFrom: a@dmarc-reject.test\r\n\r\n",  # a From field in the body only
    ],
)
def test_unusable_from_field_is_permerror(dns_server: KnotServer, raw: bytes) -> None:
    result = run_dmarc(dns_server.port, raw, DKIM_PASS_ORG)
    assert (result.value, result.from_domain, result.policy) == (Value.PERMERROR, None, None)
    resinfo = parsed_back(result)
    assert (resinfo.method, resinfo.result, resinfo.properties) == ("dmarc", "permerror", ())


def test_no_message_is_permerror(dns_server: KnotServer) -> None:
    async def go() -> DmarcResult:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        try:
            (result,) = await check(CheckContext("192.0.2.1"), resolver)
        finally:
            await resolver.close()
        return result

    assert asyncio.run(go()).value is Value.PERMERROR


@pytest.mark.parametrize(
    ("raw", "domains"),
    [
        (b"From: Alice <alice@Example.TEST>\r\n\r\n", ("example.test",)),
        (b"from:alice@example.test\n\nFrom: body@elsewhere.test\n", ("example.test",)),
        (b'From: "Alice, a@evil.test" <alice@example.test>\r\n\r\n', ("example.test",)),
        (b'From: "quoted local"@example.test (a@evil.test)\r\n\r\n', ("example.test",)),
        (b"From: =?utf-8?q?a=40evil.test?= <alice@example.test>\r\n\r\n", ("example.test",)),
        (b"From: Dr. Alice <alice@example.test>\r\n\r\n", ("example.test",)),  # obs-phrase
        (b"From: Alice\r\n <alice@example.test>\r\n\r\n", ("example.test",)),  # folded
        (b"Subject: x\r\n From: b@evil.test\r\nFrom: a@example.test\r\n\r\n", ("example.test",)),
        (b"From a@mbox.test Mon Jan 1\r\nFrom: a@example.test\r\n\r\n", ("example.test",)),
        (
            b"From: team: a@example.test, b@sub.example.test;\r\n\r\n",
            ("example.test", "sub.example.test"),
        ),
        (b"From: a@example.test, b@EXAMPLE.test\r\n\r\n", ("example.test",)),
        ("From: J\u00fcrgen <j@b\u00fccher.test>\r\n\r\n".encode(), ("xn--bcher-kva.test",)),
        ("From: j\u00fcrgen@b\u00fccher.test\r\n\r\n".encode(), ("xn--bcher-kva.test",)),  # EAI
        (b"From: Ren\xe9 <r@example.test>\r\n\r\n", ("example.test",)),  # not UTF-8
    ],
)
def test_author_domains(raw: bytes, domains: tuple[str, ...]) -> None:
    assert author_domains(raw) == domains


def test_a_stray_line_does_not_hide_a_second_from_field() -> None:
    # The email package would end the header at the stray line; a reader may not.
    raw = b"From: a@example.test\r\nthis is no field\r\nFrom: b@evil.test\r\n\r\n"
    with pytest.raises(AuthorError, match="2 From fields"):
        author_domains(raw)


@given(st.text(max_size=200))
def test_any_from_field_gives_checked_domains_or_author_error(value: str) -> None:
    raw = b"From: " + value.encode("utf-8", errors="replace") + b"\r\n\r\n"
    try:
        domains = author_domains(raw)
    except AuthorError:
        return
    for domain in domains:
        result = DmarcResult(Value.FAIL, domain, "reject", p="reject")
        assert properties(parsed_back(result))["header.from"] == domain


# --- Several author domains (RFC 7489 6.6.1) --------------------------------------------------


def test_two_addresses_of_one_domain_are_one_author_domain(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-reject.test, b@dmarc-reject.test", DKIM_PASS_ORG)
    assert (result.value, result.from_domain) == (Value.PASS, "dmarc-reject.test")


@pytest.mark.parametrize(
    ("prior", "value", "from_domain", "policy"),
    [
        # Both fail: the strictest policy among the failing checks.
        ((), Value.FAIL, "dmarc-reject.test", "reject"),
        # The spoofed domain fails, the attacker's passes: still a fail.
        ((Dkim(Value.PASS, "dmarc-none.test"),), Value.FAIL, "dmarc-reject.test", "reject"),
        ((DKIM_PASS_ORG,), Value.FAIL, "dmarc-none.test", "none"),
        (
            (DKIM_PASS_ORG, Dkim(Value.PASS, "dmarc-none.test")),
            Value.PASS,
            "dmarc-none.test",
            "none",
        ),
    ],
)
def test_several_author_domains_apply_the_strictest_failing_policy(
    dns_server: KnotServer,
    prior: tuple[MethodResult, ...],
    value: Value,
    from_domain: str,
    policy: str,
) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-none.test, b@dmarc-reject.test", *prior)
    assert (result.value, result.from_domain, result.policy) == (value, from_domain, policy)


def test_a_temperror_that_may_hide_a_stricter_failure_wins_over_a_weaker_fail(
    dns_server: KnotServer,
) -> None:
    """Section 6.6.1, several author domains: dmarc-none.test fails under p=none, but
    dmarc-reject.test (p=reject) is temperror because its aligned signature is; judging
    the message by the weaker policy would hide what a retry may show."""
    result = run_dmarc(dns_server.port, "a@dmarc-none.test, b@dmarc-reject.test", DKIM_TEMP)
    assert (result.value, result.from_domain) == (Value.TEMPERROR, "dmarc-reject.test")
    # A failure under the strictest policy already is final.
    none_temp = Dkim(Value.TEMPERROR, "dmarc-none.test")
    result = run_dmarc(dns_server.port, "a@dmarc-none.test, b@dmarc-reject.test", none_temp)
    assert (result.value, result.from_domain, result.policy) == (
        Value.FAIL,
        "dmarc-reject.test",
        "reject",
    )


def test_an_unchecked_author_domain_is_not_a_pass(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@mail.servfail.test, b@dmarc-reject.test", DKIM_PASS_ORG)
    assert (result.value, result.from_domain) == (Value.TEMPERROR, "mail.servfail.test")


# --- Record parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "is_record"),
    [
        ("v=DMARC1; p=reject", True),
        ("v=DMARC1", True),
        ("V = DMARC1 ;p=none", True),
        ("v=dmarc1; p=reject", False),  # the value must match exactly (RFC 7489 6.3)
        ("p=reject; v=DMARC1", False),  # v must be the first tag
        (" v=DMARC1; p=reject", False),
        ("v=DMARC1p=reject", False),
        ("v=DMARC10; p=reject", False),
        ("v=spf1 -all", False),
    ],
)
def test_is_dmarc_record(text: str, is_record: bool) -> None:
    assert is_dmarc_record(text) is is_record


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("v=DMARC1; p=reject", DmarcRecord("reject")),
        (
            "v=DMARC1;p=Quarantine;sp=NONE;adkim=S;aspf=s;pct=20;",
            DmarcRecord("quarantine", "none", "s", "s", 20),
        ),
        ("v=DMARC1 ; p = reject ; fo=1; rf=afrf; ri=86400; future_tag=x", DmarcRecord("reject")),
        # An invalid adkim/aspf/pct takes the default (RFC 7489 6.3).
        ("v=DMARC1; p=reject; adkim=x; aspf=; pct=101", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=-1", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=0", DmarcRecord("reject", pct=0)),
        # Invalid p= or sp= with a valid rua=: p=none (RFC 7489 6.6.3 step 6.1).
        ("v=DMARC1; p=bogus; rua=mailto:d@example.test", DmarcRecord("none")),
        ("v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.test!10m", DmarcRecord("none")),
        ("v=DMARC1; adkim=s; rua=bogus, https://example.test/r", DmarcRecord("none", adkim="s")),
    ],
)
def test_parse_record(text: str, record: DmarcRecord) -> None:
    assert parse_record(text) == record


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC1",  # no p= and no rua=
        "v=DMARC1; p=bogus",
        "v=DMARC1; p=reject; sp=bogus",
        "v=DMARC1; p=bogus; rua=not a uri",
        "v=DMARC1; p=bogus; rua=",
        "v=DMARC1; p=reject; p=none",  # a repeated tag (RFC 6376 3.2, adopted by 6.4)
        "v=DMARC1; p=reject; garbage",
        "v=DMARC1; p=reject; 1x=y",
    ],
)
def test_invalid_record(text: str) -> None:
    with pytest.raises(RecordError):
        parse_record(text)


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("sub.example.test", "example.test"),
        ("example.test", "example.test"),
        ("a.b.co.uk", "b.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own organizational domain
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


# --- Reporting ---------------------------------------------------------------------------------


def test_resinfo_of_a_pass(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-reject.test", DKIM_PASS_ORG)
    field = field_of(result)
    assert (
        "dmarc=pass (p=reject sp=quarantine pct=100 dis=none) header.from=dmarc-reject.test"
        " policy.dmarc=reject" in " ".join(field.split())
    )
    resinfo = parsed_back(result)
    assert (resinfo.method, resinfo.result) == ("dmarc", "pass")
    assert properties(resinfo) == {"header.from": "dmarc-reject.test", "policy.dmarc": "reject"}


def test_resinfo_of_a_sampled_fail(dns_server: KnotServer) -> None:
    result = run_dmarc(dns_server.port, "a@dmarc-pct.test", draw=lambda: 0.9)
    assert "(p=reject sp=reject pct=50 dis=quarantine)" in field_of(result)
    assert properties(parsed_back(result)) == {
        "header.from": "dmarc-pct.test",
        "policy.dmarc": "quarantine",
    }


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (DmarcResult(Value.NONE, "example.test"), {"header.from": "example.test"}),
        (DmarcResult(Value.TEMPERROR, "example.test"), {"header.from": "example.test"}),
        (DmarcResult(Value.PERMERROR), {}),
    ],
)
def test_resinfo_without_a_policy(result: DmarcResult, expected: dict[str, str]) -> None:
    resinfo = parsed_back(result)
    assert (resinfo.result, properties(resinfo)) == (result.value.value, expected)
    assert "(" not in field_of(result)


@pytest.mark.parametrize(
    "hostile",
    [
        "evil.test; dkim=pass",
        "evil.test (x",
        'evil".test',
        "ev\u00efl.test",
        "evil.test\r\nX: y",
        "a@evil.test",
        "",
    ],
)
def test_a_hostile_from_domain_never_reaches_the_field(hostile: str) -> None:
    result = DmarcResult(Value.PASS, hostile, "reject", p="reject")
    resinfo = parsed_back(result)
    assert (resinfo.method, resinfo.result) == ("dmarc", "pass")
    assert properties(resinfo) == {"policy.dmarc": "reject"}
    assert "evil" not in field_of(result)


# --- The check as the runner sees it -------------------------------------------------------------


def test_check_declaration() -> None:
    assert (CHECK.method, CHECK.stage, CHECK.run) == ("dmarc", Stage.AFTER_CHECKS, check)


def test_timeout_is_temperror_with_the_from_domain() -> None:
    ctx = CheckContext("192.0.2.1", message=message(" Alice <alice@B\u00fccher.test>"))
    (result,) = CHECK.on_timeout(ctx)
    assert result.value is Value.TEMPERROR
    assert properties(parsed_back(result)) == {"header.from": "xn--bcher-kva.test"}


@pytest.mark.parametrize("raw", [None, message(), message(" a@b.test", " c@d.test")])
def test_timeout_with_an_unusable_from_field_is_permerror(raw: bytes | None) -> None:
    (result,) = CHECK.on_timeout(CheckContext("192.0.2.1", message=raw))
    assert isinstance(result, DmarcResult)
    assert (result.value, result.from_domain) == (Value.PERMERROR, None)


@pytest.mark.parametrize(
    "domain",
    ["example.com", "mail.example.com", "a.b.example.co.uk", "co.uk", "sub.example.test", "com"],
)
def test_cached_organizational_domain_is_the_uncached_one(domain: str) -> None:
    """RFC 7489 section 3.2, cached per worker: the same answer, first time and from the cache."""
    uncached = organizational_domain.__wrapped__(domain)
    assert organizational_domain(domain) == uncached
    assert organizational_domain(domain) == uncached
