"""SQL for exports: their records, and reading a table's profiles at PostgreSQL's own COPY speed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

# The export runner's advisory locks: (namespace, export id), so a crashed
# replica's export is taken over by exactly one other.
_LOCK_NAMESPACE = 0x45585054  # "EXPT"
_COLUMNS = (
    "id, account_id, dcp_service_id, datasource_id, audience_id, format, status, bucket, key,"
    " row_count, size_bytes, error, created, finished"
)


ExportParent = Literal["service", "table", "audience"]
"""What exports are listed of: a DCP service (all of its exports), a table or an audience."""
_PARENT_COLUMNS: dict[ExportParent, str] = {
    "service": "dcp_service_id",
    "table": "datasource_id",
    "audience": "audience_id",
}


@dataclass(frozen=True)
class ExportRecord:
    id: int
    account_id: int
    dcp_service_id: int
    datasource_id: int | None
    audience_id: int | None
    format: str
    status: str
    bucket: str
    key: str
    row_count: int
    size_bytes: int
    error: str | None
    created: datetime
    finished: datetime | None


def _record(row: asyncpg.Record) -> ExportRecord:
    return ExportRecord(**dict(row))


class ExportsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        account_id: int,
        service_id: int,
        *,
        datasource_id: int | None,
        audience_id: int | None,
        export_format: str,
        bucket: str,
        key_of: Callable[[int], str],
    ) -> ExportRecord:
        """A pending export; its key names its id, so it is set in the same transaction."""
        async with self._pool.acquire() as connection, connection.transaction():
            export_id: int = await connection.fetchval(
                "INSERT INTO profiles.exports (account_id, dcp_service_id, datasource_id, audience_id, format,"
                " bucket, key) VALUES ($1, $2, $3, $4, $5, $6, '') RETURNING id",
                account_id,
                service_id,
                datasource_id,
                audience_id,
                export_format,
                bucket,
            )
            row = await connection.fetchrow(
                f"UPDATE profiles.exports SET key = $2 WHERE id = $1 RETURNING {_COLUMNS}", export_id, key_of(export_id)
            )
        return _record(row)

    async def get(self, account_id: int, export_id: int) -> ExportRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM profiles.exports WHERE account_id = $1 AND id = $2", account_id, export_id
        )
        return _record(row) if row else None

    async def history(
        self, account_id: int, parent: ExportParent, parent_id: int, *, before_id: int | None, limit: int
    ) -> list[ExportRecord]:
        """Up to `limit` exports of the parent, newest first, older than `before_id` when it is given."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM profiles.exports WHERE account_id = $1 AND {_PARENT_COLUMNS[parent]} = $2"
            " AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
            account_id,
            parent_id,
            before_id,
            limit,
        )
        return [_record(row) for row in rows]

    async def unfinished(self) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT id FROM profiles.exports WHERE status IN ('pending', 'running') ORDER BY id"
        )
        return [row["id"] for row in rows]

    async def claim(self, connection: asyncpg.Connection, export_id: int) -> ExportRecord | None:
        """The export, if unfinished and held by no other runner; the lock lasts as long as `connection`'s session."""
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_NAMESPACE, export_id):
            return None
        # A run taken over starts from the beginning, and so do its figures.
        row = await connection.fetchrow(
            "UPDATE profiles.exports SET status = 'running', started = now(), attempts = attempts + 1,"
            " row_count = 0, size_bytes = 0"
            f" WHERE id = $1 AND status IN ('pending', 'running') RETURNING {_COLUMNS}",
            export_id,
        )
        if row is None:
            await connection.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_NAMESPACE, export_id)
            return None
        return _record(row)

    async def release(self, connection: asyncpg.Connection, export_id: int) -> None:
        await connection.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_NAMESPACE, export_id)

    async def note_progress(self, export_id: int, *, row_count: int, size_bytes: int) -> None:
        """Shows how far a running export has come, in its record's figures.

        An autocommitted statement of its own, never part of the snapshot the
        export reads, so every reader sees the figures at once; once the export
        has ended, its final figures stay.
        """
        await self._pool.execute(
            "UPDATE profiles.exports SET row_count = $2, size_bytes = $3 WHERE id = $1 AND status = 'running'",
            export_id,
            row_count,
            size_bytes,
        )

    async def finish(self, export_id: int, *, row_count: int, size_bytes: int) -> None:
        await self._pool.execute(
            "UPDATE profiles.exports SET status = 'done', row_count = $2, size_bytes = $3, finished = now(),"
            " error = NULL WHERE id = $1",
            export_id,
            row_count,
            size_bytes,
        )

    async def fail(self, export_id: int, error: str) -> None:
        await self._pool.execute(
            "UPDATE profiles.exports SET status = 'failed', error = $2, finished = now() WHERE id = $1",
            export_id,
            error,
        )

    def copy_progress(self) -> CopyProgress:
        """A watch on the rows a `copy_table` given it has sent so far."""
        return CopyProgress(self._pool)

    async def copy_table(
        self,
        table_id: int,
        keys: Sequence[str],
        *,
        export_format: str,
        names: Sequence[str],
        output: Callable[[bytes], Awaitable[None]],
        progress: CopyProgress | None = None,
    ) -> int:
        """Streams a table's profiles through COPY, one statement and so one snapshot; returns the row count.

        While it runs, `progress` can tell how many rows it has sent so far.

        CSV: customer id then each attribute's value as text, every present
        value quoted and a missing one left empty, which is exactly what the
        importer reads back. JSON Lines: PostgreSQL builds each line; the CSV
        framing with quote and delimiter bytes that JSON text never holds raw
        (it escapes control characters) passes each line through untouched.
        """
        # Profiles holding only archived attributes' values have nothing to export, as reads show nothing.
        where = "p.datasource_id = $1 AND p.data ?| $2::text[]"
        arguments: list[object] = [table_id, list(keys)]
        if export_format == "csv":
            cells = "".join(f", p.data ->> ${i + 3}" for i in range(len(keys)))
            query = f"SELECT p.customer_id{cells} FROM profiles.profiles p WHERE {where}"
            arguments.extend(keys)
            options: dict[str, object] = {"format": "csv", "force_quote": True}
        else:
            # A function takes at most 100 arguments, so the object is built 50 pairs at a time.
            objects = " || ".join(
                "jsonb_build_object("
                + ", ".join(f"${2 * i + 3}::text, p.data -> ${2 * i + 4}::text" for i in range(start, end))
                + ")"
                for start, end in _spans(len(keys), _PAIRS_PER_CALL)
            )
            query = (
                "SELECT jsonb_build_object('customerId', p.customer_id, 'data',"
                f" jsonb_strip_nulls({objects or 'jsonb_build_object()'}))::text"
                f" FROM profiles.profiles p WHERE {where}"
            )
            for name, key in zip(names, keys, strict=True):
                arguments.extend((name, key))
            options = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
        async with self._pool.acquire() as connection:
            if progress is not None:
                progress.backend = connection.get_server_pid()
            try:
                status: str = await connection.copy_from_query(query, *arguments, output=output, **options)
            finally:
                # Forgotten before the connection goes back to the pool, where its next COPY would be another's.
                if progress is not None:
                    progress.backend = None
        return int(status.rsplit(maxsplit=1)[-1])

    async def table_rows(
        self, table_id: int, keys: Sequence[str], *, batch_rows: int
    ) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
        """A table's profiles that hold any of `keys`, as (customer id, values) in batches, in one snapshot.

        For tables too wide for `copy_table`: one column per attribute would pass
        PostgreSQL's limit of 1,664 columns in a row (and 32,767 bind parameters).
        """
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await connection.cursor(
                "SELECT p.customer_id, p.data FROM profiles.profiles p"
                " WHERE p.datasource_id = $1 AND p.data ?| $2::text[]",
                table_id,
                list(keys),
            )
            while batch := await cursor.fetch(batch_rows):
                yield [(row[0], row[1]) for row in batch]


class CopyProgress:
    """How many rows a running `copy_table` has sent so far, asked of PostgreSQL (14 or later).

    The server counts the rows as it sends them; the bytes could tell them only
    by parsing them, as a quoted value may hold a line break.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._counted = True
        self.backend: int | None = None
        """The server process running the COPY, while it runs."""

    async def rows(self) -> int | None:
        """Rows sent so far, or None when no COPY runs or the server does not count them."""
        backend = self.backend
        if backend is None or not self._counted:
            return None
        try:
            sent: int | None = await self._pool.fetchval(
                "SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = $1", backend
            )
        except asyncpg.UndefinedTableError:
            # PostgreSQL before 14: the rows show when the export ends.
            self._counted = False
            return None
        # Once this COPY has ended its connection may run another's, whose count the answer could be.
        return sent if self.backend == backend else None


# Columns one COPY of a table may select (PostgreSQL allows 1,664); wider tables go through `table_rows`.
COPY_MAX_COLUMNS = 1000
_PAIRS_PER_CALL = 50


def _spans(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]
