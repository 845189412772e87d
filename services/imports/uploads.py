"""The upload history and the tools around it: template, validation, upload URLs."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc

from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from services._runtime.calls import relayed
from services._runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services._runtime.identity import AssertionSigner, Identity
from services._runtime.interceptors import outgoing_metadata
from services._runtime.paging import Page
from services._runtime.s3 import ObjectStore
from services.domain.batches import RowError
from services.domain.catalog import TableInfo
from services.domain.limits import MAX_FILE_NAME_CHARS
from services.imports.repository import ImportsRepository, Outcome, Upload
from services.schema.client import missing_table, table_info_from_proto

DEFAULT_URL_SECONDS = 900
MAX_URL_SECONDS = 7 * 24 * 3600
CANCELLED_ON_REQUEST = "cancelled on request; no row of the file was stored"
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class OwnedTable:
    """A table the caller's account owns, with where its files go."""

    service_id: int
    s3_path: str
    info: TableInfo


class FileValidator(Protocol):
    """Checks a file as its upload would be checked, storing nothing."""

    async def validate(
        self, identity: Identity, service_id: int, table: TableInfo, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome: ...


# Finds a table of the caller's account, or raises NotFound.
TableLookup = Callable[[Identity, int], Awaitable[OwnedTable]]


@dataclass(frozen=True)
class UploadUrl:
    url: str
    key: str
    bucket: str
    expires_at: datetime


def check_file_name(name: str) -> str:
    """The name of one file in a table's path, or InvalidArgument saying why not."""
    if not name or not name.strip():
        raise InvalidArgument.field("file_name", "is required")
    if len(name) > MAX_FILE_NAME_CHARS:
        raise InvalidArgument.field("file_name", f"must be at most {MAX_FILE_NAME_CHARS} characters")
    if "/" in name or name in (".", "..") or _UNSAFE_NAME.search(name):
        raise InvalidArgument.field("file_name", "must be a plain file name: no '/', '\\', control characters, or '..'")
    return name


def template_csv(table: TableInfo) -> str:
    """customerId, then the table's active attribute names in registration order."""
    out = io.StringIO()
    names = [attribute.spec.name for _, attribute in sorted(table.by_id.items())]
    csv.writer(out, lineterminator="\r\n").writerow(["customerId", *names])
    return out.getvalue()


class TableDirectory:
    """Tables of the caller's account, asked of the schema service."""

    def __init__(self, schema: schema_service_pb2_grpc.SchemaServiceAsyncStub, signer: AssertionSigner) -> None:
        self._schema = schema
        self._signer = signer

    async def owned_table(self, identity: Identity, table_id: int) -> OwnedTable:
        metadata = outgoing_metadata(self._signer, identity)
        try:
            table = await self._schema.GetTable(
                schema_service_pb2.GetTableRequest(dcp_datasource_id=table_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema", instead={grpc.StatusCode.NOT_FOUND: missing_table(table_id)}) from None
        return OwnedTable(table.dcp_service_id, table.s3_path, table_info_from_proto(table))


class UploadHistory:
    def __init__(
        self,
        repository: ImportsRepository,
        tables: TableLookup,
        store: ObjectStore,
        checker: FileValidator,
    ) -> None:
        self._repo = repository
        self._tables = tables
        self._store = store
        self._checker = checker

    async def uploads(self, identity: Identity, table_id: int, page: Page) -> list[Upload]:
        await self._tables(identity, table_id)
        return await self._repo.history(
            identity.account_id, table_id, before_id=page.after_id or None, limit=page.size + 1
        )

    async def get(self, identity: Identity, table_id: int, upload_id: int) -> Upload:
        await self._tables(identity, table_id)
        upload = await self._repo.get(identity.account_id, table_id, upload_id)
        if upload is None:
            raise NotFound(
                f"upload {upload_id} does not exist in table {table_id}",
                metadata={"resource": "upload", "id": str(upload_id)},
            )
        return upload

    async def errors(
        self, identity: Identity, table_id: int, upload_id: int, page: Page
    ) -> tuple[Upload, list[tuple[int, RowError]]]:
        upload = await self.get(identity, table_id, upload_id)
        return upload, await self._repo.errors(upload.id, after_seq=page.after_id, limit=page.size + 1)

    async def cancel(self, identity: Identity, table_id: int, upload_id: int) -> Upload:
        """Stops an upload that has not finished; its history entry says it was cancelled."""
        await self._tables(identity, table_id)
        upload = await self._repo.request_cancel(identity.account_id, table_id, upload_id, CANCELLED_ON_REQUEST)
        if upload is None:
            raise NotFound(
                f"upload {upload_id} does not exist in table {table_id}",
                metadata={"resource": "upload", "id": str(upload_id)},
            )
        if upload.status not in ("pending", "processing") and upload.error != CANCELLED_ON_REQUEST:
            raise FailedPrecondition(
                f"upload {upload_id} has already finished ({upload.status}); only a pending or processing"
                " upload can be cancelled",
                reason="UPLOAD_FINISHED",
            )
        return upload

    async def template(self, identity: Identity, table_id: int) -> tuple[str, str]:
        table = await self._tables(identity, table_id)
        return f"{table.info.name}-template.csv", template_csv(table.info)

    async def validate(
        self, identity: Identity, table_id: int, file_name: str, chunks: AsyncIterator[bytes]
    ) -> Outcome:
        check_file_name(file_name)
        table = await self._tables(identity, table_id)
        return await self._checker.validate(identity, table.service_id, table.info, file_name, chunks)

    async def upload_url(self, identity: Identity, table_id: int, file_name: str, expires_in: int) -> UploadUrl:
        check_file_name(file_name)
        seconds = expires_in or DEFAULT_URL_SECONDS
        if not 1 <= seconds <= MAX_URL_SECONDS:
            raise InvalidArgument.field("expires_in_seconds", f"must be between 1 and {MAX_URL_SECONDS}")
        table = await self._tables(identity, table_id)
        if table.info.archived:
            raise FailedPrecondition(
                f"table {table_id} is archived; files put in its path are not imported", reason="RESOURCE_ARCHIVED"
            )
        key = f"{table.s3_path}/{file_name}"
        url = await self._store.presigned_put(key, seconds)
        return UploadUrl(url, key, self._store.bucket, datetime.now(UTC) + timedelta(seconds=seconds))
