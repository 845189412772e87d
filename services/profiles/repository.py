"""SQL for the profiles schema: attribute values keyed by attribute id."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from services._runtime.db import MigrationSet

SCHEMA = "profiles"
MIGRATIONS = MigrationSet(schema=SCHEMA, directory=Path(__file__).parent / "migrations")

# `||` overwrites the named keys and keeps the rest; a JSON null marks a key
# to clear, which jsonb_strip_nulls then removes. The update reads the
# parameter, not EXCLUDED, because the inserted row has its nulls stripped.
_MERGE = """
INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)
VALUES ($1, $2, jsonb_strip_nulls($3::jsonb))
ON CONFLICT (customer_id, datasource_id)
DO UPDATE SET data = jsonb_strip_nulls(p.data || $3::jsonb), updated_at = now()
RETURNING data
"""

# A batch folds each customer's staged rows in order; the fold keeps a row's
# clears (JSON nulls) so they reach the update, and new rows that carried some
# are stripped afterwards.
_MERGE_STAGED = """
INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)
SELECT customer_id, $1, profiles.jsonb_merge_agg(data ORDER BY seq)
FROM pg_temp.profile_stage GROUP BY customer_id
ON CONFLICT (customer_id, datasource_id)
DO UPDATE SET data = jsonb_strip_nulls(p.data || EXCLUDED.data), updated_at = now()
"""

_STRIP_STAGED_NULLS = """
UPDATE profiles.profiles AS p SET data = jsonb_strip_nulls(p.data)
FROM (SELECT DISTINCT customer_id FROM pg_temp.profile_stage WHERE jsonb_strip_nulls(data) <> data) AS s
WHERE p.customer_id = s.customer_id AND p.datasource_id = $1
"""

Values = dict[str, Any]


class ProfilesRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, table_id: int, customer_id: str) -> Values | None:
        data: Values | None = await self._pool.fetchval(
            "SELECT data FROM profiles.profiles WHERE customer_id = $1 AND datasource_id = $2", customer_id, table_id
        )
        return data

    async def get_many(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Values]:
        """Many (table, customer) profiles in one query."""
        if not keys:
            return {}
        wanted = set(keys)
        # Two ANY lists keep the plan a primary-key lookup per customer whatever
        # the planner guesses; pairs that were not asked for are dropped here.
        rows = await self._pool.fetch(
            "SELECT datasource_id, customer_id, data FROM profiles.profiles"
            " WHERE customer_id = ANY($1::text[]) AND datasource_id = ANY($2::bigint[])",
            list({customer_id for _, customer_id in keys}),
            list({table_id for table_id, _ in keys}),
        )
        return {
            (row["datasource_id"], row["customer_id"]): row["data"]
            for row in rows
            if (row["datasource_id"], row["customer_id"]) in wanted
        }

    async def merge(self, table_id: int, customer_id: str, changes: Values) -> Values:
        data: Values = await self._pool.fetchval(_MERGE, customer_id, table_id, changes)
        return data

    async def delete(self, table_id: int, customer_id: str) -> None:
        await self._pool.execute(
            "DELETE FROM profiles.profiles WHERE customer_id = $1 AND datasource_id = $2", customer_id, table_id
        )

    @contextlib.asynccontextmanager
    async def staged_merge(self, table_id: int, idempotency_key: str = "") -> AsyncIterator[StagedMerge]:
        """A transaction that stages rows as they come and merges them at once.

        Leaving the block without `apply()`, or with an exception, stores nothing.
        """
        async with self._pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                already = False
                if idempotency_key:
                    # Two deliveries of one batch wait for each other, so exactly one applies it.
                    await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", idempotency_key)
                    already = bool(
                        await connection.fetchval(
                            "SELECT true FROM profiles.applied_batches WHERE idempotency_key = $1", idempotency_key
                        )
                    )
                if not already:
                    await connection.execute(
                        "CREATE TEMP TABLE IF NOT EXISTS profile_stage (seq bigint, customer_id text, data jsonb)"
                        " ON COMMIT DELETE ROWS"
                    )
                stage = StagedMerge(connection, table_id, idempotency_key, already_applied=already)
                yield stage
            except BaseException:
                await transaction.rollback()
                raise
            if stage.applied:
                await transaction.commit()
            else:
                await transaction.rollback()


class StagedMerge:
    """Rows staged in one transaction, merged into profiles by `apply()`."""

    def __init__(self, connection: asyncpg.Connection, table_id: int, key: str, *, already_applied: bool) -> None:
        self._connection = connection
        self._table_id = table_id
        self._key = key
        self.already_applied = already_applied
        self.applied = False
        self._has_clears = False
        self._staged = 0

    async def add(self, records: Sequence[tuple[int, str, Values]]) -> None:
        """Stages (sequence, customer id, attribute id -> value) rows; None clears a value."""
        if self.already_applied or not records:
            return
        if not self._has_clears:
            self._has_clears = any(value is None for _, _, data in records for value in data.values())
        await self._connection.copy_records_to_table(
            "profile_stage", records=records, columns=("seq", "customer_id", "data"), schema_name="pg_temp"
        )
        self._staged += len(records)

    async def apply(self, rows_stored: int) -> None:
        """Merges everything staged and records the idempotency key; the transaction then commits."""
        if not self.already_applied and self._staged:
            await self._connection.execute(_MERGE_STAGED, self._table_id)
            if self._has_clears:
                await self._connection.execute(_STRIP_STAGED_NULLS, self._table_id)
        if self._key and not self.already_applied:
            await self._connection.execute(
                "INSERT INTO profiles.applied_batches (idempotency_key, datasource_id, rows_stored)"
                " VALUES ($1, $2, $3)",
                self._key,
                self._table_id,
                rows_stored,
            )
        self.applied = True
