"""SQL for the aliases schema: links between customer ids and Optimizely users."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from services._runtime.db import MigrationSet

SCHEMA = "aliases"
MIGRATIONS = MigrationSet(schema=SCHEMA, directory=Path(__file__).parent / "migrations")


class AliasesRepository:
    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db: Any = executor

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AliasesRepository]:
        async with self._db.acquire() as connection, connection.transaction():
            yield AliasesRepository(connection)

    async def links_of(self, service_id: int, optimizely_user_id: str) -> dict[int, str]:
        rows = await self._db.fetch(
            "SELECT datasource_id, customer_id FROM aliases.links"
            " WHERE optimizely_user_id = $1 AND dcp_service_id = $2",
            optimizely_user_id,
            service_id,
        )
        return {row["datasource_id"]: row["customer_id"] for row in rows}

    async def lock_customer(self, table_id: int, customer_id: str) -> None:
        """Serialises links to one customer id until the transaction ends, so the cap holds."""
        await self._db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", customer_id, table_id)

    async def count_other_users(self, table_id: int, customer_id: str, optimizely_user_id: str) -> int:
        count: int = await self._db.fetchval(
            "SELECT count(*) FROM aliases.links"
            " WHERE datasource_id = $1 AND customer_id = $2 AND optimizely_user_id <> $3",
            table_id,
            customer_id,
            optimizely_user_id,
        )
        return count

    async def upsert(self, service_id: int, optimizely_user_id: str, links: Mapping[int, str]) -> None:
        await self._db.executemany(
            "INSERT INTO aliases.links (optimizely_user_id, dcp_service_id, datasource_id, customer_id)"
            " VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (optimizely_user_id, dcp_service_id, datasource_id) DO UPDATE"
            " SET customer_id = EXCLUDED.customer_id, last_modified = now()"
            " WHERE aliases.links.customer_id <> EXCLUDED.customer_id",
            [(optimizely_user_id, service_id, table_id, customer_id) for table_id, customer_id in links.items()],
        )

    async def delete(self, service_id: int, optimizely_user_id: str, table_id: int) -> None:
        await self._db.execute(
            "DELETE FROM aliases.links WHERE optimizely_user_id = $1 AND dcp_service_id = $2 AND datasource_id = $3",
            optimizely_user_id,
            service_id,
            table_id,
        )
