"""How the services' short-lived copies of each other's data are kept fresh."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any, Generic, TypeVar

REFRESH_AHEAD = 0.75
"""A cached copy used past this fraction of its time to live is fetched again in the background, so that
steady traffic never waits for a fetch; past its whole time to live it is not used at all."""

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class Fetches(Generic[Key, Value]):
    """At most one fetch per key at a time, each in a task of its own.

    Every caller that needs a key's copy while it is being fetched waits for
    the same fetch, so an expiring copy costs one question however many
    requests were waiting; a fetch started ahead of expiry serves the next
    callers. A caller that stops waiting (its request was cancelled) does not
    stop the fetch the others wait for, and a failure nobody waited for is not
    reported as lost.
    """

    def __init__(self) -> None:
        self._running: dict[Key, tuple[float, asyncio.Future[Value]]] = {}

    def running(self, key: Key) -> bool:
        return key in self._running

    def current(self, key: Key, *, started_after: float | None = None) -> asyncio.Future[Value] | None:
        """The key's fetch in flight, if any (and if it started after `started_after`)."""
        running = self._running.get(key)
        if running is None or (started_after is not None and running[0] < started_after):
            return None
        return running[1]

    def start(self, key: Key, fetch: Coroutine[Any, Any, Value], *, started_at: float = 0.0) -> asyncio.Future[Value]:
        """Runs `fetch` in the background as the key's fetch; the newest started is the one joined."""
        task = asyncio.ensure_future(fetch)
        self._running[key] = (started_at, task)
        task.add_done_callback(lambda done: self._done(key, done))
        return task

    def _done(self, key: Key, done: asyncio.Future[Value]) -> None:
        running = self._running.get(key)
        if running is not None and running[1] is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody waited for is not logged as lost


async def joined(fetch: asyncio.Future[Value]) -> Value:
    """The fetch's value; the caller's cancellation stops its own wait, not the fetch."""
    return await asyncio.shield(fetch)
