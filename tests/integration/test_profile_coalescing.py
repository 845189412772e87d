"""Single profile reads and writes that arrive together share statements, in a real PostgreSQL,
and each caller still gets exactly what a statement of its own would have given it."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from services._runtime.db import HeldConnections
from services.profiles import repository as profiles_repository
from services.profiles.repository import ProfilesRepository

TABLE = 9_001


async def _stored(pool: asyncpg.Pool, customer_id: str) -> object:
    return await pool.fetchval(
        "SELECT data FROM profiles.profiles WHERE customer_id = $1 AND datasource_id = $2", customer_id, TABLE
    )


async def test_writes_arriving_together_are_each_merged_and_answered_with_their_own_profile(
    pool: asyncpg.Pool,
) -> None:
    repository = ProfilesRepository(pool)
    await repository.merge(TABLE, "old", {"1": 1, "2": "keep", "3": True})
    # Many customers at once, one of them existing: a new row drops its nulls, an old one is cleared by them.
    answers = await asyncio.gather(
        repository.merge(TABLE, "old", {"1": 2, "3": None}),
        *(repository.merge(TABLE, f"new-{n}", {"1": n, "9": None}) for n in range(40)),
    )
    assert answers[0] == {"1": 2, "2": "keep"}
    assert answers[1:] == [{"1": n} for n in range(40)]
    assert await _stored(pool, "old") == {"1": 2, "2": "keep"}
    for n in (0, 17, 39):
        assert await _stored(pool, f"new-{n}") == {"1": n}


async def test_writes_to_one_customer_apply_in_the_order_they_arrived(pool: asyncpg.Pool) -> None:
    repository = ProfilesRepository(pool)
    writes = [repository.merge(TABLE, "same", {"n": n, f"k{n}": n}) for n in range(30)]
    answers = await asyncio.gather(*writes)
    # Each answer shows every earlier write and none of the later ones.
    for n, answer in enumerate(answers):
        assert answer["n"] == n
        assert {key for key in answer if key.startswith("k")} == {f"k{m}" for m in range(n + 1)}
    assert (await _stored(pool, "same"))["n"] == 29  # type: ignore[index]


async def test_reads_arriving_together_each_get_their_own_customer(pool: asyncpg.Pool) -> None:
    repository = ProfilesRepository(pool)
    await asyncio.gather(*(repository.merge(TABLE, f"c{n}", {"n": n}) for n in range(20)))
    await repository.merge(TABLE + 1, "c3", {"other": "table"})
    found = await asyncio.gather(
        *(repository.get(TABLE, f"c{n}") for n in range(20)),
        repository.get(TABLE, "nobody"),
        repository.get(TABLE + 1, "c3"),
        repository.get(TABLE + 1, "c4"),
    )
    assert found == [*({"n": n} for n in range(20)), None, {"other": "table"}, None]


async def test_a_locked_row_holds_up_only_the_writes_to_it(pool: asyncpg.Pool) -> None:
    repository = ProfilesRepository(pool)
    await asyncio.gather(*(repository.merge(TABLE, f"c{n}", {"n": n}) for n in range(5)))
    async with pool.acquire() as connection:
        # As an import's transaction holds the rows it is merging.
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute(
            "SELECT 1 FROM profiles.profiles WHERE customer_id = 'c0' AND datasource_id = $1 FOR UPDATE", TABLE
        )
        locked = asyncio.create_task(repository.merge(TABLE, "c0", {"n": "after the lock"}))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        others = await asyncio.wait_for(
            asyncio.gather(*(repository.merge(TABLE, f"c{n}", {"n": -n}) for n in range(1, 5))), timeout=10
        )
        waited = time.monotonic() - started
        assert others == [{"n": -n} for n in range(1, 5)]
        assert waited < profiles_repository.WRITE_BATCH_BOUND_SECONDS + 1.0
        assert not locked.done()
        await transaction.rollback()
    assert await asyncio.wait_for(locked, timeout=10) == {"n": "after the lock"}


async def test_a_caller_that_stops_waiting_takes_no_other_write_with_it(pool: asyncpg.Pool) -> None:
    repository = ProfilesRepository(pool)
    writes = [asyncio.create_task(repository.merge(TABLE, f"c{n}", {"n": n})) for n in range(10)]
    await asyncio.sleep(0)
    writes[3].cancel()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [{"n": n} for n in range(10) if n != 3]


@pytest.mark.parametrize("bad_index", [0, 7])
async def test_a_write_the_database_refuses_fails_alone(pool: asyncpg.Pool, bad_index: int) -> None:
    repository = ProfilesRepository(pool)
    # A NUL cannot be stored in jsonb: PostgreSQL refuses the statement that carries it.
    changes = [{"n": n} if n != bad_index else {"n": "bad\u0000"} for n in range(10)]
    results = await asyncio.gather(
        *(repository.merge(TABLE, f"c{n}", change) for n, change in enumerate(changes)), return_exceptions=True
    )
    assert isinstance(results[bad_index], asyncpg.PostgresError)
    assert [r for i, r in enumerate(results) if i != bad_index] == [{"n": n} for n in range(10) if n != bad_index]
    assert await _stored(pool, f"c{bad_index}") is None


async def test_a_held_connection_serves_only_the_task_that_holds_it(pool: asyncpg.Pool) -> None:
    held = HeldConnections(pool)
    assert held.executor is pool
    async with held.session():
        connection = held.executor
        assert connection is not pool
        assert await connection.fetchval("SELECT 1") == 1

        # A task started here (an operation of a failed batch, run alone) shares the context, not the connection.
        async def executor_seen() -> object:
            return held.executor

        assert await asyncio.create_task(executor_seen()) is pool
        assert held.executor is connection
    assert held.executor is pool
