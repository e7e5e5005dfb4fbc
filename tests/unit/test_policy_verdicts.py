from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.checks.base import Value
from arproxy.checks.dmarc import DmarcResult
from arproxy.checks.iprev import IprevResult
from arproxy.checks.spf import SpfResult
from arproxy.config import parse_config
from arproxy.policy import decide

OFF = parse_config("", "t").policy
ALL = dataclasses.replace(
    OFF, reject_dmarc=True, reject_spf_fail=True, reject_iprev_fail=True, tempfail_on_temperror=True
)
DMARC_REJECT = DmarcResult(Value.FAIL, "sender.test", policy="reject", p="reject")
DMARC_QUARANTINE = DmarcResult(Value.FAIL, "sender.test", policy="quarantine", p="reject")
SPF_FAIL = SpfResult(Value.FAIL, "mailfrom", "sender.test")
IPREV_FAIL = IprevResult(Value.FAIL, "192.0.2.1")
SPF_TEMP = SpfResult(Value.TEMPERROR, "mailfrom", "sender.test")


def test_policy_is_off_by_default() -> None:
    assert decide([DMARC_REJECT, SPF_FAIL, IPREV_FAIL, SPF_TEMP], OFF).accepted


def test_each_switch_gives_its_rfc7372_reply() -> None:
    def reply(results: list[object]) -> str:
        verdict = decide(results, ALL)  # type: ignore[arg-type]
        return str(verdict.reply)

    assert reply([DMARC_REJECT]).startswith("550 5.7.1 DMARC")
    assert reply([SPF_FAIL]).startswith("550 5.7.23 SPF")
    assert reply([IPREV_FAIL]).startswith("550 5.7.25 iprev")
    assert reply([SPF_TEMP]).startswith("451 4.7.24 spf")


def test_dmarc_quarantine_after_pct_sampling_is_not_rejected() -> None:
    assert decide([DMARC_QUARANTINE], dataclasses.replace(OFF, reject_dmarc=True)).accepted


DMARC_TEMP = DmarcResult(Value.TEMPERROR, "sender.test", p="reject")
FINAL_REFUSALS = [DMARC_REJECT, SPF_FAIL, IPREV_FAIL]


@pytest.mark.parametrize("refusal", FINAL_REFUSALS)
def test_a_temperror_is_never_turned_into_a_permanent_refusal(refusal: object) -> None:
    """RFC 8601 section 2.7.1, RFC 7208 section 2.6.6, RFC 7489 section 11.2: a later attempt
    may give a final result. With tempfail_on_temperror, any temperror answers 451 before
    every reject_* switch, whatever the order of the results."""
    for results in ([refusal, SPF_TEMP], [SPF_TEMP, refusal], [refusal, DMARC_TEMP]):
        verdict = decide(results, ALL)  # type: ignore[arg-type]
        assert str(verdict.reply).startswith("451 4.7."), results
        assert verdict.reason.endswith("=temperror")


def test_dmarc_temperror_is_451_or_delivered_never_550() -> None:
    """The issue's outage: spf and dkim temperror, so dmarc temperror (checks/dmarc/)."""
    results = [SPF_TEMP, DMARC_TEMP]
    assert str(decide(results, ALL).reply).startswith("451 4.7.24")
    reject_only = dataclasses.replace(OFF, reject_dmarc=True)
    assert decide(results, reject_only).accepted  # delivered, the temperror written
    assert decide([DMARC_TEMP], reject_only).accepted


@pytest.mark.parametrize("refusal", FINAL_REFUSALS)
def test_final_fails_are_still_refused_without_a_temperror(refusal: object) -> None:
    assert str(decide([refusal], ALL).reply).startswith("550 5.7.")  # type: ignore[list-item]


_ANY_RESULT = st.one_of(
    st.builds(SpfResult, st.sampled_from(list(Value)), st.just("mailfrom"), st.just("s.test")),
    st.builds(IprevResult, st.sampled_from(list(Value)), st.just("192.0.2.1")),
    st.builds(
        DmarcResult,
        st.sampled_from(list(Value)),
        st.just("s.test"),
        st.sampled_from(["none", "quarantine", "reject", None]),
    ),
)


@given(
    results=st.lists(_ANY_RESULT, max_size=5),
    switches=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_no_switch_turns_a_temperror_into_a_5xx(
    results: list[object], switches: list[bool]
) -> None:
    """Every combination of switches and results: with tempfail_on_temperror a temperror
    always gives 451; a 5xx only ever comes from a final fail of the switch's method."""
    config = dataclasses.replace(
        OFF,
        reject_dmarc=switches[0],
        reject_spf_fail=switches[1],
        reject_iprev_fail=switches[2],
        tempfail_on_temperror=switches[3],
    )
    verdict = decide(results, config)  # type: ignore[arg-type]
    temporary = any(r.value is Value.TEMPERROR for r in results)  # type: ignore[attr-defined]
    if temporary and config.tempfail_on_temperror:
        assert verdict.reply is not None and verdict.reply.code == 451
    if verdict.reply is not None and verdict.reply.code >= 500:
        method = verdict.reason.split("=")[0]
        assert any(r.method == method and r.value is Value.FAIL for r in results)  # type: ignore[attr-defined]
