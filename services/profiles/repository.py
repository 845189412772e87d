"""SQL for the profiles schema: attribute values keyed by attribute id."""

from __future__ import annotations

from collections.abc import Sequence
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

# A batch row's clears must reach the update, so rows go in with their nulls
# and the few new rows that carried some are stripped afterwards.
_MERGE_STAGED = """
INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)
SELECT customer_id, $1, data FROM pg_temp.profile_batch
ON CONFLICT (customer_id, datasource_id)
DO UPDATE SET data = jsonb_strip_nulls(p.data || EXCLUDED.data), updated_at = now()
"""

_STRIP_STAGED_NULLS = """
UPDATE profiles.profiles AS p SET data = jsonb_strip_nulls(p.data)
FROM pg_temp.profile_batch AS b
WHERE p.customer_id = b.customer_id AND p.datasource_id = $1 AND jsonb_strip_nulls(b.data) <> b.data
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

    async def merge_batch(self, table_id: int, rows: Sequence[tuple[str, Values]]) -> int:
        """Merges folded rows (one per customer) in one transaction, via COPY."""
        if not rows:
            return 0
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "CREATE TEMP TABLE IF NOT EXISTS profile_batch (customer_id text, data jsonb) ON COMMIT DELETE ROWS"
            )
            await connection.copy_records_to_table("profile_batch", records=rows, schema_name="pg_temp")
            await connection.execute(_MERGE_STAGED, table_id)
            if any(value is None for _, data in rows for value in data.values()):
                await connection.execute(_STRIP_STAGED_NULLS, table_id)
        return len(rows)
