"""Exports: a table's profiles, or an audience's members with their consolidated values, written to the bucket.

An export is recorded before it runs and runs in the background; a replica
that dies mid-export leaves it unfinished, and the next runner to look (this
process after a restart, or another replica) runs it again from the start,
overwriting the half-written object. Each export reads one snapshot: a table
export is one COPY statement, an audience export one repeatable-read
transaction. While it runs, its record shows the rows and bytes written so
far, updated in statements of their own outside that snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from services._runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services._runtime.identity import CredentialKind, Identity, Scope
from services._runtime.paging import Page
from services._runtime.s3 import ObjectStore
from services.domain.catalog import ServiceSnapshot, TableInfo
from services.domain.limits import EXPORT_FORMATS
from services.profiles.export_format import CsvEncoder, JsonLinesEncoder
from services.profiles.export_repository import (
    COPY_MAX_COLUMNS,
    CopyProgress,
    ExportParent,
    ExportRecord,
    ExportsRepository,
)
from services.profiles.membership import Membership
from services.profiles.targeting import ResolvedAudience, Targeting
from services.schema.client import RegistryClient

log = logging.getLogger(__name__)

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
DOWNLOAD_URL_SECONDS = 3600
# Bytes between PostgreSQL and the upload, bounded so a slow store slows the
# read instead of filling memory: blocks of 1 MiB, 8 of them ahead.
_PIPE_BLOCK_BYTES = 1024 * 1024
_PIPE_BLOCKS = 8
_AUDIENCE_BATCH_ROWS = 2000
# How often a running export writes into its record how far it has come; readers
# are promised figures no older than 2 s, and a busy event loop wakes a timer late.
PROGRESS_SECONDS = 0.5


@dataclass(frozen=True)
class ExportView:
    record: ExportRecord
    download_url: str


def _runner_identity(account_id: int) -> Identity:
    return Identity(account_id, frozenset({Scope.READ}), CredentialKind.SERVICE, "exports")


def _active_columns(table: TableInfo) -> tuple[list[str], list[str]]:
    """(stored keys, names) of the table's active attributes, in registration order."""
    attributes = sorted(table.by_id.items())
    return [str(i) for i, _ in attributes], [a.spec.name for _, a in attributes]


class _Pipe:
    """Carries bytes from a producer to the uploader in blocks, at most `_PIPE_BLOCKS` blocks ahead.

    PostgreSQL's COPY arrives in pieces of a few kilobytes; passing each one
    through the queue would cost a task switch per piece, so they are joined
    into blocks first. The blocks ahead let the COPY go on while a part uploads.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_PIPE_BLOCKS)
        self._pending: list[bytes] = []
        self._held = 0
        self.size = 0
        # Rows encoded so far, for the export's progress; the final count is the producer's.
        self.rows = 0
        # Asked for the rows so far instead, when a COPY encodes them.
        self.copy: CopyProgress | None = None

    async def rows_so_far(self) -> int:
        if self.copy is not None:
            sent = await self.copy.rows()
            if sent is not None:
                self.rows = max(self.rows, sent)
        return self.rows

    async def put(self, chunk: bytes, rows: int = 0) -> None:
        self.rows += rows
        if chunk:
            self.size += len(chunk)
            self._pending.append(chunk)
            self._held += len(chunk)
            if self._held >= _PIPE_BLOCK_BYTES:
                await self._flush()

    async def _flush(self) -> None:
        block = b"".join(self._pending)
        self._pending, self._held = [], 0
        await self._queue.put(block)

    async def close(self) -> None:
        if self._pending:
            await self._flush()
        await self._queue.put(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk


class Exports:
    def __init__(  # noqa: PLR0917 - each is a different collaborator, wired in one place
        self,
        repository: ExportsRepository,
        pool: asyncpg.Pool,
        store: ObjectStore | None,
        registry: RegistryClient,
        targeting: Targeting,
        membership: Membership,
        *,
        poll_seconds: float = 5.0,
    ) -> None:
        self._repo = repository
        self._pool = pool
        self._store = store
        self._registry = registry
        self._targeting = targeting
        self._membership = membership
        self._poll_seconds = poll_seconds
        self._running: dict[int, asyncio.Task[None]] = {}

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise FailedPrecondition(
                "exports need an object store; configure one with the DCP_S3_* settings", reason="FAILED_PRECONDITION"
            )
        return self._store

    # Requests

    async def export_table(self, identity: Identity, table_id: int, export_format: str) -> ExportView:
        _check_format(export_format)
        service_id = await self._registry.service_of_table(identity, table_id)
        service = await self._registry.fresh_service(identity, service_id)
        table = service.table(table_id)
        if table.archived or service.archived:
            raise FailedPrecondition(
                f"table {table_id} is archived; its profiles can no longer be exported", reason="RESOURCE_ARCHIVED"
            )
        return await self._begin(identity, service_id, export_format, datasource_id=table_id)

    async def export_audience(self, identity: Identity, audience_id: int, export_format: str) -> ExportView:
        _check_format(export_format)
        audience = await self._targeting.resolve(identity, audience_id)
        return await self._begin(identity, audience.service.id, export_format, audience_id=audience_id)

    async def _begin(
        self,
        identity: Identity,
        service_id: int,
        export_format: str,
        *,
        datasource_id: int | None = None,
        audience_id: int | None = None,
    ) -> ExportView:
        """Records the export, then starts it here; the record is what survives a crash."""
        bucket = self.store.bucket
        source = f"table-{datasource_id}" if datasource_id is not None else f"audience-{audience_id}"
        record = await self._repo.create(
            identity.account_id,
            service_id,
            datasource_id=datasource_id,
            audience_id=audience_id,
            export_format=export_format,
            bucket=bucket,
            key_of=lambda export_id: f"exports/{service_id}/{source}-export-{export_id}.{export_format}",
        )
        self._start(record.id)
        return ExportView(record, "")

    async def get(self, identity: Identity, export_id: int) -> ExportView:
        record = await self._repo.get(identity.account_id, export_id)
        if record is None:
            raise NotFound(f"export {export_id} does not exist", metadata={"resource": "export", "id": str(export_id)})
        return await self._view(record)

    async def history(self, identity: Identity, parent: ExportParent, parent_id: int, page: Page) -> list[ExportView]:
        """The parent's exports, newest first: `page.size` of them and one more when more follow."""
        # The parent must be the caller's, archived or not: exports of another account's answer 404.
        if parent == "service":
            await self._registry.service(identity, parent_id)
        elif parent == "table":
            await self._registry.service_of_table(identity, parent_id)
        else:
            await self._targeting.definition(identity, parent_id)
        records = await self._repo.history(
            identity.account_id, parent, parent_id, before_id=page.after_id or None, limit=page.size + 1
        )
        return [await self._view(record) for record in records]

    async def _view(self, record: ExportRecord) -> ExportView:
        url = ""
        if record.status == "done":
            url = await self.store.presigned_get(
                record.key, expires_seconds=DOWNLOAD_URL_SECONDS, file_name=record.key.rsplit("/", 1)[-1]
            )
        return ExportView(record, url)

    # Running

    def _start(self, export_id: int) -> None:
        if export_id not in self._running:
            task = asyncio.create_task(self._run(export_id), name=f"export-{export_id}")
            self._running[export_id] = task
            task.add_done_callback(lambda _: self._running.pop(export_id, None))

    async def run(self) -> None:
        """Takes over exports that no runner holds (a crashed replica's), until cancelled."""
        if self._store is None:
            return
        while True:
            try:
                for export_id in await self._repo.unfinished():
                    self._start(export_id)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("could not look for unfinished exports: %s", error)
            await asyncio.sleep(self._poll_seconds)

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Waits for the exports running in this process."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _run(self, export_id: int) -> None:
        async with self._pool.acquire() as lock_connection:
            record = await self._repo.claim(lock_connection, export_id)
            if record is None:
                return
            try:
                rows, size = await self._write(record)
            except asyncio.CancelledError:
                # Left running: the next runner takes it over.
                raise
            except Exception as error:
                log.exception("export %s failed", export_id)
                await self._repo.fail(export_id, _reason(error))
            else:
                await self._repo.finish(export_id, row_count=rows, size_bytes=size)
                log.info("export %s done: %s rows, %s bytes to %s", export_id, rows, size, record.key)
            finally:
                await self._repo.release(lock_connection, export_id)

    async def _write(self, record: ExportRecord) -> tuple[int, int]:
        identity = _runner_identity(record.account_id)
        if record.datasource_id is not None:
            service = await self._registry.fresh_service(identity, record.dcp_service_id)
            producer = self._table_producer(record, service, service.table(record.datasource_id))
        else:
            assert record.audience_id is not None
            audience = await self._targeting.resolve(identity, record.audience_id)
            producer = self._audience_producer(record, audience)
        pipe = _Pipe()

        async def produce() -> int:
            try:
                return await producer(pipe)
            finally:
                await pipe.close()

        rows_task = asyncio.create_task(produce())
        showing = asyncio.create_task(self._show_progress(record.id, pipe), name=f"export-progress-{record.id}")
        try:
            await self.store.upload_stream(record.key, pipe.chunks(), content_type=CONTENT_TYPES[record.format])
        except BaseException:
            rows_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rows_task
            raise
        finally:
            # Stopped before the final figures are written, so that no reading so far lands after them.
            showing.cancel()
            await asyncio.gather(showing, return_exceptions=True)
        return await rows_task, pipe.size

    async def _show_progress(self, export_id: int, pipe: _Pipe) -> None:
        """Writes the rows and bytes written so far into the export's record as they move, until cancelled."""
        shown = (0, 0)
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            try:
                figures = (await pipe.rows_so_far(), pipe.size)
                if figures == shown:
                    continue
                await self._repo.note_progress(export_id, row_count=figures[0], size_bytes=figures[1])
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # The export meets the outage itself if it lasts.
                log.debug("could not show the progress of export %s: %s", export_id, error)
                continue
            shown = figures

    def _table_producer(
        self, record: ExportRecord, service: ServiceSnapshot, table: TableInfo
    ) -> Callable[[_Pipe], Awaitable[int]]:
        keys, names = _active_columns(table)

        async def produce(pipe: _Pipe) -> int:
            if record.format == "csv":
                await pipe.put(CsvEncoder(names).header())
            if len(keys) > COPY_MAX_COLUMNS:
                return await self._wide_table(record, keys, names, table.id, pipe)
            pipe.copy = self._repo.copy_progress()
            return await self._repo.copy_table(
                table.id, keys, export_format=record.format, names=names, output=pipe.put, progress=pipe.copy
            )

        return produce

    async def _wide_table(
        self, record: ExportRecord, keys: list[str], names: list[str], table_id: int, pipe: _Pipe
    ) -> int:
        """A table with more attributes than one COPY can select, encoded here from each profile's values."""
        csv = CsvEncoder(names) if record.format == "csv" else None
        jsonl = JsonLinesEncoder()
        count = 0
        async for batch in self._repo.table_rows(table_id, keys, batch_rows=_AUDIENCE_BATCH_ROWS):
            count += len(batch)
            if csv is not None:
                await pipe.put(
                    csv.encode((customer, [data.get(key) for key in keys]) for customer, data in batch), len(batch)
                )
            else:
                await pipe.put(
                    jsonl.encode(
                        {
                            "customerId": customer,
                            "data": {n: data[k] for k, n in zip(keys, names, strict=True) if data.get(k) is not None},
                        }
                        for customer, data in batch
                    ),
                    len(batch),
                )
        return count

    def _audience_producer(self, record: ExportRecord, audience: ResolvedAudience) -> Callable[[_Pipe], Awaitable[int]]:
        service = audience.service
        tables = [t for _, t in sorted(service.tables.items()) if not t.archived]
        # (index of the table in a member's row, stored key, column name)
        columns = [
            (index, key, f"{table.name}.{name}")
            for index, table in enumerate(tables)
            for key, name in zip(*_active_columns(table), strict=True)
        ]
        now = self._targeting.now()

        async def produce(pipe: _Pipe) -> int:
            csv = CsvEncoder([label for _, _, label in columns]) if record.format == "csv" else None
            jsonl = JsonLinesEncoder()
            if csv is not None:
                await pipe.put(csv.header())
            count = 0
            batch: list[tuple[str, list[dict[str, object] | None]]] = []

            async def flush() -> None:
                if csv is not None:
                    await pipe.put(
                        csv.encode(
                            (user, [(data[index] or {}).get(key) for index, key, _ in columns]) for user, data in batch
                        ),
                        len(batch),
                    )
                else:
                    await pipe.put(jsonl.encode(_member_line(user, data, tables) for user, data in batch), len(batch))
                batch.clear()

            async with (
                self._pool.acquire() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for user, data in self._membership.rows(
                    connection,
                    service.id,
                    service.optimizely_table_id,
                    audience.node,
                    now=now,
                    tables=[t.id for t in tables],
                ):
                    batch.append((user, data))
                    count += 1
                    if len(batch) >= _AUDIENCE_BATCH_ROWS:
                        await flush()
                await flush()
            return count

        return produce


def _member_line(user: str, data: list[dict[str, object] | None], tables: list[TableInfo]) -> dict[str, object]:
    profiles = []
    for table, values in zip(tables, data, strict=True):
        if not values:
            continue
        visible = {a.spec.name: values[str(i)] for i, a in sorted(table.by_id.items()) if str(i) in values}
        if visible:
            profiles.append({"datasourceId": str(table.id), "data": visible})
    return {"optimizelyUserId": user, "profiles": profiles}


def _check_format(export_format: str) -> None:
    if export_format not in EXPORT_FORMATS:
        shown = export_format if len(export_format) <= 40 else export_format[:40] + "…"
        raise InvalidArgument.field("format", f"must be one of {', '.join(map(repr, EXPORT_FORMATS))}, got {shown!r}")


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 1000 else text[:999] + "…"
