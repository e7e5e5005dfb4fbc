"""Logs and metrics of one decision: JSON log lines, the metric families, sd_notify.

The JSON form must carry the same facts as the text line (`outcome.log_line`), one
object per line whatever the client sent; the metrics are fed the typed outcomes the
pipeline publishes; the readiness message follows sd_notify(3).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from arproxy import logcontext, logformat, sdnotify
from arproxy.checks.base import Value
from arproxy.config import ConfigError, HostPort, parse_config
from arproxy.logformat import RECORD_KEYS, JsonFormatter, LogFieldCollision
from arproxy.metrics import (
    DOWNSTREAM_ERROR_KINDS,
    POLICY_CODES,
    Metrics,
    downstream_error_kind,
    transaction_label,
)
from arproxy.outcome import ClientFacts, Decider, Outcome, RecipientOutcome, log_fields
from arproxy.relay import XFORWARD_LINE_LIMIT, xforward_commands, xforward_lines
from arproxy.replies import (
    DOWNSTREAM_TIMEOUT,
    DOWNSTREAM_UNAVAILABLE,
    SPF_REJECTED,
    Reply,
)

from .test_outcome import CLIENT, Result, transaction

WRITTEN = 1796032800.123  # 2026-11-30T10:00:00.123 UTC, when a test record was made


def record(message: str, outcome: object = None) -> logging.LogRecord:
    made = logging.LogRecord("arproxy.pipeline", logging.INFO, __file__, 1, "%s", (message,), None)
    made.created = WRITTEN
    if outcome is not None:
        made.outcome = outcome
    return made


def test_json_summary_has_every_field_of_the_text_line() -> None:
    outcome = transaction(
        forged=("example.com",),
        client=ClientFacts(ip="192.0.2.1", helo="evil\r\n\x00helo\u2028", esmtp=True),
        relay_time=0.0125,
    )
    line = JsonFormatter().format(record("text form", outcome))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["event"] == "transaction"
    assert entry["id"] == "Q1"
    assert entry["client"] == "192.0.2.1"
    assert entry["helo"] == "evil\r\n\x00helo\u2028"  # as received: JSON escapes it
    assert entry["from"] == "alice@sender.example"
    assert entry["recipients"] == ["bob@example.com"]
    assert entry["results"] == [
        {"method": "iprev", "value": "pass", "reason": None},
        {"method": "spf", "value": "fail", "reason": "not permitted"},
    ]
    assert entry["forged_ids"] == ["example.com"]
    assert entry["reply"] == {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued as 4Xk2"}
    assert entry["verdict"] == "relayed"
    assert entry["stage"] == "downstream"
    assert entry["elapsed"] == pytest.approx(0.0314)
    assert entry["relay_time"] == pytest.approx(0.0125)
    # "time" stays the wall-clock time of the line, not the outcome's duration.
    assert entry["time"] == "2026-11-30T10:00:00.123+00:00"
    assert entry["level"] == "info"
    assert entry["logger"] == "arproxy.pipeline"


@pytest.mark.parametrize("decider", list(Decider))
@pytest.mark.parametrize("kind", ["transaction", "rcpt"])
def test_no_outcome_field_reuses_a_record_key(decider: Decider, kind: str) -> None:
    """Every key `log_fields` can produce (both kinds of outcome, every decider, every
    optional value set) is distinct from the keys the formatter writes itself."""
    reply = Reply.of(550, "5.7.1", "no")
    outcome: Outcome = (
        transaction(decided_by=decider, reply=reply, forged=("a.example",), relay_time=0.5)
        if kind == "transaction"
        else RecipientOutcome("Q2", CLIENT, "a@b.example", "x@c.example", decider, reply)
    )
    fields = log_fields(outcome)
    assert not RECORD_KEYS & fields.keys()
    entry = json.loads(JsonFormatter().format(record("text form", outcome)))
    assert entry.keys() == {"time", "level", "logger", "pid", "event"} | fields.keys()
    assert entry["time"].startswith("2026-11-30T10:00:00.123")


def test_a_colliding_outcome_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logformat, "log_fields", lambda outcome: {"time": 0.5, "id": "Q"})
    with pytest.raises(LogFieldCollision, match="time"):
        JsonFormatter().format(record("text form", transaction()))


def test_json_recipient_line_and_null_sender() -> None:
    outcome = RecipientOutcome(
        "Q2", CLIENT, "<>", "x@elsewhere.example", Decider.POLICY, Reply.of(550, "5.7.1", "no")
    )
    fields = log_fields(outcome)
    assert fields["from"] == ""  # the null reverse-path (RFC 5321 section 4.5.5)
    assert fields["to"] == "x@elsewhere.example"
    assert fields["verdict"] == "reject"


def test_json_other_lines_carry_the_queue_id_in_progress() -> None:
    logcontext.set_queue_id("QID7")
    try:
        entry = json.loads(JsonFormatter().format(record("downstream slow")))
    finally:
        logcontext.set_queue_id(None)
    assert entry["message"] == "downstream slow"
    assert entry["id"] == "QID7"
    assert "id" not in json.loads(JsonFormatter().format(record("idle")))


class _Capture(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.mark.parametrize(
    ("form", "with_pid"), [("text", False), ("text", True), ("json", False), ("json", True)]
)
def test_every_field_our_formats_print_survives_the_skipped_ones(
    monkeypatch: pytest.MonkeyPatch, form: Literal["text", "json"], with_pid: bool
) -> None:
    """`arproxy serve` has logging skip the fields no format prints (the logging
    HOWTO's "Optimization"): each line still carries the time, level, logger,
    message, queue id and process id it carried."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after
    # What the text formats print: none of the fields skipped.
    printed = set(re.findall(r"%\((\w+)\)", logformat.TEXT_FORMAT + logformat.TEXT_FORMAT_WITH_PID))
    assert printed == {"asctime", "levelname", "name", "message", "process"}
    logformat.skip_unprinted_fields(form, with_pid=with_pid)
    if form == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        text = logformat.TEXT_FORMAT_WITH_PID if with_pid else logformat.TEXT_FORMAT
        formatter = logging.Formatter(text)
    capture = _Capture(formatter)
    logger = logging.getLogger("arproxy.test_fields")
    monkeypatch.setattr(logger, "handlers", [capture])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logcontext.set_queue_id("QID9")
    try:
        logger.warning("connect from %s", "192.0.2.1")
    finally:
        logcontext.set_queue_id(None)
    (line,), (made,) = capture.lines, capture.records
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(made.created))
    if form == "json":
        entry = json.loads(line)
        assert entry == {
            "time": datetime.fromtimestamp(made.created, UTC).isoformat(timespec="milliseconds"),
            "level": "warning",
            "logger": "arproxy.test_fields",
            "pid": os.getpid(),
            "message": "connect from 192.0.2.1",
            "id": "QID9",
        }
    elif with_pid:
        assert line == (
            f"{written},{int(made.msecs):03d} WARNING arproxy.test_fields[{os.getpid()}]: "
            "connect from 192.0.2.1"
        )
    else:
        assert line == (
            f"{written},{int(made.msecs):03d} WARNING arproxy.test_fields: connect from 192.0.2.1"
        )
    # The caller is not looked up any more (no format prints it).
    assert made.lineno == 0 and made.funcName == "(unknown function)"


def test_log_and_metrics_options() -> None:
    config = parse_config(
        '[log]\nformat = "json"\n[metrics]\nlisten = "127.0.0.1:9125"\n'
        'multiprocess_dir = "/run/arproxy/metrics"\n',
        "t",
    )
    assert config.log.format == "json"
    assert config.metrics.listen == HostPort("127.0.0.1", 9125)
    assert config.metrics.multiprocess_dir == Path("/run/arproxy/metrics")
    assert parse_config("", "t").metrics.listen is None
    with pytest.raises(ConfigError, match="format"):
        parse_config('[log]\nformat = "xml"\n', "t")
    with pytest.raises(ConfigError, match="needs listen"):
        parse_config('[metrics]\nmultiprocess_dir = "/tmp/m"\n', "t")


@pytest.mark.parametrize(
    ("reply", "label", "kind"),
    [
        (Reply.of(250, "2.0.0", "ok"), "accepted", None),
        (DOWNSTREAM_UNAVAILABLE, "tempfail", "unavailable"),
        (DOWNSTREAM_TIMEOUT, "tempfail", "timeout"),
        (Reply.of(452, "4.3.1", "full"), "tempfail", "refused_temporary"),
        (Reply.of(554, "5.6.0", "no"), "rejected", "refused_permanent"),
    ],
)
def test_outcome_labels_follow_the_reply_class(reply: Reply, label: str, kind: str | None) -> None:
    # RFC 5321 section 4.2.1: 2yz completion, 4yz transient, 5yz permanent.
    assert transaction_label(reply) == label
    assert downstream_error_kind(reply) == kind


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_count_each_family_from_the_outcomes() -> None:
    metrics = Metrics()
    metrics.session_opened(CLIENT)
    metrics.auth_failed(CLIENT)
    metrics.observe(
        transaction(
            forged=("example.com", "example.com"),
            relay_time=0.02,
            check_times=(("spf", 0.01), ("iprev", 0.002)),
        )
    )
    metrics.observe(
        transaction(
            decided_by=Decider.POLICY,
            reply=SPF_REJECTED,
            results=(Result("spf", Value.FAIL),),
        )
    )
    metrics.observe(transaction(reply=DOWNSTREAM_UNAVAILABLE))
    assert sample(metrics, "arproxy_sessions_total") == 1
    assert sample(metrics, "arproxy_auth_failures_total") == 1
    transactions = "arproxy_transactions_total"
    assert sample(metrics, transactions, outcome="accepted", stage="downstream") == 1
    assert sample(metrics, transactions, outcome="rejected", stage="policy") == 1
    assert sample(metrics, "arproxy_results_total", method="spf", value="fail") == 3
    assert sample(metrics, "arproxy_check_duration_seconds_count", method="spf") == 1
    assert sample(metrics, "arproxy_relay_duration_seconds_count") == 1
    assert sample(metrics, "arproxy_forged_fields_removed_total") == 2
    # RFC 7372 section 3.2: 5.7.23 "SPF validation failed".
    assert sample(metrics, "arproxy_policy_rejections_total", code="5.7.23") == 1
    assert sample(metrics, "arproxy_downstream_errors_total", kind="unavailable") == 1


def test_sd_notify_sends_one_datagram(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1\nSTATUS=up")
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"


def test_sd_notify_without_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert not sdnotify.notify("READY=1")  # logged, never raised


def test_xforward_sends_the_offered_attributes_in_xtext() -> None:
    origin = {"ADDR": "192.0.2.1", "HELO": "a=b+c d\u00e9", "IDENT": "Q1", "PORT": "4000"}
    # RFC 3461 section 4: "+", "=", space and non-ASCII octets are written "+HH".
    assert xforward_commands("ADDR HELO IDENT", origin) == [
        "ADDR=192.0.2.1",
        "HELO=a+3Db+2Bc+20d+C3+A9",
        "IDENT=Q1",
    ]
    assert xforward_commands("ADDR", None) == []


def test_xforward_attributes_share_commands_within_the_line_limit() -> None:
    """Postfix XFORWARD_README: `XFORWARD 1*( SP attribute-name"="attribute-value )`,
    no command over the 512-character limit (RFC 5321 section 4.5.3.1.4, CRLF included)."""
    short = ["NAME=[UNAVAILABLE]", "ADDR=192.0.2.1", "PORT=4000", "PROTO=ESMTP", "IDENT=Q1"]
    assert xforward_lines(short) == [short]
    helo = "HELO=" + "a" * 250
    lines = xforward_lines([*short, helo, helo, "SOURCE=REMOTE"])
    assert [argument for line in lines for argument in line] == [
        *short,
        helo,
        helo,
        "SOURCE=REMOTE",
    ]
    assert len(lines) == 2
    for line in lines:
        assert len("XFORWARD " + " ".join(line) + "\r\n") <= XFORWARD_LINE_LIMIT
    # One attribute too long for any command (255 octets, each escaped as +HH).
    assert xforward_lines(["HELO=" + "+3D" * 255, "IDENT=Q1"]) == [["IDENT=Q1"]]


def test_labelled_families_are_in_the_first_scrape_at_zero() -> None:
    """A family whose label values are all known starts at 0 for each, so it is in the
    first scrape (in multiprocess mode a family with no sample is not written at all)."""
    metrics = Metrics()
    for kind in DOWNSTREAM_ERROR_KINDS:
        assert sample(metrics, "arproxy_downstream_errors_total", kind=kind) == 0
    for code in POLICY_CODES:
        assert sample(metrics, "arproxy_policy_rejections_total", code=code) == 0


@pytest.mark.parametrize(
    "reply",
    [
        DOWNSTREAM_UNAVAILABLE,
        DOWNSTREAM_TIMEOUT,
        Reply.of(451, "4.3.0", "x"),
        Reply.of(550, "5.1.1", "x"),
        Reply(250, None, ("ok",)),
    ],
)
def test_every_downstream_error_kind_is_a_known_label(reply: Reply) -> None:
    kind = downstream_error_kind(reply)
    assert kind is None or kind in DOWNSTREAM_ERROR_KINDS


def test_every_policy_reply_code_is_a_known_label() -> None:
    from arproxy import policy, replies  # noqa: PLC0415

    codes = {r.enhanced for r in (replies.SPF_REJECTED, replies.IPREV_REJECTED)}
    codes |= set(policy._TEMPFAIL_CODES.values()) | {"4.7.0", "5.7.1"}
    assert codes <= set(POLICY_CODES)
