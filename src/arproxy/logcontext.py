"""The queue id of the transaction in progress, for every log line about it.

maddy hands each check a per-message logger; here the transaction's queue id rides
in a context variable instead, so that the checks and the relay need no new
parameter: `pipeline.Session` sets it for the duration of a transaction (in the
connection's task, whose child tasks -- the checks, the downstream clean-up --
inherit it), and `QueueIdFilter`, installed on the log handlers by the logging
set-up, writes `id=<queue id>` in front of each line that does not carry it yet.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

QUEUE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "arproxy_queue_id", default=None
)


def set_queue_id(queue_id: str | None) -> None:
    """The transaction now in progress in this task (None: none)."""
    QUEUE_ID.set(queue_id)


def current_queue_id() -> str | None:
    return QUEUE_ID.get()


def start_task(work: Coroutine[Any, Any, None], queue_id: str | None) -> asyncio.Task[None]:
    """Start `work` as a task whose log lines carry `queue_id`, wherever it is started
    from (a protocol callback such as connection_lost runs outside the session task)."""
    context = contextvars.copy_context()
    context.run(QUEUE_ID.set, queue_id)
    return asyncio.get_running_loop().create_task(work, context=context)


class QueueIdFilter(logging.Filter):
    """Prefix `id=<queue id>` to records made while a transaction is in progress.

    A record whose message names the id already (the pipeline's own lines) is left
    as it is; the record is never dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        queue_id = QUEUE_ID.get()
        if queue_id is None:
            return True
        message = record.getMessage()
        if f"id={queue_id}" not in message:
            record.msg = f"id={queue_id} {message}"
            record.args = None
        return True


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Add the filter to `handlers` (default: the root logger's), once each."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, QueueIdFilter) for f in handler.filters):
            handler.addFilter(QueueIdFilter())
