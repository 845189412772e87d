"""Checking a posted file (`validate`) in worker processes.

Inflating, parsing and validating a file is CPU work: a 300 KB gzip can hold
gigabytes of text. Done on the event loop that answers requests, one tenant's
file would hold up every other tenant's calls, so the serving process only
spools the posted bytes to a temporary file and a process of a small pool
does the checking, on a snapshot of the DCP service taken just before.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from services._runtime.errors import FailedPrecondition, ResourceExhausted, Unavailable
from services._runtime.identity import CredentialKind, Identity, Scope
from services._runtime.settings import ImportSettings
from services._runtime.supervisor import run_in_background, stop_with_parent
from services.domain.batches import BatchChunk, BatchHeader, BatchResult, ProgressReport, check_batch
from services.domain.catalog import ServiceSnapshot, TableInfo
from services.imports.processing import FileApplier, Progress
from services.imports.repository import Outcome
from services.schema.client import RegistryClient

_READ_BYTES = 1024 * 1024


class FileChecker:
    """Checks files in a pool of worker processes, created once and shut down with the service."""

    def __init__(self, registry: RegistryClient, settings: ImportSettings) -> None:
        self._registry = registry
        self._settings = settings
        # spawn: a forked child would inherit the serving process's event loop,
        # gRPC threads and sockets.
        self._pool = self._new_pool()
        # One check at a time per account, so that no account can take every checking process.
        self._checking: set[int] = set()
        # A file is spooled only once a process is free for it: disk holds at most this many files.
        self._slots = asyncio.Semaphore(settings.validate_workers)

    async def validate(
        self, identity: Identity, service_id: int, table: TableInfo, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome:
        """What an upload of this file would end as, storing nothing."""
        if identity.account_id in self._checking:
            raise ResourceExhausted(
                "a file of this account is already being checked; send the next one when it is done",
                reason="CHECK_IN_PROGRESS",
            )
        self._checking.add(identity.account_id)
        try:
            async with self._slots:
                return await self._check(identity, service_id, table, file_name, chunks)
        finally:
            self._checking.discard(identity.account_id)

    async def _check(
        self, identity: Identity, service_id: int, table: TableInfo, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome:
        service = await self._registry.fresh_service(identity, service_id)
        fd, path = tempfile.mkstemp(prefix="dcp-validate-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as spool:
                async for chunk in chunks:
                    spool.write(chunk)
            loop = asyncio.get_running_loop()
            try:
                checked = await loop.run_in_executor(
                    self._pool, check_file, path, file_name, service, table.id, self._settings
                )
            except BrokenProcessPool:
                # A checker that died (killed for memory, say) takes its pool with it; the next call gets a new one.
                self._pool = self._new_pool()
                raise Unavailable("the file could not be checked: its checking process stopped; retry") from None
            if isinstance(checked, OutOfTime):
                seconds = self._settings.validate_seconds
                raise FailedPrecondition(
                    f"the file could not be checked within {seconds:g} s ({checked.rows_read} rows read);"
                    " upload it instead: its upload history reports every row",
                    reason="CHECK_TOO_LONG",
                )
            return checked
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._settings.validate_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_checking_process,
        )

    def close(self) -> None:
        # A file being checked when the service stops is of no use to anyone:
        # its process is ended rather than waited for.
        processes = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()


def start_checking_process() -> None:
    """Runs first in each checking process: a low CPU priority, and an end with the serving process.

    Without the second, a serving process that is killed (by the OOM killer, say) leaves its checking
    processes running, each holding its memory and its parent's output pipe, one set more per restart.
    """
    run_in_background()
    stop_with_parent()


class _SnapshotChecker:
    """The merge's rules on a service snapshot, storing nothing."""

    def __init__(self, service: ServiceSnapshot) -> None:
        self._service = service

    async def merge_stream(
        self,
        identity: Identity,
        header: BatchHeader,
        chunks: AsyncIterator[BatchChunk],
        *,
        on_progress: ProgressReport | None = None,
    ) -> BatchResult:
        return await check_batch(self._service, header, chunks, on_progress=on_progress)


@dataclass(frozen=True)
class OutOfTime:
    """The check ran out of its time before the end of the file."""

    rows_read: int


def check_file(
    path: str, file_name: str, service: ServiceSnapshot, table_id: int, settings: ImportSettings
) -> Outcome | OutOfTime:
    """Runs in a worker process: the outcome an upload of the file at `path` would have."""
    return asyncio.run(_check_in_time(Path(path), file_name, service, table_id, settings))


async def _check_in_time(
    path: Path, file_name: str, service: ServiceSnapshot, table_id: int, settings: ImportSettings
) -> Outcome | OutOfTime:
    table = service.table(table_id)
    identity = Identity(service.account_id, frozenset({Scope.READ}), CredentialKind.SERVICE, "imports")
    applier = FileApplier(_SnapshotChecker(service), settings)
    progress = Progress()
    checking = applier.run(
        applier.stream(_read(path), file_name),
        identity,
        service.id,
        table,
        all_or_nothing=table.import_mode == "all_or_nothing",
        idempotency_key="",
        validate_only=True,
        progress=progress,
    )
    # The parser hands the loop back after every inflated piece, so the deadline
    # stops even a file of nothing but line breaks.
    try:
        return await asyncio.wait_for(checking, settings.validate_seconds)
    except TimeoutError:
        return OutOfTime(progress.rows_total)


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(_READ_BYTES):
            yield chunk
