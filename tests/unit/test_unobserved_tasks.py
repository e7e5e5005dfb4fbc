"""No task's exception goes unobserved ("Task exception was never retrieved")."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

from arproxy.checks import runner


class Abandoned:
    def __init__(self, task: asyncio.Future[Any]) -> None:
        self.task = task


def test_an_abandoned_check_failing_after_its_cancel_is_observed() -> None:
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))

        async def failing_check() -> None:
            # Swallowing the cancellation, as asyncio 3.11's wait_for may do.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)
            raise RuntimeError("check failed after its cancellation")

        abandoned = [Abandoned(asyncio.ensure_future(failing_check()))]
        await asyncio.sleep(0)
        runner._cancel(abandoned)  # type: ignore[arg-type]  # the session ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del abandoned
        gc.collect()  # an unobserved exception is reported when the task is freed

    asyncio.run(main())
    assert unhandled == []
