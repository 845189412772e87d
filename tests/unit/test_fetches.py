"""One fetch per key at a time, shared by every caller waiting for it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from services._runtime.caching import Fetches, joined


async def test_callers_waiting_for_one_key_share_one_fetch() -> None:
    fetches: Fetches[str, int] = Fetches()
    asked = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal asked
        asked += 1
        await release.wait()
        return 42

    async def caller() -> int:
        return await joined(fetches.current("k") or fetches.start("k", fetch()))

    callers = [asyncio.create_task(caller()) for _ in range(10)]
    await asyncio.sleep(0)
    assert fetches.running("k")
    release.set()
    assert await asyncio.gather(*callers) == [42] * 10
    assert asked == 1
    assert not fetches.running("k")


async def test_a_caller_that_stops_waiting_leaves_the_fetch_to_the_others() -> None:
    fetches: Fetches[str, int] = Fetches()
    release = asyncio.Event()

    async def fetch() -> int:
        await release.wait()
        return 7

    running = fetches.start("k", fetch())
    leaving = asyncio.create_task(joined(running))
    staying = asyncio.create_task(joined(running))
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    assert await staying == 7
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_fetch_older_than_asked_for_is_not_joined() -> None:
    fetches: Fetches[str, int] = Fetches()
    release = asyncio.Event()

    async def fetch() -> int:
        await release.wait()
        return 1

    fetches.start("k", fetch(), started_at=10.0)
    assert fetches.current("k", started_after=5.0) is not None
    assert fetches.current("k", started_after=11.0) is None
    release.set()
    await asyncio.sleep(0.01)


async def test_a_failure_nobody_waited_for_is_not_reported_as_lost() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        fetches: Fetches[str, int] = Fetches()

        async def fetch() -> int:
            raise RuntimeError("the schema service is down")

        fetches.start("k", fetch())
        await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(0)
        assert not fetches.running("k")
        assert reported == []
    finally:
        loop.set_exception_handler(None)
