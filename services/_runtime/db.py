"""The process's one asyncpg pool, and per-service SQL migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from services._runtime import logs, metrics, tracing
from services._runtime.interceptors import request_id
from services._runtime.settings import Settings

logger = logging.getLogger(__name__)

Pool = asyncpg.Pool


_JSONB_VERSION = b"\x01"


# orjson: profile reads and bulk merges spend much of their time here.
def _encode_jsonb(value: object) -> bytes:
    return _JSONB_VERSION + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> object:
    return orjson.loads(data[1:])


# Slower statements are logged as warnings (every statement is at DEBUG), with the request they ran for.
SLOW_QUERY_SECONDS = 1.0
_LOGGED_QUERY_CHARS = 300


def _observe_query(record: Any) -> None:
    """asyncpg's query logger: it runs just after each statement, in a copy of the
    caller's context, so the request id and the current span are the caller's.

    Statements carry no request id themselves (a comment in the text would defeat
    asyncpg's statement cache), so the id reaches the database side through these
    log lines and the statement's span.
    """
    tracing.query_span(record, request_id.get())
    error = record.exception
    slow = record.elapsed >= SLOW_QUERY_SECONDS
    if error is None and not slow and not logger.isEnabledFor(logging.DEBUG):
        return
    # The text only: values may be personal data and never reach the logs.
    query = " ".join(record.query.split())
    if len(query) > _LOGGED_QUERY_CHARS:
        query = query[: _LOGGED_QUERY_CHARS - 1] + "…"
    if error is None:
        if slow:
            logger.warning("slow query (%.3f s): %s", record.elapsed, query)
        else:
            logger.debug("query (%.3f s): %s", record.elapsed, query)
    elif isinstance(error, asyncpg.PostgresError):
        # Often expected (a unique violation is a 409): the caller decides whether it is a fault.
        logger.info(
            "query failed with %s (SQLSTATE %s) after %.3f s: %s",
            type(error).__name__,
            error.sqlstate,
            record.elapsed,
            query,
        )
    elif isinstance(error, asyncio.CancelledError):
        logger.info("query cancelled after %.3f s: %s", record.elapsed, query)
    else:
        logger.warning("query failed with %s after %.3f s: %s", type(error).__name__, record.elapsed, query)


async def init_connection(connection: asyncpg.Connection) -> None:
    connection.add_query_logger(_observe_query)
    # Binary codecs, because COPY (bulk merges) only speaks the binary format.
    await connection.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await connection.set_type_codec(
        "json",
        encoder=orjson.dumps,
        decoder=orjson.loads,
        schema="pg_catalog",
        format="binary",
    )


async def _reset_when_needed(connection: asyncpg.Connection) -> None:
    # asyncpg's default reset sends a query on every release, which doubles the
    # round trips of a one-query request. No code here leaves session state on a
    # connection (session advisory locks are released where they are taken, or
    # the connection is closed), so only an unfinished transaction needs undoing.
    if connection.is_in_transaction():
        await connection.reset()


@dataclass(frozen=True)
class PoolTimeouts:
    """Bounds on every wait for the database, so an unreachable one fails a request
    within seconds (503) instead of holding it; see the `db_*_timeout_seconds` settings."""

    connect: float = 5.0
    acquire: float = 10.0
    statement: float = 60.0
    command: float = 65.0

    @classmethod
    def of(cls, settings: Settings) -> PoolTimeouts:
        return cls(
            connect=settings.db_connect_timeout_seconds,
            acquire=settings.db_acquire_timeout_seconds,
            statement=settings.db_statement_timeout_seconds,
            command=settings.db_command_timeout_seconds,
        )


class DcpPool(asyncpg.Pool):  # type: ignore[misc]
    """asyncpg's pool, whose every acquire (also those inside `pool.fetch` and the
    like) gives up after the acquire timeout unless the caller names another,
    with a connection of its own for health checks."""

    def __init__(self, dsn: str, *, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._dcp_dsn = dsn
        self._dcp_acquire_timeout = acquire_timeout
        self._dcp_probe: asyncpg.Connection | None = None
        # Every server watching this pool checks through the one connection, one check at a time.
        self._dcp_probe_turn = asyncio.Lock()

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self._dcp_acquire_timeout if timeout is None else timeout)

    async def probe(self) -> None:
        """Runs `SELECT 1` on the health check's own connection, opened as needed.

        Outside the pool: a pool busy with requests and imports is not a database
        that cannot be reached, and a check must not wait for a free connection.
        """
        async with self._dcp_probe_turn:
            connection = self._dcp_probe
            if connection is None or connection.is_closed():
                connection = self._dcp_probe = await asyncpg.connect(self._dcp_dsn)
            try:
                await connection.fetchval("SELECT 1")
            except BaseException:
                self._dcp_probe = None
                connection.terminate()
                raise

    async def close(self) -> None:
        probe, self._dcp_probe = self._dcp_probe, None
        if probe is not None:
            probe.terminate()
        await super().close()


async def create_pool(dsn: str, *, min_size: int, max_size: int, timeouts: PoolTimeouts | None = None) -> asyncpg.Pool:
    """One pool per process; JSON columns arrive as Python values, and its sizes are in `/metrics`."""
    bounds = timeouts or PoolTimeouts()
    # While the database is down the pool retries its minimum connections every
    # second, each time with a traceback.
    logs.quiet_repeats("asyncpg.pool")
    server_settings = {}
    if bounds.statement > 0:
        server_settings["statement_timeout"] = str(max(1, round(bounds.statement * 1000)))
    pool = await DcpPool(
        dsn,
        acquire_timeout=bounds.acquire,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=init_connection,
        reset=_reset_when_needed,
        timeout=bounds.connect,
        command_timeout=bounds.command,
        server_settings=server_settings,
    )
    assert pool is not None
    metrics.watch_pool(pool)
    return pool


_HELD: ContextVar[tuple[asyncpg.Pool, asyncpg.Connection, asyncio.Task[Any] | None] | None] = ContextVar(
    "held_connection", default=None
)


class HeldConnections:
    """Pool connections that batch flushers keep across the batches they run back to back.

    `session` is a Coalescer's session: it checks a connection out of the pool
    for the flusher that opens it, and `executor` is then that connection in
    the flusher's own task, and the pool everywhere else: in other flushers,
    and in tasks started from the flusher (operations of a failed batch, run
    alone and at once), which would otherwise share its connection.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with self._pool.acquire() as connection:
            token = _HELD.set((self._pool, connection, asyncio.current_task()))
            try:
                yield
            finally:
                _HELD.reset(token)

    @property
    def executor(self) -> asyncpg.Pool | asyncpg.Connection:
        held = _HELD.get()
        if held is not None and held[0] is self._pool and held[2] is asyncio.current_task():
            return held[1]
        return self._pool


async def release_session_lock(connection: asyncpg.Connection, unlock: str, *args: object) -> None:
    """Runs `unlock`; should it not complete, the connection is closed rather than pooled with the lock held."""
    try:
        await connection.execute(unlock, *args)
    except BaseException:
        connection.terminate()
        raise


_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class MigrationSet:
    """A service's own PostgreSQL schema and the SQL files that build it."""

    schema: str
    directory: Path

    def files(self) -> list[Path]:
        found = sorted(p for p in self.directory.glob("*.sql") if _MIGRATION_NAME.match(p.name))
        unexpected = [p.name for p in self.directory.glob("*.sql") if not _MIGRATION_NAME.match(p.name)]
        if unexpected:
            raise ValueError(f"migration files must be named NNNN_name.sql: {unexpected}")
        return found


async def migrate(pool: asyncpg.Pool, migrations: MigrationSet) -> list[str]:
    """Applies the set's pending files in order, each in its own transaction.

    An advisory lock keyed by the schema name serialises replicas starting at
    once, so each file runs exactly once. Returns the names applied now.
    """
    applied_now: list[str] = []
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock(hashtext($1))", f"dcp-migrate:{migrations.schema}")
        try:
            await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{migrations.schema}"')
            await connection.execute(
                f'CREATE TABLE IF NOT EXISTS "{migrations.schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await connection.fetch(f'SELECT version FROM "{migrations.schema}".schema_migrations')
            done = {row["version"] for row in rows}
            for path in migrations.files():
                if path.name in done:
                    continue
                async with connection.transaction():
                    await connection.execute(f'SET LOCAL search_path TO "{migrations.schema}", public')
                    await connection.execute(path.read_text())
                    await connection.execute(
                        f'INSERT INTO "{migrations.schema}".schema_migrations (version) VALUES ($1)', path.name
                    )
                logger.info("applied migration %s/%s", migrations.schema, path.name)
                applied_now.append(path.name)
        finally:
            await release_session_lock(
                connection, "SELECT pg_advisory_unlock(hashtext($1))", f"dcp-migrate:{migrations.schema}"
            )
    return applied_now
