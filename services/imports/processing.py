"""Applying one uploaded file: header rules here, row rules in the profiles service.

The importer reads the object as a stream, checks the header against the
table's attributes, and hands the rows as text cells to the profiles service's
batch merge, which parses each cell with the same validator as a single write
and stores the file in one transaction. The batch carries the upload's id as
its idempotency key, so a file retried after a crash is never applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from services._runtime.errors import DcpError, NotFound
from services._runtime.identity import IDENTITY_METADATA_KEY, AssertionSigner, CredentialKind, Identity, Scope
from services._runtime.s3 import ObjectGone, ObjectStore, StoredObject
from services._runtime.settings import ImportSettings
from services.imports.parsing import CsvStream, FileProblem
from services.imports.repository import ErrorRow, Outcome, Upload
from services.schema.client import RegistryClient, TableInfo

log = logging.getLogger(__name__)

CUSTOMER_ID_COLUMN = "customerid"
ERROR_VALUE_CHARS = 200
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


def read_header(fields: list[str], table: TableInfo) -> Columns:
    """The header's columns, or FileProblem naming every column that breaks a rule."""
    customer = [i for i, name in enumerate(fields) if name.strip().lower() == CUSTOMER_ID_COLUMN]
    if not customer:
        raise FileProblem("the header has no customerId column (any letter case); the file was not imported")
    problems: list[str] = []
    if len(customer) > 1:
        problems.append("duplicate customerId columns: " + ", ".join(repr(fields[i]) for i in customer))
    others = [name for i, name in enumerate(fields) if i not in customer]
    seen: set[str] = set()
    duplicates = sorted({name for name in others if name in seen or seen.add(name)})  # type: ignore[func-returns-value]
    if duplicates:
        problems.append("duplicate columns: " + ", ".join(repr(n) for n in duplicates))
    unknown = [name for name in dict.fromkeys(others) if name not in table.by_name]
    if unknown:
        problems.append(
            "columns that are not active attributes of this table (names are case-sensitive): "
            + ", ".join(repr(n) for n in unknown)
        )
    if problems:
        raise FileProblem("; ".join(problems) + "; the file was not imported")
    return Columns(customer[0], others)


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_VALUE_CHARS else text[: ERROR_VALUE_CHARS - 1] + "…"


@dataclass
class _Tally:
    rows_total: int = 0
    rejected_here: int = 0
    errors: list[ErrorRow] = field(default_factory=list)


class Importer:
    """Turns one recorded upload into stored profiles and an outcome."""

    def __init__(
        self,
        store: ObjectStore,
        registry: RegistryClient,
        profiles: profiles_grpc.ProfilesServiceAsyncStub,
        signer: AssertionSigner,
        settings: ImportSettings,
    ) -> None:
        self._store = store
        self._registry = registry
        self._profiles = profiles
        self._signer = signer
        self._settings = settings

    async def process(self, upload: Upload) -> Outcome:
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
        stored = StoredObject(upload.s3_key, upload.size_bytes, upload.etag, upload.object_modified, upload.version_id)
        metadata = ((IDENTITY_METADATA_KEY, self._signer.sign_cached(identity)),)
        try:
            return await self._apply(
                upload, table, stored, metadata, all_or_nothing=table.import_mode == "all_or_nothing"
            )
        except ObjectGone:
            return Outcome("failed", error="the file was removed from the bucket before it could be imported")

    async def validate(
        self, identity: Identity, service_id: int, table: TableInfo, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome:
        """What an upload of this file would end as, storing nothing."""
        metadata = ((IDENTITY_METADATA_KEY, self._signer.sign_cached(identity)),)
        return await self._run(
            CsvStream(chunks, key=file_name, max_field_chars=self._settings.max_field_chars),
            service_id,
            table,
            metadata,
            all_or_nothing=table.import_mode == "all_or_nothing",
            idempotency_key="",
            validate_only=True,
        )

    async def _apply(
        self,
        upload: Upload,
        table: TableInfo,
        stored: StoredObject,
        metadata: tuple[tuple[str, str], ...],
        *,
        all_or_nothing: bool,
    ) -> Outcome:
        stream = CsvStream(
            self._store.chunks(stored), key=upload.file_name, max_field_chars=self._settings.max_field_chars
        )
        return await self._run(
            stream,
            upload.dcp_service_id,
            table,
            metadata,
            all_or_nothing=all_or_nothing,
            idempotency_key=f"import:{upload.id}",
            validate_only=False,
        )

    async def _run(
        self,
        stream: CsvStream,
        service_id: int,
        table: TableInfo,
        metadata: tuple[tuple[str, str], ...],
        *,
        all_or_nothing: bool,
        idempotency_key: str,
        validate_only: bool,
    ) -> Outcome:
        try:
            header = await stream.header()
            columns = read_header(header.fields, table)
        except FileProblem as problem:
            return Outcome("failed", error=str(problem))
        tally = _Tally()
        # Written message by message: a file problem found mid-stream cancels the
        # call, and so the profiles transaction, before anything is stored.
        call = self._profiles.MergeProfiles(metadata=metadata)  # type: ignore[call-arg]
        try:
            await call.write(
                profiles_pb.MergeProfilesRequest(
                    dcp_service_id=service_id,
                    dcp_datasource_id=table.id,
                    all_or_nothing=all_or_nothing,
                    columns=columns.attribute_names,
                    idempotency_key=idempotency_key,
                    validate_only=validate_only,
                )
            )
            async for message in self._messages(stream, columns, len(header.fields), tally):
                await call.write(message)
            await call.done_writing()
            response = await call
        except FileProblem as problem:
            call.cancel()
            return Outcome("failed", rows_total=tally.rows_total, error=str(problem))
        except grpc.aio.AioRpcError as error:
            return _refused(error, tally)
        except BaseException:
            call.cancel()
            raise
        return self._outcome(tally, response, all_or_nothing=all_or_nothing)

    async def _messages(
        self, stream: CsvStream, columns: Columns, width: int, tally: _Tally
    ) -> AsyncIterator[profiles_pb.MergeProfilesRequest]:
        customer_index = columns.customer_index
        max_errors = self._settings.max_errors
        numbers: list[int] = []
        cells: list[str] = []
        size = 0
        rejected = 0
        async for batch in stream:
            for record in batch:
                tally.rows_total += 1
                fields = record.fields
                if len(fields) != width:
                    rejected += 1
                    if len(tally.errors) < max_errors:
                        tally.errors.append(
                            ErrorRow(
                                record.row,
                                "",
                                _cut(",".join(fields)),
                                f"has {len(fields)} fields; the header has {width}",
                            )
                        )
                    continue
                numbers.append(record.row)
                if customer_index:
                    # The wire wants the customer id first; templates put it there already.
                    fields = [fields[customer_index], *fields[:customer_index], *fields[customer_index + 1 :]]
                cells += fields
                size += sum(map(len, fields)) + 4 * width
                if size >= MESSAGE_BYTES:
                    tally.rejected_here += rejected
                    yield profiles_pb.MergeProfilesRequest(
                        text_row_numbers=numbers, text_cells=cells, rows_rejected_by_caller=rejected
                    )
                    numbers, cells, size, rejected = [], [], 0, 0
        tally.rejected_here += rejected
        if numbers or rejected:
            yield profiles_pb.MergeProfilesRequest(
                text_row_numbers=numbers, text_cells=cells, rows_rejected_by_caller=rejected
            )

    def _outcome(self, tally: _Tally, response: profiles_pb.MergeProfilesResponse, *, all_or_nothing: bool) -> Outcome:
        failed = tally.rejected_here + response.rows_rejected
        errors = sorted(
            [
                *tally.errors,
                *(ErrorRow(e.row_number, e.field, e.value, e.message) for e in response.errors),
            ],
            key=lambda e: e.row,
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


def _refused(error: grpc.aio.AioRpcError, tally: _Tally) -> Outcome:
    code = error.code()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return Outcome("failed", rows_total=tally.rows_total, error=error.details() or code.name)
    raise RetryLater(f"the profiles service answered {code.name}: {error.details()}")
