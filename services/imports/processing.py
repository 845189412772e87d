"""Applying one uploaded file: header rules here, row rules in the profiles service.

The importer reads the object as a stream, checks the header against the
table's attributes, and hands the rows as text cells to the profiles batch
merge (in this process or another: the wiring decides, and the call is
handled alike either way), which parses each cell with the same validator as
a single write and stores the file in one transaction. The batch carries the upload's id as
its idempotency key, so a file retried after a crash is never applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from services._runtime.errors import DcpError, FailedPrecondition, InvalidArgument, NotFound
from services._runtime.identity import CredentialKind, Identity, Scope
from services._runtime.s3 import ObjectGone, ObjectStore, StoredObject
from services._runtime.settings import ImportSettings
from services.domain.batches import (
    BatchChunk,
    BatchHeader,
    BatchMerger,
    BatchProgress,
    BatchResult,
    RowError,
    TextRows,
    column_problems,
)
from services.domain.catalog import TableInfo
from services.imports.parsing import CsvStream, FileProblem
from services.imports.repository import Outcome, Upload
from services.schema.client import RegistryClient

log = logging.getLogger(__name__)

CUSTOMER_ID_COLUMN = "customerid"
# Rows travel in messages of about this many bytes: far below gRPC's 4 MiB
# default, large enough that per-message costs vanish.
MESSAGE_BYTES = 512 * 1024


class RetryLater(Exception):
    """A part the import needs is unavailable; the upload stays open and is tried again."""


@dataclass(frozen=True)
class Columns:
    """Where the customer id is, and which attribute each other column is."""

    customer_index: int
    attribute_names: list[str]


def stored_object(upload: Upload) -> StoredObject:
    """The object version an upload was recorded for."""
    return StoredObject(upload.s3_key, upload.size_bytes, upload.etag, upload.object_modified, upload.version_id)


def read_header(fields: list[str], table: TableInfo) -> Columns:
    """The header's columns, or FileProblem naming every column that breaks a rule."""
    customer = [i for i, name in enumerate(fields) if name.strip().lower() == CUSTOMER_ID_COLUMN]
    if not customer:
        raise FileProblem("the header has no customerId column (any letter case); the file was not imported")
    problems: list[str] = []
    if len(customer) > 1:
        problems.append("duplicate customerId columns: " + ", ".join(repr(fields[i]) for i in customer))
    others = [name for i, name in enumerate(fields) if i not in customer]
    unknown, duplicates = column_problems(table, others)
    if duplicates:
        problems.append("duplicate columns: " + ", ".join(repr(n) for n in duplicates))
    if unknown:
        problems.append(
            "columns that are not active attributes of this table (names are case-sensitive): "
            + ", ".join(repr(n) for n in unknown)
        )
    if problems:
        raise FileProblem("; ".join(problems) + "; the file was not imported")
    return Columns(customer[0], others)


@dataclass
class Progress:
    """How far an import has come; watched by whoever may have to stop it or show it."""

    rows_total: int = 0
    bytes_read: int = 0
    """Bytes of the stored object handed to the parser so far; for a .gz file the
    compressed bytes, which is what the object's size counts."""
    rejected_here: int = 0
    errors: list[RowError] = field(default_factory=list)
    reading_done: bool = False
    """Every row has been handed to the merge: from here on the file is being
    committed, and stopping could no longer say for sure what was stored."""
    merged: BatchProgress = field(default_factory=BatchProgress)
    """What the merge has checked so far."""
    all_or_nothing: bool = False
    handing_over: Callable[[], Awaitable[None]] | None = None
    """Awaited each time a message of rows is about to go to the merge. Reading,
    parsing and checking rows hold the event loop from one message to the next,
    so whoever shows this progress is given its turn here, where the figures move."""

    def figures(self) -> tuple[int, int, int, int]:
        """(rows read, rows to be stored, rows refused, bytes read) so far, as the upload history shows them."""
        failed = self.rejected_here + self.merged.rows_rejected
        # One refused row of an all-or-nothing file means none will be stored.
        ok = 0 if self.all_or_nothing and failed else self.merged.rows_valid
        return self.rows_total, ok, failed, self.bytes_read

    def merge_reported(self, progress: BatchProgress) -> None:
        self.merged = progress


class Importer:
    """Turns one recorded upload into stored profiles and an outcome."""

    def __init__(
        self, store: ObjectStore, registry: RegistryClient, merger: BatchMerger, settings: ImportSettings
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._applier = FileApplier(merger, settings)

    async def process(self, upload: Upload, progress: Progress | None = None) -> Outcome:
        # The importer acts for the account that owns the table, and only for it.
        identity = Identity(upload.account_id, frozenset({Scope.WRITE}), CredentialKind.SERVICE, "imports")
        if upload.size_bytes > self._settings.max_file_bytes:
            return Outcome(
                "failed",
                error=f"the file has {upload.size_bytes} bytes, more than the {self._settings.max_file_bytes} allowed",
            )
        try:
            service = await self._registry.fresh_service(identity, upload.dcp_service_id)
        except NotFound:
            return Outcome("failed", error=f"table {upload.datasource_id} no longer exists")
        except DcpError as error:
            raise RetryLater(str(error)) from error
        table = service.tables.get(upload.datasource_id)
        if table is None:
            return Outcome("failed", error=f"table {upload.datasource_id} no longer exists")
        if table.archived or service.archived:
            return Outcome("failed", error=f"table {table.id} is archived; files put in its path are not imported")
        tally = progress if progress is not None else Progress()
        stream = self._applier.stream(_counted(self._store.chunks(stored_object(upload)), tally), upload.file_name)
        try:
            outcome = await self._applier.run(
                stream,
                identity,
                upload.dcp_service_id,
                table,
                all_or_nothing=table.import_mode == "all_or_nothing",
                idempotency_key=f"import:{upload.id}",
                validate_only=False,
                progress=tally,
            )
        except ObjectGone:
            outcome = Outcome("failed", error="the file was removed from the bucket before it could be imported")
        return replace(outcome, bytes_read=tally.bytes_read)

    async def archived_reason(self, upload: Upload) -> str | None:
        """Why the upload's table can no longer take its file, if it cannot (asked afresh)."""
        identity = Identity(upload.account_id, frozenset({Scope.READ}), CredentialKind.SERVICE, "imports")
        try:
            service = await self._registry.fresh_service(identity, upload.dcp_service_id)
        except NotFound:
            return f"table {upload.datasource_id} no longer exists; no row of the file was stored"
        except DcpError:
            return None  # the registry cannot be asked now; the import goes on
        table = service.tables.get(upload.datasource_id)
        if table is None:
            return f"table {upload.datasource_id} no longer exists; no row of the file was stored"
        if service.archived:
            return f"DCP service {service.id} was archived during the import; no row of the file was stored"
        if table.archived:
            return f"table {table.id} was archived during the import; no row of the file was stored"
        return None

    async def validate(
        self, identity: Identity, service_id: int, table: TableInfo, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome:
        """What an upload of this file would end as, storing nothing."""
        return await self._applier.run(
            self._applier.stream(chunks, file_name),
            identity,
            service_id,
            table,
            all_or_nothing=table.import_mode == "all_or_nothing",
            idempotency_key="",
            validate_only=True,
        )


async def _counted(chunks: AsyncIterator[bytes], tally: Progress) -> AsyncIterator[bytes]:
    """The object's bytes, counted as the parser takes them rather than as the store sends them ahead."""
    async for chunk in chunks:
        tally.bytes_read += len(chunk)
        yield chunk


class FileApplier:
    """Reads one file's rows within the limits, hands them to a merger, and tells how it went."""

    def __init__(self, merger: BatchMerger, settings: ImportSettings) -> None:
        self._merger = merger
        self._settings = settings

    def stream(self, chunks: AsyncIterator[bytes], file_name: str) -> CsvStream:
        """The file's records, within every limit a file must keep to."""
        limits = self._settings
        return CsvStream(
            chunks,
            key=file_name,
            max_field_chars=limits.max_field_chars,
            max_inflated_bytes=limits.max_inflated_bytes,
            max_compression_ratio=limits.max_compression_ratio,
            ratio_check_bytes=limits.ratio_check_bytes,
        )

    async def run(
        self,
        stream: CsvStream,
        identity: Identity,
        service_id: int,
        table: TableInfo,
        *,
        all_or_nothing: bool,
        idempotency_key: str,
        validate_only: bool,
        progress: Progress | None = None,
    ) -> Outcome:
        try:
            header = await stream.header()
            columns = read_header(header.fields, table)
        except FileProblem as problem:
            return Outcome("failed", error=str(problem))
        tally = progress if progress is not None else Progress()
        tally.all_or_nothing = all_or_nothing
        batch = BatchHeader(
            service_id=service_id,
            table_id=table.id,
            all_or_nothing=all_or_nothing,
            idempotency_key=idempotency_key,
            columns=columns.attribute_names,
            validate_only=validate_only,
        )
        try:
            # A file problem found mid-stream ends the batch's transaction before anything is stored.
            result = await self._merger.merge_stream(
                identity,
                batch,
                self._chunks(stream, columns, len(header.fields), tally),
                # A file being imported shows in its history how far it has come; a checked one has no history.
                on_progress=None if validate_only else tally.merge_reported,
            )
        except FileProblem as problem:
            return Outcome("failed", rows_total=tally.rows_total, error=str(problem))
        except (InvalidArgument, FailedPrecondition, NotFound) as refusal:
            return Outcome("failed", rows_total=tally.rows_total, error=refusal.message)
        except DcpError as error:
            raise RetryLater(error.message) from error
        return self._outcome(tally, result, all_or_nothing=all_or_nothing)

    async def _chunks(
        self, stream: CsvStream, columns: Columns, width: int, tally: Progress
    ) -> AsyncIterator[BatchChunk]:
        customer_index = columns.customer_index
        max_errors = self._settings.max_errors
        max_rows = self._settings.max_rows
        numbers: list[int] = []
        cells: list[str] = []
        size = 0
        rejected = 0
        async for batch in stream:
            if tally.rows_total + len(batch) > max_rows:
                raise FileProblem(f"the file has more than {max_rows} data rows, the most a file may have")
            for record in batch:
                tally.rows_total += 1
                fields = record.fields
                if len(fields) != width:
                    rejected += 1
                    if len(tally.errors) < max_errors:
                        tally.errors.append(
                            RowError.about(
                                record.row,
                                "",
                                f"has {len(fields)} fields; the header has {width}",
                                ",".join(fields),
                            )
                        )
                    continue
                numbers.append(record.row)
                if customer_index:
                    # Batches carry the customer id first; templates put it there already.
                    fields = [fields[customer_index], *fields[:customer_index], *fields[customer_index + 1 :]]
                cells += fields
                size += sum(map(len, fields)) + 4 * width
                if size >= MESSAGE_BYTES:
                    tally.rejected_here += rejected
                    if tally.handing_over is not None:
                        await tally.handing_over()
                    yield BatchChunk(text_rows=TextRows(numbers, cells), rejected_by_caller=rejected)
                    numbers, cells, size, rejected = [], [], 0, 0
        tally.rejected_here += rejected
        if tally.handing_over is not None:
            await tally.handing_over()
        tally.reading_done = True
        if numbers or rejected:
            yield BatchChunk(text_rows=TextRows(numbers, cells), rejected_by_caller=rejected)

    def _outcome(self, tally: Progress, response: BatchResult, *, all_or_nothing: bool) -> Outcome:
        failed = tally.rejected_here + response.rows_rejected
        errors = sorted(
            [
                *tally.errors,
                *response.errors,
            ],
            key=lambda e: e.row_number,
        )[: self._settings.max_errors]
        if tally.rows_total == 0:
            return Outcome("failed", error="the file has a header but no data rows")
        if failed and all_or_nothing:
            return Outcome(
                "failed",
                rows_total=tally.rows_total,
                rows_failed=failed,
                errors=errors,
                error=f"{failed} of {tally.rows_total} rows were refused, and this table imports a file"
                " all or nothing: no row was stored",
            )
        ok = response.rows_stored
        if not failed:
            status = "processed"
        elif ok:
            status = "partially_processed"
        else:
            status = "failed"
        return Outcome(
            status,
            rows_total=tally.rows_total,
            rows_ok=ok,
            rows_failed=failed,
            errors=errors,
            error="" if ok or not failed else "no row could be imported; see the errors",
        )
