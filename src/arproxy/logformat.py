"""Log output: the text form, or one JSON object per line (`log.format = "json"`).

A transaction's summary line is logged with its typed outcome attached
(`extra={"outcome": ...}`, by `pipeline.Session`); the JSON form writes that outcome's
fields (`outcome.log_fields`) instead of re-parsing the text, so both forms carry the
same facts. Every other line becomes {"time", "level", "logger", "message", "id"},
`id` being the queue id of the transaction in progress (arproxy.logcontext).
One key, one meaning: an outcome field may not reuse a key of the record itself
(RECORD_KEYS: "time" is when the line was written, the outcome's duration is
"elapsed"); the formatter refuses such a line (LogFieldCollision) rather than let
one overwrite the other.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from arproxy import logcontext
from arproxy.outcome import RecipientOutcome, TransactionOutcome, log_fields

# The keys the formatter writes itself; `outcome.log_fields` must use none of them.
RECORD_KEYS = frozenset({"time", "level", "logger", "pid", "event", "message", "exception"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_WITH_PID = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class LogFieldCollision(ValueError):
    """An outcome field named like a key of the record (a programming error)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: JSON escapes every control character,
    and non-ASCII is escaped too so that no reader splits a line at U+2028."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        outcome = getattr(record, "outcome", None)
        if isinstance(outcome, RecipientOutcome | TransactionOutcome):
            entry["event"] = "transaction" if isinstance(outcome, TransactionOutcome) else "rcpt"
            fields = log_fields(outcome)
            clash = RECORD_KEYS & fields.keys()
            if clash:
                raise LogFieldCollision(f"outcome fields {sorted(clash)} are record keys")
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
            queue_id = logcontext.current_queue_id()
            if queue_id is not None:
                entry["id"] = queue_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def skip_unprinted_fields(form: Literal["text", "json"] = "text", *, with_pid: bool) -> None:
    """Have `logging` skip the record fields no format of ours prints (the Python
    logging HOWTO, "Optimization"): the caller's file, line and function (a walk up
    the stack per record), the thread and the multiprocessing process name. The
    process id stays when a format prints it (JSON's "pid", TEXT_FORMAT_WITH_PID).

    Process-wide and for good: called by `arproxy serve` only, whose formats are
    TEXT_FORMAT, TEXT_FORMAT_WITH_PID and JsonFormatter (which reads `created`,
    `levelname`, `name`, `process`, the message, `exc_info` and the outcome).
    `stack_info=True` would need the caller: arproxy never asks for it.
    """
    logging._srcfile = None  # pathname, filename, module, lineno, funcName
    logging.logThreads = False  # thread, threadName
    logging.logMultiprocessing = False  # processName
    logging.logProcesses = form == "json" or with_pid  # process


def setup(level: str, form: Literal["text", "json"] = "text", *, with_pid: bool = False) -> None:
    """Log to standard error at `level` in `form`; text lines get the queue id prefix,
    and with `with_pid` (several worker processes) the writing process's id."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT_WITH_PID if with_pid else TEXT_FORMAT))
        # Lines logged while a transaction is in progress (the checks', the relay's)
        # carry its queue id (arproxy.logcontext); JSON has its own `id` key.
        logcontext.install([handler])
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
