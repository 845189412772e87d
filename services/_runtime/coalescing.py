"""Point operations that arrive together, done together: one statement for many callers.

Under load, a profile service answers many calls at once that each read or
write one row. Each statement alone costs a round trip, a pool checkout and,
for a write, a commit: more than the row itself. `Coalescer` gathers the
operations that arrive while earlier ones are in flight and hands them to one
batch call (one statement, one commit), then gives each caller its own
result. One batch is in flight at a time, and the next gathers what arrives
meanwhile; before taking a batch, the event loop gets a few turns, in which
calls that reached the process together are started. On a quiet service an
operation waits those few turns (microseconds) and goes alone. A coalescer
may also keep gathering as long as calls keep arriving, up to a bound of
turns: a gRPC call reaches its handler several turns after the one before it
(the server takes calls one at a time), so a fixed few turns sent writes over
gRPC in batches of three where REST ones went in tens.

What each caller can count on is what it had with a statement of its own:
- its result is its own, and is given only once the batch is done (a write is
  committed before its caller hears of it);
- operations on one key run one after another, in the order they arrived: a
  batch never holds two of them, and a key in flight is left for a later batch;
- when a batch fails, or takes longer than its bound (a row it writes is
  locked by an import's transaction, say), each of its operations is run
  alone, so one row's failure or wait is only its caller's; an operation run
  twice this way must give what it gives once (a merge does);
- a caller that stops waiting (its call was cancelled) takes no batch down
  with it: the batch runs in a task of its own, and the result is dropped.

A `session` (a pool connection, say) is opened before a batch and kept for the
batches that follow it back to back: under load a flusher runs batch after
batch, and checking a connection out of a pool and back in for each cost as
much as a batch of three writes. It is closed once nothing waits, or after a
batch fails (the connection may be why); operations run alone open their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_MAX_BATCH = 64
# Measured on the profile reads and writes: more batches in flight at once make them smaller,
# and the statements saved by one at a time are worth more than the overlap.
DEFAULT_MAX_IN_FLIGHT = 1
# Turns of the event loop a batch waits for company after the last arrival: enough for calls that
# arrived in one read of the sockets to be started, few enough to be lost in a statement's round trip.
GATHER_TURNS = 6


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch` over the items that queue up, and `run_one` for each item of a failed batch.

    `run_batch` gets items of distinct keys and returns their results in the same order.
    """

    def __init__(
        self,
        key: Callable[[Item], Hashable],
        run_batch: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        run_one: Callable[[Item], Awaitable[Result]],
        *,
        batch_timeout: float | None = None,
        gather_turns: int = GATHER_TURNS,
        gather_turns_at_most: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        session: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._key = key
        self._run_batch = run_batch
        self._run_one = run_one
        self._batch_timeout = batch_timeout
        self._gather_turns = gather_turns
        # By default a batch gathers for exactly `gather_turns`, however calls arrive.
        self._gather_turns_at_most = max(gather_turns, gather_turns_at_most or 0)
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._session = session or contextlib.nullcontext
        self._pending: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._keys_in_flight: set[Hashable] = set()
        self._arrived = 0
        """Items ever queued: a batch gathering sees from it whether any came in its last turn."""
        # Counted apart from the tasks: a flusher stops counting in the same step as it finds nothing
        # to take, while a finished task leaves the set only later, when its callbacks run.
        self._active_flushers = 0
        self._tasks: set[asyncio.Future[Any]] = set()

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._arrived += 1
        self._start_flusher()
        return await future

    def _start_flusher(self) -> None:
        if self._pending and self._active_flushers < self._max_in_flight:
            self._active_flushers += 1
            self._keep(asyncio.create_task(self._flush()))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        # The loop holds tasks weakly: one nobody refers to may vanish mid-flight.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            while batch := await self._gathered():
                await self._settle_in_session(batch)
        except BaseException:
            # Stopped (the process is shutting down): nobody is left waiting for answers that will not come.
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._active_flushers -= 1

    async def _gathered(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        pending = self._pending
        seen = self._arrived
        quiet = 0
        for _ in range(self._gather_turns_at_most):
            if quiet >= self._gather_turns or len(pending) >= self._max_batch:
                break
            await asyncio.sleep(0)
            if self._arrived != seen:
                seen, quiet = self._arrived, 0
            else:
                quiet += 1
        return self._take()

    async def _settle_in_session(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        """Settles `batch`, then the batches gathered after it, in one session, until one fails or none is left."""
        opened = False
        try:
            async with self._session():
                opened = True
                while batch and await self._settle(batch):
                    batch = await self._gathered()
        except Exception:  # noqa: BLE001 - settling raises nothing else: the session failed to open or to close
            if not opened:
                # No session (no connection to be had, say): each item alone has its own outcome.
                for item, future in batch:
                    self._run_alone(item, future)
            # One that failed to close had settled its batches all the same.

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """The oldest waiting items of distinct keys not in flight; the rest keep their places."""
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        kept: list[tuple[Item, asyncio.Future[Result]]] = []
        taken: set[Hashable] = set()
        while self._pending and len(batch) < self._max_batch:
            entry = self._pending.popleft()
            if entry[1].done():
                continue  # its caller stopped waiting before it was sent
            key = self._key(entry[0])
            if key in taken or key in self._keys_in_flight:
                kept.append(entry)
            else:
                taken.add(key)
                batch.append(entry)
        self._pending.extendleft(reversed(kept))
        self._keys_in_flight |= taken
        return batch

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> bool:
        """Whether the batch succeeded; when it did not, each of its items is run alone."""
        try:
            async with asyncio.timeout(self._batch_timeout):
                results = await self._run_batch([item for item, _ in batch])
        except Exception:  # noqa: BLE001 - whatever failed the batch (or its bound), each item alone has its own outcome
            for item, future in batch:
                self._run_alone(item, future)
            return False
        except BaseException:
            self._release(batch)
            for _, future in batch:
                future.cancel()
            raise
        self._release(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        return True

    def _release(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        self._keys_in_flight.difference_update(self._key(item) for item, _ in batch)

    def _run_alone(self, item: Item, future: asyncio.Future[Result]) -> None:
        """Runs one item in a task of its own; its key stays in flight until it ends."""
        key = self._key(item)
        alone: asyncio.Future[Result] = asyncio.ensure_future(self._run_one(item))

        def settle(task: asyncio.Future[Result]) -> None:
            self._keys_in_flight.discard(key)
            if task.cancelled():
                future.cancel()
            elif (error := task.exception()) is not None:
                if not future.done():
                    future.set_exception(error)
            elif not future.done():
                future.set_result(task.result())
            # Operations on this key may have waited for it while no flusher was left.
            self._start_flusher()

        alone.add_done_callback(settle)
        self._keep(alone)
