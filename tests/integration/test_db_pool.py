"""The process pool hands out connections as clean as it got them, without a reset query each time."""

from __future__ import annotations

import asyncpg

from services._runtime.db import create_pool


async def test_a_connection_released_inside_a_transaction_comes_back_rolled_back(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as connection:
            await connection.execute("CREATE TABLE IF NOT EXISTS public.pool_probe (n int)")
            await connection.execute("TRUNCATE public.pool_probe")
        connection = await pool.acquire()
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("INSERT INTO public.pool_probe VALUES (1)")
        # Released without commit or rollback, as a cancelled request would leave it.
        await pool.release(connection)
        async with pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM public.pool_probe") == 0
            await again.execute("DROP TABLE public.pool_probe")
    finally:
        await pool.close()


async def test_jsonb_round_trips_through_the_pools_codecs(pool: asyncpg.Pool) -> None:
    value = {"name": "Zoë", "n": 9223372036854775807, "x": 1.5, "ok": True, "none": None}
    assert await pool.fetchval("SELECT $1::jsonb", value) == value
