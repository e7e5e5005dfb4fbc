"""arproxy.outcome: the one log line of each decision, and the client facts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from arproxy.authres import ResInfo
from arproxy.checks.base import Value
from arproxy.outcome import (
    ClientFacts,
    Decider,
    RecipientOutcome,
    TransactionOutcome,
    log_line,
)
from arproxy.replies import DOWNSTREAM_UNAVAILABLE, RELAY_DENIED, Reply, dmarc_rejected

CLIENT = ClientFacts(ip="192.0.2.1", port=4000, helo="mx.sender.example", esmtp=True)


@dataclass(frozen=True)
class Result:
    method: str
    value: Value
    reason: str = ""

    def to_resinfo(self) -> ResInfo:
        return ResInfo(self.method, self.value.value)


def transaction(**changes: object) -> TransactionOutcome:
    values: dict[str, object] = {
        "queue_id": "Q1",
        "client": CLIENT,
        "sender": "alice@sender.example",
        "recipients": ("bob@example.com",),
        "size": 4312,
        "decided_by": Decider.DOWNSTREAM,
        "reply": Reply.of(250, "2.0.0", "Ok: queued as 4Xk2"),
        "elapsed": 0.0314,
        "results": (Result("iprev", Value.PASS), Result("spf", Value.FAIL, "not permitted")),
        "relay": "smtp://127.0.0.1:2526",
    }
    values.update(changes)
    return TransactionOutcome(**values)  # type: ignore[arg-type]


def test_summary_line_carries_queue_id_results_and_reasons() -> None:
    line = log_line(transaction())
    assert line == (
        "id=Q1 client=192.0.2.1 stage=downstream helo=mx.sender.example "
        "from=<alice@sender.example> nrcpt=1 size=4312 forged=0 "
        "results=[iprev=pass spf=fail (not permitted)] relay=smtp://127.0.0.1:2526 "
        "time=0.031 relayed: 250 2.0.0 Ok: queued as 4Xk2"
    )


def test_policy_refusal_names_the_rule_and_the_reply() -> None:
    outcome = transaction(
        decided_by=Decider.POLICY,
        reply=dmarc_rejected("sender.example"),
        reason="dmarc=fail p=reject",
        results=(Result("dmarc", Value.FAIL, "From domain's policy: p=reject"),),
    )
    line = log_line(outcome)
    assert "stage=policy" in line
    assert "results=[dmarc=fail (From domain's policy: p=reject)]" in line
    assert line.endswith(
        "reject by policy (dmarc=fail p=reject): 550 5.7.1 DMARC: message rejected by the "
        "policy of sender.example"
    )


def test_client_text_and_reasons_cannot_break_the_line() -> None:
    client = ClientFacts(ip="192.0.2.1", helo="evil\r\nid=FAKE")
    outcome = transaction(
        client=client,
        sender="a\nb@x",
        results=(Result("spf", Value.PERMERROR, "bad ] and ) in\n text"),),
        forged=("evil.example", "x\ny"),
    )
    line = log_line(outcome)
    assert "\n" not in line and "\r" not in line
    assert "helo=evil\\x0d\\x0aid=FAKE" in line
    results = re.search(r"results=\[(.*?)\]", line)
    assert results is not None
    assert results.group(1) == "spf=permerror (bad \\x5d and \\x29 in\\x0a text)"
    assert "forged=2 forged_ids=[evil.example x\\x0ay]" in line


def test_recipient_lines() -> None:
    base = {"queue_id": "Q2", "client": CLIENT, "sender": "<>", "recipient": "x@elsewhere.example"}
    refused = RecipientOutcome(**base, decided_by=Decider.POLICY, reply=RELAY_DENIED)  # type: ignore[arg-type]
    assert log_line(refused) == (
        "id=Q2 client=192.0.2.1 stage=policy from=<> to=<x@elsewhere.example> reject: "
        "550 5.7.1 Relaying denied: recipient domain is not local"
    )
    unreachable = RecipientOutcome(
        **base,  # type: ignore[arg-type]
        decided_by=Decider.DOWNSTREAM,
        reply=DOWNSTREAM_UNAVAILABLE,
        step="sender",
    )
    assert "not relayed: 451 4.4.1" in log_line(unreachable)
    refused_sender = RecipientOutcome(
        **base,  # type: ignore[arg-type]
        decided_by=Decider.DOWNSTREAM,
        reply=Reply.of(550, "5.7.1", "No"),
        step="sender",
    )
    assert "downstream refused sender: 550 5.7.1 No" in log_line(refused_sender)


def test_trace_info_is_derived_from_the_facts() -> None:
    facts = ClientFacts(ip="192.0.2.1", helo="h.example", esmtp=True, tls=True, auth_identity="a")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    info = facts.trace_info(
        by_host="mx.example.com", queue_id="Q", recipients=(), when=when, smtputf8=False
    )
    assert (info.client_ip, info.helo, info.esmtp, info.tls, info.authenticated) == (
        "192.0.2.1",
        "h.example",
        True,
        True,
        True,
    )
