"""Coroutines run at once, a Task only for one that suspends.

With a warm DNS cache most checks, and most of the lookups inside them, finish without
ever waiting: wrapping each in a Task (as `asyncio.ensure_future` and `asyncio.gather`
do) costs a Task, a loop iteration and a done-callback each: 13 Tasks a message under
the bench load, 3 with this module. Here a coroutine's first step runs at once, as a
Task's would (in a copy of the current context, arproxy.logcontext's queue id
included); only if it suspends is it handed, mid-flight, to a Task (`Continuation`)
in that same context.
Python 3.12's eager tasks do the same; we run on 3.11.

The first step runs under the caller's task: a coroutine started here must not rely on
`asyncio.current_task()` (none of the checks does; `asyncio.timeout` would).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Started(Generic[T]):
    """A coroutine after its first step: done (`result` or `error`), or carried on by
    `task`. `cancelled`: it raised CancelledError at once (a Task would be cancelled)."""

    __slots__ = ("cancelled", "error", "result", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[T] | None = None
        self.result: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False


def start(coro: Coroutine[Any, Any, T]) -> Started[T]:
    """Run `coro` up to its first suspension; see the module docstring."""
    started: Started[T] = Started()
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        started.result = stop.value
    except asyncio.CancelledError:
        started.cancelled = True
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001  # kept for the caller, as a Task keeps it
        started.error = error
    else:
        started.task = asyncio.get_running_loop().create_task(
            Continuation(coro, yielded), context=context
        )
    return started


async def gather(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """`asyncio.gather(*coros)` (results in argument order, the first exception raised,
    the others left running), with a Task only for each coroutine that suspends."""
    started = [start(coro) for coro in coros]
    tasks = [each.task for each in started if each.task is not None]
    for each in started:
        if each.cancelled or each.error is not None:
            for task in tasks:  # left running, as gather leaves them, and observed
                task.add_done_callback(_observe)
            raise asyncio.CancelledError if each.cancelled else cast(BaseException, each.error)
    if tasks:
        await asyncio.gather(*tasks)
    return [cast(T, each.result) if each.task is None else each.task.result() for each in started]


def _observe(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Continuation(Coroutine[Any, Any, T]):
    """A coroutine already past its first step, for a Task to drive from there on.

    The Task's first `send(None)` gets back what the coroutine yielded at that step (the
    future it waits for, or None); every later send, throw and close goes straight to
    the coroutine, so results, exceptions and cancellation are exactly a Task's. A
    cancellation before the Task's first step (which would have cancelled the future the
    coroutine waits for, had the Task seen it) cancels that future too.
    """

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if not self._started:
            self._started = True
            if isinstance(self._first, asyncio.Future):
                self._first.cancel()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a Continuation is driven by its Task, never awaited")
