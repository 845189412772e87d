"""A child process kept running: started, restarted when it dies, stopped with its parent.

Work that is CPU-heavy for long stretches (applying an uploaded file) runs in a
child process so that the parent's event loop stays free to answer requests.
The child reports to its parent in JSON lines on its stdout (metrics, its
readiness) and watches its stdin: when the parent goes away, even killed, the
pipe closes and the child stops. On Linux it also asks the kernel for SIGTERM
when its parent dies (see `stop_with_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Restarts back off from one second to this, and reset once a child has run this long.
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN_SECONDS = 60.0
READY_EVENT = "ready"
# The child is done and asks to be replaced by a fresh one (it has grown too large).
RENEW_EVENT = "renew"
# The child cannot start, and says why (`message`); one that never got ready is then not started again.
FAILED_EVENT = "failed"
# Longest event line read from a child (a serving process's metrics samples are the largest).
EVENT_LINE_LIMIT = 64 * 1024 * 1024


class ChildFailed(RuntimeError):
    """A child process could not start; the message is the child's own."""


class ChildProcess:
    """One supervised child; `start` waits until it says it is ready."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        on_event: Callable[[dict[str, Any]], None],
        ready_timeout: float = 60.0,
    ) -> None:
        self._name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._on_event = on_event
        self._ready_timeout = ready_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._renewing = False
        self._task: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self.restarts = 0
        self.renewals = 0

    @property
    def pid(self) -> int | None:
        """The running child's; None between one child's exit and the next one's start."""
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Starts the child and keeps it running; raises if the first one never gets ready."""
        self._task = asyncio.create_task(self._keep_running(), name=f"supervise-{self._name}")
        waiting = asyncio.create_task(self._ready.wait())
        try:
            done, _ = await asyncio.wait(
                {waiting, self._task}, timeout=self._ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # Whoever waited went away (a stop during start-up): the child must not outlive the wait.
            waiting.cancel()
            await self.stop(1.0)
            raise
        if waiting not in done:
            waiting.cancel()
            await self.stop(1.0)
            if self._failure is not None:
                raise ChildFailed(self._failure)
            raise RuntimeError(f"the {self._name} process did not start within {self._ready_timeout:.0f} s")

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            # asyncio.wait, not a timeout: this also runs in a task being cancelled, where a timeout
            # would take the expiry for the cancellation and skip the SIGKILL.
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({exited}, timeout=grace)
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await exited
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep_running(self) -> None:
        delay = 1.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            code = await self._run_once()
            if self._stopping:
                return
            if self._failure is not None and not self._ready.is_set():
                # It said why it cannot start: trying again would only say it again.
                return
            if self._renewing and code == 0:
                self._renewing = False
                self.renewals += 1
                log.info("the %s process made way for a fresh one", self._name)
                continue
            if loop.time() - started > HEALTHY_RUN_SECONDS:
                delay = 1.0
            log.error("the %s process exited with code %s; starting it again in %.0f s", self._name, code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            self.restarts += 1

    async def _run_once(self) -> int | None:
        self._process = process = await asyncio.create_subprocess_exec(
            *self._argv,
            env=self._env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Logs go where the parent's go.
            stderr=None,
            # Out of the terminal's process group: Ctrl-C reaches the parent,
            # which stops the child itself, in order.
            start_new_session=True,
            limit=EVENT_LINE_LIMIT,
        )
        assert process.stdout is not None
        try:
            async for line in process.stdout:
                self._event(line)
            return await process.wait()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._process = None

    def _event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("%s process: %s", self._name, line.decode("utf-8", "replace").rstrip())
            return
        if not isinstance(event, dict):
            return
        if event.get("event") == READY_EVENT:
            self._ready.set()
            return
        if event.get("event") == RENEW_EVENT:
            self._renewing = True
            return
        if event.get("event") == FAILED_EVENT:
            self._failure = str(event.get("message") or f"the {self._name} process could not start")
            return
        try:
            self._on_event(event)
        except (TypeError, ValueError, KeyError):
            log.warning("%s process sent an event that could not be read: %r", self._name, event)


# Background work gives way to the processes answering requests when the cores are all busy.
BACKGROUND_NICENESS = 10


def run_in_background() -> None:
    """Lowers this process's CPU priority (a worker's, never a server's)."""
    with contextlib.suppress(OSError):
        os.nice(BACKGROUND_NICENESS)


def release_memory() -> None:
    """Gives memory freed after a large piece of work back to the system.

    A file's rows pass through millions of small objects; once they are freed,
    glibc keeps the pages in its heap unless asked to return them, and a
    worker would otherwise stay at its peak size between files.
    """
    gc.collect()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc does not tell)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def report(event: str, **fields: Any) -> None:
    """Child side: one event for the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def stop_with_parent() -> None:
    """Child side: SIGTERM when the parent dies, however it dies (Linux only; elsewhere stdin closing says it)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # A parent that died before the request was made has closed stdin: `parent_gone` sees to that case.


async def parent_gone() -> None:
    """Child side: returns when stdin closes, which is when the parent has stopped or died."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def until_first_ends(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Waits for the first of `tasks` to end, then cancels the others and waits for them to end too."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
