"""SQL for the profiles schema: attribute values keyed by attribute id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TypeVar

import asyncpg

from services._runtime.coalescing import Coalescer
from services._runtime.db import HeldConnections, MigrationSet
from services.domain.batches import Values

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

# A batch statement takes its operations as one JSON array, not as arrays of
# each column: PostgreSQL plans a statement whose arrays it can count anew for
# every batch (custom plans, their row estimates made from each batch's
# length), and that planning was a quarter of a batch's time in the database.
# The length of a JSON array is unknown to the planner whatever it holds, so
# after five runs PostgreSQL keeps one generic plan (index lookups per item,
# as the custom plans were) and plans no more.

# Single writes that arrive together: one statement, one commit. Keys are
# distinct (see Coalescer). New rows are stored stripped of nulls; an existing
# row is merged with the changes as sent, so their nulls clear its keys.
# $1: [[customer id, table id, changes], ...]
_MERGE_MANY = """
WITH changes AS (
    SELECT c.value->>0 AS customer_id, (c.value->>1)::bigint AS datasource_id, c.value->2 AS data
    FROM jsonb_array_elements($1::jsonb) AS c(value)
)
INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)
SELECT customer_id, datasource_id, jsonb_strip_nulls(data) FROM changes
ON CONFLICT (customer_id, datasource_id)
DO UPDATE SET data = jsonb_strip_nulls(p.data || (
    SELECT c.data FROM changes c WHERE c.customer_id = EXCLUDED.customer_id AND c.datasource_id = EXCLUDED.datasource_id
)), updated_at = now()
RETURNING datasource_id, customer_id, data
"""

# The consolidated reads of users asked about together, told apart by their position in the array.
# $1: [[Optimizely user id, DCP service id, Optimizely table id], ...]
_CONSOLIDATED_MANY = """
WITH wanted AS (
    SELECT w.value->>0 AS user_id, (w.value->>1)::bigint AS service_id, (w.value->>2)::bigint AS table_id, w.position
    FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS w(value, position)
)
SELECT w.position, l.datasource_id, l.customer_id, p.data, true AS linked
FROM wanted w
JOIN aliases.published_links l ON l.optimizely_user_id = w.user_id AND l.dcp_service_id = w.service_id
LEFT JOIN profiles.profiles p ON p.customer_id = l.customer_id AND p.datasource_id = l.datasource_id
UNION ALL
SELECT w.position, p.datasource_id, p.customer_id, p.data, false
FROM wanted w
JOIN profiles.profiles p ON p.customer_id = w.user_id AND p.datasource_id = w.table_id
"""

_GET = "SELECT data FROM profiles.profiles WHERE customer_id = $1 AND datasource_id = $2"

# A batch of writes waiting longer than this (one of its rows locked by an import's transaction, say)
# is run write by write instead, so only the writes to locked rows keep waiting.
WRITE_BATCH_BOUND_SECONDS = 0.5
# A batch of single reads or writes keeps gathering until this many turns of the event loop pass with no
# new arrival, and for at most GATHER_TURNS_AT_MOST turns. Over gRPC, calls reach their handlers a few turns
# apart: with 6 quiet turns and at most 32, gRPC writes went in batches of four or five and reads in fives
# on a fast machine, where 12 and 64 make batches of about ten and raise gRPC writes by a tenth and reads
# by a fifth (a statement's round trip shared by twice as many calls). REST calls arrive in bursts
# and fill their batches either way; a lone call waits 12 idle turns, tens of microseconds.
GATHER_QUIET_TURNS = 12
GATHER_TURNS_AT_MOST = 64

# A consolidated read takes several times a row's round trip. Unbounded, one batch took every
# waiting view and the views moved as one convoy: the database working while the process waited,
# then the other way round. Batches of at most 8, three in flight, keep both busy: measured,
# about a fifth more views a second, and a lower p99.
VIEW_BATCHES_IN_FLIGHT = 3
VIEW_BATCH_LIMIT = 8

Key = tuple[int, str]
"""(table id, customer id)"""
UserKey = tuple[int, int, str]
"""(DCP service id, Optimizely table id, Optimizely user id)"""
Consolidated = tuple[dict[int, str], dict[Key, Values]]
"""A user's links (table id → customer id) and the stored values of each linked profile and of their own."""
_Same = TypeVar("_Same")

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

# Most batches name each customer once; they skip the fold's sort.
_MERGE_STAGED_UNIQUE = """
INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)
SELECT customer_id, $1, data FROM pg_temp.profile_stage
ON CONFLICT (customer_id, datasource_id)
DO UPDATE SET data = jsonb_strip_nulls(p.data || EXCLUDED.data), updated_at = now()
"""

_STAGE_HAS_REPEATS = """
SELECT EXISTS (SELECT 1 FROM pg_temp.profile_stage GROUP BY customer_id HAVING count(*) > 1)
"""

_STRIP_STAGED_NULLS = """
UPDATE profiles.profiles AS p SET data = jsonb_strip_nulls(p.data)
FROM (SELECT DISTINCT customer_id FROM pg_temp.profile_stage WHERE jsonb_strip_nulls(data) <> data) AS s
WHERE p.customer_id = s.customer_id AND p.datasource_id = $1
"""

# A user's links with their profiles (left join: a link may have none yet),
# then the Optimizely table's own profile, whose customer id is the user's id.
_CONSOLIDATED = """
SELECT l.datasource_id, l.customer_id, p.data, true AS linked
FROM aliases.published_links l
LEFT JOIN profiles.profiles p ON p.customer_id = l.customer_id AND p.datasource_id = l.datasource_id
WHERE l.optimizely_user_id = $1 AND l.dcp_service_id = $2
UNION ALL
SELECT datasource_id, customer_id, data, false FROM profiles.profiles WHERE customer_id = $1 AND datasource_id = $3
"""


def _itself(key: _Same) -> _Same:
    return key


def _consolidated(rows: Sequence[asyncpg.Record]) -> Consolidated:
    links: dict[int, str] = {}
    stored: dict[Key, Values] = {}
    for row in rows:
        table_id, customer_id = row["datasource_id"], row["customer_id"]
        if row["linked"]:
            links[table_id] = customer_id
        if row["data"] is not None:
            stored[(table_id, customer_id)] = row["data"]
    return links, stored


def _key(change: tuple[Key, Values]) -> Key:
    return change[0]


class ProfilesRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # Statements run on the connection of the batch flusher they run in, else on the pool.
        self._batches = HeldConnections(pool)
        session = self._batches.session
        # Single reads and writes that arrive while others are in flight share a statement, and keep
        # gathering while more keep coming (see Coalescer). Views do not:
        # a view waiting for company is a view answered later (see VIEW_BATCH_LIMIT); measured, their
        # batches filled up and the view's p99 rose to 1.5 times the read's.
        self._reads: Coalescer[Key, Values | None] = Coalescer(
            _itself,
            self._get_each,
            self._get_one,
            gather_turns=GATHER_QUIET_TURNS,
            gather_turns_at_most=GATHER_TURNS_AT_MOST,
            session=session,
        )
        self._views: Coalescer[UserKey, Consolidated] = Coalescer(
            _itself,
            self._consolidated_each,
            self._consolidated_one,
            max_in_flight=VIEW_BATCHES_IN_FLIGHT,
            max_batch=VIEW_BATCH_LIMIT,
            session=session,
        )
        self._writes: Coalescer[tuple[Key, Values], Values] = Coalescer(
            _key,
            self._merge_each,
            self._merge_one,
            batch_timeout=WRITE_BATCH_BOUND_SECONDS,
            gather_turns=GATHER_QUIET_TURNS,
            gather_turns_at_most=GATHER_TURNS_AT_MOST,
            session=session,
        )

    async def get(self, table_id: int, customer_id: str) -> Values | None:
        return await self._reads((table_id, customer_id))

    async def _get_one(self, key: Key) -> Values | None:
        data: Values | None = await self._batches.executor.fetchval(_GET, key[1], key[0])
        return data

    async def _get_each(self, keys: Sequence[Key]) -> list[Values | None]:
        if len(keys) == 1:
            return [await self._get_one(keys[0])]
        found = await self.get_many(keys)
        return [found.get(key) for key in keys]

    async def get_many(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Values]:
        """Many (table, customer) profiles in one query."""
        if not keys:
            return {}
        wanted = set(keys)
        # Two ANY lists keep the plan a primary-key lookup per customer whatever
        # the planner guesses; pairs that were not asked for are dropped here.
        rows = await self._batches.executor.fetch(
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

    async def consolidated(self, service_id: int, optimizely_table_id: int, optimizely_user_id: str) -> Consolidated:
        """One user's alias links and every linked profile, with the Optimizely table's, in one query.

        Links come from the aliases service's published view, which it keeps
        for readers sharing its database: one round trip instead of two on the
        read behind every targeting decision.
        """
        return await self._views((service_id, optimizely_table_id, optimizely_user_id))

    async def _consolidated_one(self, user: UserKey) -> Consolidated:
        service_id, optimizely_table_id, optimizely_user_id = user
        rows = await self._batches.executor.fetch(_CONSOLIDATED, optimizely_user_id, service_id, optimizely_table_id)
        return _consolidated(rows)

    async def _consolidated_each(self, users: Sequence[UserKey]) -> list[Consolidated]:
        if len(users) == 1:
            return [await self._consolidated_one(users[0])]
        rows = await self._batches.executor.fetch(
            _CONSOLIDATED_MANY, [[user_id, service_id, table_id] for service_id, table_id, user_id in users]
        )
        by_user: list[list[asyncpg.Record]] = [[] for _ in users]
        for row in rows:
            by_user[row["position"] - 1].append(row)
        return [_consolidated(found) for found in by_user]

    async def merge(self, table_id: int, customer_id: str, changes: Values) -> Values:
        """The customer's values once `changes` are merged in (a null clears its key), committed."""
        return await self._writes(((table_id, customer_id), changes))

    async def _merge_one(self, change: tuple[Key, Values]) -> Values:
        (table_id, customer_id), changes = change
        data: Values = await self._batches.executor.fetchval(_MERGE, customer_id, table_id, changes)
        return data

    async def _merge_each(self, changes: Sequence[tuple[Key, Values]]) -> list[Values]:
        if len(changes) == 1:
            return [await self._merge_one(changes[0])]
        # In key order, so two statements that lock some of the same rows take them in the same order.
        ordered = sorted(changes, key=_key)
        rows = await self._batches.executor.fetch(
            _MERGE_MANY, [[customer_id, table_id, values] for (table_id, customer_id), values in ordered]
        )
        merged: dict[Key, Values] = {(row["datasource_id"], row["customer_id"]): row["data"] for row in rows}
        return [merged[key] for key, _ in changes]

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
            stage: StagedMerge | None = None
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
                if stage is not None:
                    await stage.abandon()
                await transaction.rollback()
                raise
            if stage.applied:
                await transaction.commit()
            else:
                await stage.abandon()
                await transaction.rollback()


class StagedMerge:
    """Rows staged in one transaction and merged into profiles as they come.

    Writing runs in a task of its own behind a short queue, so PostgreSQL
    ingests and merges one part of a batch while the caller validates the
    next; every MERGE_EVERY rows the stage is merged and emptied, in order, so
    a later row still wins. `apply()` merges the rest and records the key.
    """

    QUEUE_PARTS = 4
    MERGE_EVERY = 50_000

    def __init__(self, connection: asyncpg.Connection, table_id: int, key: str, *, already_applied: bool) -> None:
        self._connection = connection
        self._table_id = table_id
        self._key = key
        self.already_applied = already_applied
        self.applied = False
        self._has_clears = False
        self._staged = 0
        self._queue: asyncio.Queue[Sequence[tuple[int, str, Values]] | None] = asyncio.Queue(self.QUEUE_PARTS)
        self._writer: asyncio.Task[None] | None = None

    async def add(self, records: Sequence[tuple[int, str, Values]], *, clears: bool = False) -> None:
        """Stages (sequence, customer id, attribute id -> value) rows; None clears a value (say so with `clears`)."""
        if self.already_applied or not records:
            return
        self._has_clears = self._has_clears or clears
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        if self._writer.done():
            self._writer.result()  # a failed write surfaces here
        put = asyncio.ensure_future(self._queue.put(records))
        # Wait for room in the queue, unless the writer fails meanwhile: then its error is the answer.
        await asyncio.wait((put, self._writer), return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._writer.result()

    async def _write(self) -> None:
        while (records := await self._queue.get()) is not None:
            await self._connection.copy_records_to_table(
                "profile_stage", records=records, columns=("seq", "customer_id", "data"), schema_name="pg_temp"
            )
            self._staged += len(records)
            if self._staged >= self.MERGE_EVERY:
                await self._merge_staged()

    async def _merge_staged(self) -> None:
        repeats = await self._connection.fetchval(_STAGE_HAS_REPEATS)
        await self._connection.execute(_MERGE_STAGED if repeats else _MERGE_STAGED_UNIQUE, self._table_id)
        if self._has_clears:
            await self._connection.execute(_STRIP_STAGED_NULLS, self._table_id)
        await self._connection.execute("TRUNCATE pg_temp.profile_stage")
        self._staged = 0

    async def finish_writing(self) -> None:
        if self._writer is not None:
            if not self._writer.done():
                await self._queue.put(None)
            await self._writer

    async def abandon(self) -> None:
        """Stops the writer; the transaction is about to roll back."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    async def apply(self, rows_stored: int) -> None:
        """Merges what is still staged and records the idempotency key; the transaction then commits."""
        await self.finish_writing()
        if not self.already_applied and self._staged:
            await self._merge_staged()
        if self._key and not self.already_applied:
            await self._connection.execute(
                "INSERT INTO profiles.applied_batches (idempotency_key, datasource_id, rows_stored)"
                " VALUES ($1, $2, $3)",
                self._key,
                self._table_id,
                rows_stored,
            )
        self.applied = True
