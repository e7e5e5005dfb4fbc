"""checks.eager.gather gives what asyncio.gather gives: results in argument order, the
first exception, cancellation passed on; with a Task only for what suspends."""

from __future__ import annotations

import asyncio

import pytest

from arproxy.checks import eager


async def _value(value: int, steps: int) -> int:
    for _ in range(steps):
        await asyncio.sleep(0)
    return value


async def _fail(steps: int) -> int:
    for _ in range(steps):
        await asyncio.sleep(0)
    raise LookupError("bad")


@pytest.mark.parametrize("steps", [(0, 0, 0), (0, 2, 0), (3, 0, 1), (1, 1, 1)])
def test_gather_gives_asyncio_gathers_results_in_argument_order(steps: tuple[int, ...]) -> None:
    async def both() -> tuple[list[int], list[int]]:
        ours = await eager.gather(*(_value(i, n) for i, n in enumerate(steps)))
        theirs = await asyncio.gather(*(_value(i, n) for i, n in enumerate(steps)))
        return ours, theirs

    ours, theirs = asyncio.run(both())
    assert ours == theirs == [0, 1, 2]


def test_gather_of_coroutines_that_finish_at_once_makes_no_task() -> None:
    async def go() -> tuple[list[int], int]:
        before = len(asyncio.all_tasks())
        started = eager.start(_value(7, 0))
        return [started.result or 0], len(asyncio.all_tasks()) - before + (started.task is not None)

    assert asyncio.run(go()) == ([7], 0)


@pytest.mark.parametrize("fail_steps", [0, 2])
def test_gather_raises_the_exception_as_asyncio_gather_does(fail_steps: int) -> None:
    async def go() -> None:
        await eager.gather(_value(1, 1), _fail(fail_steps), _value(2, 0))

    with pytest.raises(LookupError, match="bad"):
        asyncio.run(go())


def test_cancelling_the_gatherer_cancels_the_suspended_coroutines() -> None:
    seen: list[str] = []

    async def slow() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return 0

    async def go() -> None:
        outer = asyncio.ensure_future(eager.gather(_value(1, 0), slow()))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(go())
    assert seen == ["cancelled"]
