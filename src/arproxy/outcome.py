"""What a session knows about its client, and what each decision came to: typed values.

`ClientFacts` is the one record of client facts (address, HELO, ESMTP, TLS, AUTH);
the Received line's `TraceInfo` is derived from it. `RecipientOutcome` (RCPT) and
`TransactionOutcome` (end of DATA) are frozen, and `log_line` is the one function that
turns either into its log line; whatever else wants to know (metrics) reads the same
values. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from arproxy.checks.base import ArcOverride, MethodResult
from arproxy.replies import DOWNSTREAM_TIMEOUT, DOWNSTREAM_UNAVAILABLE, LOCAL_ERROR, Reply
from arproxy.trace import TraceInfo

# Replies arproxy gives when the downstream could not be asked: not its refusals.
OUR_FAILURES = (DOWNSTREAM_UNAVAILABLE, DOWNSTREAM_TIMEOUT, LOCAL_ERROR)


@dataclass(frozen=True)
class ClientFacts:
    """What is known about the SMTP client at one moment; a new value per event.

    `auth_failed_identity` is the last refused AUTH user while none succeeded
    (the `auth` check reports it). After STARTTLS only the address and port stay
    (RFC 3207 section 4.2).
    """

    ip: str
    port: int = 0
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    auth_identity: str | None = None
    auth_failed_identity: str | None = None

    def trace_info(
        self,
        *,
        by_host: str,
        queue_id: str,
        recipients: tuple[str, ...],
        when: datetime,
        smtputf8: bool,
    ) -> TraceInfo:
        """The facts our Received line (RFC 5321 section 4.4) is written from."""
        return TraceInfo(
            client_ip=self.ip,
            helo=self.helo,
            esmtp=self.esmtp,
            tls=self.tls,
            authenticated=self.auth_identity is not None,
            by_host=by_host,
            queue_id=queue_id,
            recipients=recipients,
            when=when,
            smtputf8=smtputf8,
        )


class Decider(enum.StrEnum):
    """Who decided a reply: the message or address as received (intake), our local
    policy (relay control, `[policy]`), the downstream server, or a fault of ours."""

    INTAKE = "intake"
    POLICY = "policy"
    DOWNSTREAM = "downstream"
    LOCAL = "local"


@dataclass(frozen=True)
class RecipientOutcome:
    """The decision on one RCPT. `step` is the downstream command that answered
    (MAIL is sent with the first recipient), meaningful when the downstream decided."""

    queue_id: str
    client: ClientFacts
    sender: str
    recipient: str
    decided_by: Decider
    reply: Reply
    reason: str | None = None
    step: str = "recipient"  # "sender" or "recipient"


@dataclass(frozen=True)
class TransactionOutcome:
    """The decision at the end of DATA; `elapsed` in seconds since MAIL, `size` in
    octets as received, `forged` the authserv-ids of the fields removed or renamed,
    `relay_time` the seconds the downstream took to answer DATA (0: not asked),
    `check_times` each finished check's method and seconds (metrics)."""

    queue_id: str
    client: ClientFacts
    sender: str
    recipients: tuple[str, ...]
    size: int
    decided_by: Decider
    reply: Reply
    elapsed: float
    results: tuple[MethodResult, ...] = ()
    forged: tuple[str, ...] = ()
    reason: str | None = None
    relay: str = ""
    relay_time: float = 0.0
    check_times: tuple[tuple[str, float], ...] = ()


Outcome = RecipientOutcome | TransactionOutcome


def log_line(outcome: Outcome) -> str:
    """One parseable line: `key=value` pairs, then `<verdict>: <reply>` (the reply is
    the downstream's text, so it comes last). Client text is escaped; each result
    is written `method=value` with its reason in parentheses, e.g.
    `results=[iprev=pass spf=fail (sender not permitted) dkim=none]`."""
    head = f"id={outcome.queue_id} client={outcome.client.ip} stage={outcome.decided_by}"
    if isinstance(outcome, RecipientOutcome):
        return (
            f"{head} from=<{envelope_address(outcome.sender)}> "
            f"to=<{printable(outcome.recipient)}> {_verdict(outcome)}: {_reply_text(outcome.reply)}"
        )
    forged = f" forged_ids=[{' '.join(map(printable, outcome.forged))}]" if outcome.forged else ""
    return (
        f"{head} helo={printable(outcome.client.helo or '')} "
        f"from=<{envelope_address(outcome.sender)}> nrcpt={len(outcome.recipients)} "
        f"size={outcome.size} forged={len(outcome.forged)}{forged} "
        f"results=[{summary(outcome.results)}] relay={outcome.relay or '-'} "
        f"time={outcome.elapsed:.3f} {_verdict(outcome)}: {_reply_text(outcome.reply)}"
    )


def log_fields(outcome: Outcome) -> dict[str, object]:
    """The same facts as `log_line`, as one JSON-ready object (`log.format = "json"`):
    strings as received (JSON escapes them), each result with its reason, durations
    in seconds. Shape: {"id", "client", "stage", "helo", "from", "to" | "recipients",
    "verdict", "reply": {"code", "enhanced", "text"}, ...}; a transaction's durations
    are "elapsed" (arrival to decision) and "relay_time" (the downstream's answer), in
    seconds. No key may be one of logformat.RECORD_KEYS (one key, one meaning)."""
    fields: dict[str, object] = {
        "id": outcome.queue_id,
        "client": outcome.client.ip,
        "stage": str(outcome.decided_by),
        "helo": outcome.client.helo,
        "from": "" if outcome.sender == "<>" else outcome.sender,
    }
    if isinstance(outcome, RecipientOutcome):
        fields["to"] = outcome.recipient
    else:
        fields.update(
            recipients=list(outcome.recipients),
            size=outcome.size,
            results=[_result_fields(result) for result in outcome.results],
            forged_ids=list(outcome.forged),
            relay=outcome.relay or None,
            # Not "time": the JSON line's "time" is when it was written (logformat).
            elapsed=round(outcome.elapsed, 6),
            relay_time=round(outcome.relay_time, 6),
        )
    fields["verdict"] = _verdict(outcome)
    fields["reason"] = outcome.reason
    fields["reply"] = {
        "code": outcome.reply.code,
        "enhanced": outcome.reply.enhanced,
        "text": " / ".join(outcome.reply.lines),
    }
    return fields


def _result_fields(result: MethodResult) -> dict[str, object]:
    reason = getattr(result, "reason", None)
    override = getattr(result, "override", None)
    fields: dict[str, object] = {
        "method": result.method,
        "value": result.value.value,
        "reason": reason if isinstance(reason, str) and reason else None,
    }
    if isinstance(override, ArcOverride):
        fields["override"] = str(override)
    return fields


def _verdict(outcome: Outcome) -> str:
    reply, reason = outcome.reply, outcome.reason
    because = f" ({printable(reason)})" if reason else ""
    if outcome.decided_by is Decider.LOCAL:
        return f"not relayed{because or ' (internal error)'}"
    if outcome.decided_by is Decider.DOWNSTREAM:
        if reply.is_success:
            return "accepted" if isinstance(outcome, RecipientOutcome) else "relayed"
        if reply in OUR_FAILURES:
            return "not relayed"
        step = outcome.step if isinstance(outcome, RecipientOutcome) else "message"
        return f"downstream refused {step}"
    if outcome.decided_by is Decider.POLICY and isinstance(outcome, TransactionOutcome):
        return f"reject by policy{because}"
    return f"reject{because}"


def _reply_text(reply: Reply) -> str:
    return str(reply).replace("\r\n", " / ")


def summary(results: Sequence[MethodResult]) -> str:
    """`method=value (reason)` for each result, space-separated; the reason (text
    from our checks and their libraries, never the header) is escaped so that it
    cannot close the parentheses or the brackets around the list."""
    return " ".join(_one_result(r) for r in results)


def _one_result(result: MethodResult) -> str:
    text = f"{result.method}={result.value.value}"
    reason = getattr(result, "reason", None)  # iprev, SPF, DKIM, DMARC keep one for logs
    override = getattr(result, "override", None)  # DMARC: a trusted ARC sealer's
    notes = [reason] if isinstance(reason, str) and reason else []
    if isinstance(override, ArcOverride):
        notes.append(str(override))  # "arc override by lists.example"
    if notes:
        text += f" ({printable('; '.join(notes)).translate(_BRACKET_ESCAPES)})"
    return text


def envelope_address(address: str) -> str:
    """A MAIL FROM or RCPT TO address for `<%s>` in a log line: the null reverse-path,
    which aiosmtpd hands over as "<>", is written `<>` (RFC 5321 section 4.5.5)."""
    return "" if address == "<>" else printable(address)


REDACTED = "<redacted>"


def loggable_command(line: bytes, *, auth_data: bool = False) -> str:
    """A client's command line for a log line, escaped, with its secrets masked.

    `auth_data`: the line answers an AUTH challenge (RFC 4954 section 4), so all of
    it is a credential. An AUTH command keeps its mechanism and loses its initial
    response (`AUTH PLAIN <redacted>`): base64 is an encoding, not a protection.
    """
    if auth_data:
        return REDACTED
    text = line.rstrip(b"\r\n").decode("ascii", "backslashreplace")
    verb, _, rest = text.lstrip(" ").partition(" ")
    if verb.upper() == "AUTH":
        mechanism, _, response = rest.strip(" ").partition(" ")
        text = f"{verb} {mechanism}{' ' + REDACTED if response.strip() else ''}".rstrip()
    return printable(text)


def printable(text: str) -> str:
    """Client text made safe for one log line: controls and non-ASCII escaped."""
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_BRACKET_ESCAPES = {ord(c): f"\\x{ord(c):02x}" for c in "()[]"}
