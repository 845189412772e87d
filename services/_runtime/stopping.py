"""Stopping a process that starts in steps: SIGINT and SIGTERM at any moment of its life."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """A stop was asked for (SIGINT or SIGTERM) before start-up finished."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} before start-up finished")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM over the whole life of a process that starts in steps.

    Start-up steps that may take long run through `step`, which cuts them short
    on a stop; serving waits in `wait`. The process's own task is never
    cancelled, so whatever has started is stopped by the ordinary unwinding of
    its `async with` blocks, in order, and no cleanup runs half-cancelled.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        """`on_signal` is told each signal's count (1 for the first) as it arrives."""
        self._on_signal = on_signal
        self._event = asyncio.Event()
        self._count = 0
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._received, signum)
        try:
            yield self
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    def _received(self, signum: int) -> None:
        self._count += 1
        if self.signum is None:
            self.signum = signum
            self._event.set()
        if self._on_signal is not None:
            self._on_signal(self._count)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    async def wait(self) -> None:
        await self._event.wait()

    async def step(self, awaitable: Awaitable[T]) -> T:
        """Runs one start-up step, or raises Stopped when a stop comes first.

        The step runs as a task of its own and is cancelled on a stop, so it must
        stop whatever it started when cancelled. A step that finishes all the
        same returns its result: the caller then owns what it started.
        """
        if self.signum is not None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started, so nothing to stop
            raise Stopped(self.signum)
        task = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(self._event.wait())
        cut = False
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                cut = True
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled() or (cut and task.exception() is not None):
            assert self.signum is not None
            raise Stopped(self.signum)
        return task.result()
