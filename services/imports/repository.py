"""SQL for the imports schema: the upload history, which is also the work queue."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from services._runtime.db import MigrationSet, release_session_lock
from services.domain.batches import RowError

SCHEMA = "imports"
MIGRATIONS = MigrationSet(schema=SCHEMA, directory=Path(__file__).parent / "migrations")

# Separates the table locks from other advisory locks in the database.
_TABLE_LOCK_SPACE = 0x1D0C

_UPLOAD_COLUMNS = """
id, account_id, dcp_service_id, datasource_id, s3_key, version_id, etag, object_modified, file_name,
size_bytes, status, received_at, started_at, finished_at, rows_total, rows_ok, rows_failed, errors_kept, error,
bytes_read
"""


@dataclass(frozen=True)
class Upload:
    id: int
    account_id: int
    dcp_service_id: int
    datasource_id: int
    s3_key: str
    version_id: str
    etag: str
    object_modified: datetime
    file_name: str
    size_bytes: int
    status: str
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rows_total: int
    rows_ok: int
    rows_failed: int
    errors_kept: int
    error: str
    bytes_read: int


@dataclass(frozen=True)
class NewUpload:
    bucket: str
    account_id: int
    dcp_service_id: int
    datasource_id: int
    s3_key: str
    version_id: str
    etag: str
    object_modified: datetime
    file_name: str
    size_bytes: int


@dataclass(frozen=True)
class Outcome:
    """How an upload ended."""

    status: str
    rows_total: int = 0
    rows_ok: int = 0
    rows_failed: int = 0
    error: str = ""
    errors: Sequence[RowError] = ()
    bytes_read: int = 0
    """Bytes of the stored object read (compressed bytes for a .gz file); its size when it was read whole."""


def _upload(row: asyncpg.Record) -> Upload:
    return Upload(**dict(row))


class ImportsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, uploads: Sequence[NewUpload]) -> list[Upload]:
        """Records object versions not seen before, in the order given; returns the new ones."""
        created: list[Upload] = []
        async with self._pool.acquire() as connection, connection.transaction():
            for upload in uploads:
                row = await connection.fetchrow(
                    "INSERT INTO imports.uploads (account_id, dcp_service_id, datasource_id, s3_key, version_id, etag,"
                    " object_modified, file_name, size_bytes, bucket) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    f" ON CONFLICT DO NOTHING RETURNING {_UPLOAD_COLUMNS}",
                    upload.account_id,
                    upload.dcp_service_id,
                    upload.datasource_id,
                    upload.s3_key,
                    upload.version_id,
                    upload.etag,
                    upload.object_modified,
                    upload.file_name,
                    upload.size_bytes,
                    upload.bucket,
                )
                if row is not None:
                    created.append(_upload(row))
        return created

    async def known(
        self, bucket: str, keys: Sequence[tuple[str, str, str, datetime]]
    ) -> set[tuple[str, str, str, datetime]]:
        """Which of these (key, version, etag, modified) object versions of the bucket are already recorded."""
        if not keys:
            return set()
        rows = await self._pool.fetch(
            "SELECT u.s3_key, u.version_id, u.etag, u.object_modified FROM imports.uploads u"
            " JOIN unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS k(s3_key, version_id, etag, m)"
            " ON u.s3_key = k.s3_key AND u.version_id = k.version_id AND u.etag = k.etag AND u.object_modified = k.m"
            " WHERE u.bucket = $5",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            bucket,
        )
        return {(r["s3_key"], r["version_id"], r["etag"], r["object_modified"]) for r in rows}

    async def tables_with_open_uploads(self, bucket: str) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT datasource_id FROM imports.uploads"
            " WHERE bucket = $1 AND status IN ('pending', 'processing') ORDER BY datasource_id",
            bucket,
        )
        return [r["datasource_id"] for r in rows]

    @contextlib.asynccontextmanager
    async def table_lock(self, bucket: str, table_id: int) -> AsyncIterator[TableQueue | None]:
        """The right to import one table's files, held by one importer at a time.

        A session advisory lock on a connection of its own: if the process
        dies, PostgreSQL releases it with the connection, and another importer
        (or this one, restarted) takes the table over at once.
        """
        async with self._pool.acquire() as connection:
            held = await connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", _TABLE_LOCK_SPACE, table_id)
            if not held:
                yield None
                return
            try:
                yield TableQueue(connection, bucket, table_id)
            finally:
                await release_session_lock(connection, "SELECT pg_advisory_unlock($1, $2)", _TABLE_LOCK_SPACE, table_id)

    async def get(self, account_id: int, table_id: int, upload_id: int) -> Upload | None:
        row = await self._pool.fetchrow(
            f"SELECT {_UPLOAD_COLUMNS} FROM imports.uploads WHERE account_id = $1 AND datasource_id = $2 AND id = $3",
            account_id,
            table_id,
            upload_id,
        )
        return None if row is None else _upload(row)

    async def history(self, account_id: int, table_id: int, *, before_id: int | None, limit: int) -> list[Upload]:
        rows = await self._pool.fetch(
            f"SELECT {_UPLOAD_COLUMNS} FROM imports.uploads WHERE account_id = $1 AND datasource_id = $2"
            " AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
            account_id,
            table_id,
            before_id,
            limit,
        )
        return [_upload(r) for r in rows]

    async def errors(self, upload_id: int, *, after_seq: int, limit: int) -> list[tuple[int, RowError]]:
        rows = await self._pool.fetch(
            "SELECT seq, row_number, column_name, value, message FROM imports.upload_errors"
            " WHERE upload_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            upload_id,
            after_seq,
            limit,
        )
        return [(r["seq"], RowError(r["row_number"], r["column_name"], r["message"], r["value"])) for r in rows]

    async def request_cancel(self, account_id: int, table_id: int, upload_id: int, reason: str) -> Upload | None:
        """Stops an upload: a pending one ends at once, a processing one is stopped by its importer.

        Returns the upload as it now is, or None when the account has no such upload.
        """
        where = "account_id = $1 AND datasource_id = $2 AND id = $3"
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "UPDATE imports.uploads SET status = 'failed', finished_at = now(), error = $4, cancel_reason = $4"
                f" WHERE {where} AND status = 'pending' RETURNING {_UPLOAD_COLUMNS}",
                account_id,
                table_id,
                upload_id,
                reason,
            )
            if row is None:
                await connection.execute(
                    f"UPDATE imports.uploads SET cancel_reason = $4 WHERE {where} AND status = 'processing'"
                    " AND cancel_reason IS NULL",
                    account_id,
                    table_id,
                    upload_id,
                    reason,
                )
                row = await connection.fetchrow(
                    f"SELECT {_UPLOAD_COLUMNS} FROM imports.uploads WHERE {where}", account_id, table_id, upload_id
                )
        return None if row is None else _upload(row)

    async def cancel_reason(self, upload_id: int) -> str | None:
        """Why the upload was asked to stop, if it was."""
        reason: str | None = await self._pool.fetchval(
            "SELECT cancel_reason FROM imports.uploads WHERE id = $1", upload_id
        )
        return reason

    async def undisposed(self, bucket: str, limit: int = 500) -> list[Upload]:
        rows = await self._pool.fetch(
            f"SELECT {_UPLOAD_COLUMNS} FROM imports.uploads WHERE bucket = $1"
            " AND NOT disposed AND status IN ('processed', 'partially_processed', 'failed') ORDER BY id LIMIT $2",
            bucket,
            limit,
        )
        return [_upload(r) for r in rows]

    async def note_retry(self, upload_id: int, note: str) -> None:
        """Shows why an open upload waits, in its history entry's `error`; the outcome replaces it.

        The try that failed rolled back, so the rows it had counted are shown no more.
        """
        await self._pool.execute(
            "UPDATE imports.uploads SET error = $2, rows_total = 0, rows_ok = 0, rows_failed = 0, bytes_read = 0"
            " WHERE id = $1 AND status IN ('pending', 'processing')",
            upload_id,
            note,
        )

    async def note_progress(
        self, upload_id: int, rows_total: int, rows_ok: int, rows_failed: int, bytes_read: int
    ) -> None:
        """Shows how far an upload being imported has come, in its history entry's row and byte counts.

        An autocommitted statement of its own, apart from the file's transaction,
        that never waits: while another transaction holds the row (its outcome
        being written, a cancel request), this reading is skipped, and once the
        upload has finished its outcome's figures stay.
        """
        await self._pool.execute(
            "UPDATE imports.uploads SET rows_total = $2, rows_ok = $3, rows_failed = $4, bytes_read = $5"
            " WHERE id = (SELECT id FROM imports.uploads WHERE id = $1 AND status = 'processing'"
            " FOR UPDATE SKIP LOCKED)",
            upload_id,
            rows_total,
            rows_ok,
            rows_failed,
            bytes_read,
        )

    async def mark_disposed(self, upload_id: int) -> None:
        await self._pool.execute("UPDATE imports.uploads SET disposed = true WHERE id = $1", upload_id)


class TableQueue:
    """One table's open uploads, oldest first, for the importer holding its lock."""

    def __init__(self, connection: asyncpg.Connection, bucket: str, table_id: int) -> None:
        self._connection = connection
        self.bucket = bucket
        self.table_id = table_id

    async def next(self) -> Upload | None:
        """Claims the oldest open upload; one left `processing` by a dead importer comes first.

        Its row and byte counts start again from zero: those of a try cut short were rolled back with it.
        """
        row = await self._connection.fetchrow(
            "UPDATE imports.uploads SET status = 'processing', started_at = now(), attempts = attempts + 1,"
            " rows_total = 0, rows_ok = 0, rows_failed = 0, bytes_read = 0"
            " WHERE id = (SELECT id FROM imports.uploads WHERE bucket = $2 AND datasource_id = $1"
            " AND status IN ('pending', 'processing') ORDER BY id LIMIT 1)"
            f" RETURNING {_UPLOAD_COLUMNS}",
            self.table_id,
            self.bucket,
        )
        return None if row is None else _upload(row)

    async def finish(self, upload_id: int, outcome: Outcome) -> None:
        async with self._connection.transaction():
            await self._connection.execute("DELETE FROM imports.upload_errors WHERE upload_id = $1", upload_id)
            if outcome.errors:
                await self._connection.copy_records_to_table(
                    "upload_errors",
                    schema_name="imports",
                    columns=("upload_id", "seq", "row_number", "column_name", "value", "message"),
                    records=[
                        (upload_id, seq, e.row_number, e.field, e.value, e.message)
                        for seq, e in enumerate(outcome.errors, start=1)
                    ],
                )
            await self._connection.execute(
                "UPDATE imports.uploads SET status = $2, finished_at = now(), rows_total = $3, rows_ok = $4,"
                " rows_failed = $5, errors_kept = $6, error = $7, bytes_read = $8 WHERE id = $1",
                upload_id,
                outcome.status,
                outcome.rows_total,
                outcome.rows_ok,
                outcome.rows_failed,
                len(outcome.errors),
                outcome.error,
                outcome.bytes_read,
            )
