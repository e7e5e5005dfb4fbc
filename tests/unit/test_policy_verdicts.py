from __future__ import annotations

import dataclasses

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
