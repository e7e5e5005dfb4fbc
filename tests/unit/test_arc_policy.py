"""The trusted ARC sealer override (arproxy.policy): RFC 7489 section 6.7 leaves the
disposition of failing mail to local policy, RFC 8617 section 7.2 names this use of ARC.
Pure logic on typed results: every condition is shown necessary by removing it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from arproxy.authres import AuthenticationResults, Property, ResInfo, format_field, parse
from arproxy.checks.arc import ArcResult
from arproxy.checks.base import ArcOutcome, ArcOverride, DmarcOutcome, Value
from arproxy.checks.dmarc import DmarcResult
from arproxy.checks.iprev import IprevResult
from arproxy.config import ConfigError, parse_config
from arproxy.outcome import summary
from arproxy.policy import (
    _dmarc_would_reject,
    _vouching_sealer,
    arc_override,
    decide,
    sealer_vouches,
    with_arc_override,
)

CONFIG = dataclasses.replace(
    parse_config("", "t").policy, reject_dmarc=True, trusted_arc_sealers=("lists.example",)
)
DMARC_FAIL = DmarcResult(
    Value.FAIL, "arc.test", policy="reject", p="reject", reason="no aligned pass"
)
RECORDED = (
    ResInfo("dkim", "pass", properties=(Property("header", "d", "arc.test"),)),
    ResInfo("dmarc", "pass", properties=(Property("header", "from", "arc.test"),)),
)
ARC_PASS = ArcResult(
    Value.PASS, "127.0.0.2", oldest_pass=0, sealer="lists.example", sealer_results=RECORDED, sets=1
)


def test_a_trusted_sealer_vouching_for_the_author_lifts_reject_dmarc() -> None:
    results = with_arc_override([DMARC_FAIL, ARC_PASS], CONFIG)
    dmarc = results[0]
    assert isinstance(dmarc, DmarcResult)
    assert dmarc.value is Value.FAIL  # the RFC 7489 result is kept
    assert dmarc.override == ArcOverride("lists.example", "dmarc=pass header.from=arc.test")
    assert decide(results, CONFIG).accepted
    # The field keeps dmarc=fail and says why in the comment; it parses back.
    field = format_field(
        AuthenticationResults("example.com", tuple(r.to_resinfo() for r in results))
    )
    assert "policy not applied: ARC sealed by lists.example" in field.replace("\r\n", "")
    parsed = parse(field.split(":", 1)[1])
    assert [(r.method, r.result) for r in parsed.results] == [("dmarc", "fail"), ("arc", "pass")]
    # The summary of the log line names the sealer.
    assert "arc override by lists.example" in summary(results)


@pytest.mark.parametrize(
    ("dmarc", "arc", "trusted"),
    [
        (
            DMARC_FAIL,
            ArcResult(Value.FAIL, "127.0.0.2", sealer="lists.example", sealer_results=RECORDED),
            ("lists.example",),
        ),
        (DMARC_FAIL, ARC_PASS, ("forwarder.test",)),
        (DMARC_FAIL, ARC_PASS, ()),
        (DMARC_FAIL, dataclasses.replace(ARC_PASS, sealer_results=None), ("lists.example",)),
        (DMARC_FAIL, dataclasses.replace(ARC_PASS, sealer_results=()), ("lists.example",)),
        (DMARC_FAIL, dataclasses.replace(ARC_PASS, sealer="sub.lists.example"), ("lists.example",)),
        (dataclasses.replace(DMARC_FAIL, value=Value.TEMPERROR), ARC_PASS, ("lists.example",)),
        (dataclasses.replace(DMARC_FAIL, value=Value.PASS), ARC_PASS, ("lists.example",)),
    ],
)
def test_every_condition_is_needed(
    dmarc: DmarcResult, arc: ArcResult, trusted: tuple[str, ...]
) -> None:
    assert arc_override([dmarc, arc], trusted) is None


def test_the_sealer_matches_case_insensitively_as_an_a_label() -> None:
    config = parse_config(
        '[policy]\ntrusted_arc_sealers = ["Lists.Example.", "bücher.example"]\n', "t"
    )
    assert config.policy.trusted_arc_sealers == ("lists.example", "xn--bcher-kva.example")
    idn = dataclasses.replace(ARC_PASS, sealer="xn--bcher-kva.example")
    assert arc_override([DMARC_FAIL, idn], config.policy.trusted_arc_sealers) is not None


def test_a_sealer_that_is_not_a_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trusted_arc_sealers"):
        parse_config('[policy]\ntrusted_arc_sealers = ["not a domain"]\n', "t")


def test_the_override_leaves_the_other_switches_alone() -> None:
    config = dataclasses.replace(CONFIG, reject_iprev_fail=True)
    results = with_arc_override(
        [IprevResult(Value.FAIL, "127.0.0.2"), DMARC_FAIL, ARC_PASS], config
    )
    assert str(decide(results, config).reply).startswith("550 5.7.25")


@pytest.mark.parametrize(
    ("recorded", "vouches"),
    [
        (ResInfo("dmarc", "pass", properties=(Property("header", "from", "ARC.test"),)), True),
        (ResInfo("dmarc", "pass", properties=(Property("header", "from", "bank.example"),)), False),
        (ResInfo("dmarc", "pass"), False),  # about which domain?
        (ResInfo("dmarc", "fail", properties=(Property("header", "from", "arc.test"),)), False),
        (ResInfo("dkim", "pass", properties=(Property("header", "d", "mail.arc.test"),)), True),
        (ResInfo("dkim", "pass", properties=(Property("header", "d", "arc.example"),)), False),
        (ResInfo("spf", "pass", properties=(Property("smtp", "mailfrom", "a@arc.test"),)), True),
        (
            ResInfo("spf", "pass", properties=(Property("smtp", "mailfrom", "b@lists.example"),)),
            False,
        ),
        (
            ResInfo("spf", "softfail", properties=(Property("smtp", "mailfrom", "a@arc.test"),)),
            False,
        ),
    ],
)
def test_what_the_hop_recorded_must_authenticate_the_author(
    recorded: ResInfo, vouches: bool
) -> None:
    # RFC 7489 section 3.1 (relaxed alignment: same organizational domain).
    assert (sealer_vouches((recorded,), "arc.test") is not None) is vouches


def test_a_dns_failure_of_a_trusted_chain_is_never_a_permanent_refusal() -> None:
    temporary = dataclasses.replace(
        ARC_PASS, value=Value.FAIL, temporary=True, reason="key lookup failed temporarily"
    )
    verdict = decide(with_arc_override([DMARC_FAIL, temporary], CONFIG), CONFIG)
    assert str(verdict.reply).startswith("451 4.7.1")
    # The same failure from an untrusted sealer changes nothing: DMARC's policy applies.
    untrusted = dataclasses.replace(temporary, sealer="forwarder.test")
    assert str(decide([DMARC_FAIL, untrusted], CONFIG).reply).startswith("550 5.7.1")


# --- the values are read before the protocol checks (issue 9) ---------------------------------


class _Impostor:
    """A result named dmarc or arc that is neither DmarcOutcome nor ArcOutcome."""

    def __init__(self, method: str, value: Value) -> None:
        self.method = method
        self.value = value

    def to_resinfo(self) -> ResInfo:
        return ResInfo(self.method, self.value.value)


def _arc_override_protocols_first(
    results: list[object], trusted: tuple[str, ...]
) -> ArcOverride | None:
    """arc_override as it was, the isinstance checks first (the oracle)."""
    by_method = {r.method: r for r in results}  # type: ignore[attr-defined]
    dmarc, arc = by_method.get("dmarc"), by_method.get("arc")
    if not isinstance(dmarc, DmarcOutcome) or not isinstance(arc, ArcOutcome):
        return None
    if dmarc.value is not Value.FAIL or dmarc.from_domain is None or arc.value is not Value.PASS:
        return None
    return _vouching_sealer(arc, dmarc.from_domain, trusted)


_VALUES = st.sampled_from(list(Value))
_DMARC = st.one_of(
    st.none(),
    st.builds(
        lambda value, domain, policy: dataclasses.replace(
            DMARC_FAIL, value=value, from_domain=domain, policy=policy
        ),
        _VALUES,
        st.sampled_from([None, "arc.test", "other.test"]),
        st.sampled_from([None, "none", "reject"]),
    ),
    st.builds(_Impostor, st.just("dmarc"), _VALUES),
)
_ARC = st.one_of(
    st.none(),
    st.builds(
        lambda value, sealer, recorded, temporary: dataclasses.replace(
            ARC_PASS, value=value, sealer=sealer, sealer_results=recorded, temporary=temporary
        ),
        _VALUES,
        st.sampled_from([None, "lists.example", "other.example"]),
        st.sampled_from([None, (), RECORDED]),
        st.booleans(),
    ),
    st.builds(_Impostor, st.just("arc"), _VALUES),
)


@given(
    dmarc=_DMARC,
    arc=_ARC,
    trusted=st.sampled_from([(), ("lists.example",)]),
    reject_dmarc=st.booleans(),
)
@example(dmarc=DMARC_FAIL, arc=ARC_PASS, trusted=("lists.example",), reject_dmarc=True)
@example(
    dmarc=DMARC_FAIL,
    arc=dataclasses.replace(ARC_PASS, value=Value.FAIL, temporary=True),
    trusted=("lists.example",),
    reject_dmarc=True,
)
@example(
    dmarc=_Impostor("dmarc", Value.FAIL),
    arc=ARC_PASS,
    trusted=("lists.example",),
    reject_dmarc=True,
)
@example(
    dmarc=DMARC_FAIL,
    arc=_Impostor("arc", Value.PASS),
    trusted=("lists.example",),
    reject_dmarc=True,
)
def test_reading_the_values_first_decides_as_the_protocol_checks_did(
    dmarc: object, arc: object, trusted: tuple[str, ...], reject_dmarc: bool
) -> None:
    results: list[Any] = [r for r in (dmarc, arc) if r is not None]
    assert arc_override(results, trusted) == _arc_override_protocols_first(results, trusted)
    config = dataclasses.replace(CONFIG, reject_dmarc=reject_dmarc, trusted_arc_sealers=trusted)
    expected_reject = (
        isinstance(dmarc, DmarcOutcome)
        and dmarc.value is Value.FAIL
        and dmarc.policy == "reject"
        and dmarc.override is None
    )
    assert _dmarc_would_reject(dmarc) == expected_reject  # type: ignore[arg-type]
    decide(with_arc_override(results, config), config)  # no error on any mix


@pytest.mark.parametrize("arc_value", list(Value))
@pytest.mark.parametrize("dmarc_value", list(Value))
def test_only_dmarc_fail_and_arc_pass_reach_the_sealer(
    dmarc_value: Value, arc_value: Value
) -> None:
    """Every other pair of values stops before the protocol checks, as it stopped after."""
    results: list[Any] = [
        dataclasses.replace(DMARC_FAIL, value=dmarc_value),
        dataclasses.replace(ARC_PASS, value=arc_value),
    ]
    found = arc_override(results, ("lists.example",))
    assert found == _arc_override_protocols_first(results, ("lists.example",))
    assert (found is not None) == (dmarc_value is Value.FAIL and arc_value is Value.PASS)
