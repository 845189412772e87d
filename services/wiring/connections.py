"""The long-lived clients a process opens once: its database pool (and the schemas it migrates), channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg
import grpc

from services._runtime import tracing
from services._runtime.db import MigrationSet, PoolTimeouts, create_pool, migrate
from services._runtime.settings import Settings
from services.aliases import repository as aliases_repository
from services.imports import repository as imports_repository
from services.profiles import repository as profiles_repository
from services.schema import repository as schema_repository

ALL_MIGRATIONS: tuple[MigrationSet, ...] = (
    schema_repository.MIGRATIONS,
    profiles_repository.MIGRATIONS,
    aliases_repository.MIGRATIONS,
    imports_repository.MIGRATIONS,
)


async def migrate_all(pool: asyncpg.Pool, migrations: Sequence[MigrationSet] = ALL_MIGRATIONS) -> list[str]:
    applied: list[str] = []
    for migration_set in migrations:
        applied.extend(f"{migration_set.schema}/{name}" for name in await migrate(pool, migration_set))
    return applied


@contextlib.asynccontextmanager
async def opened_pool(url: str, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(
        url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeouts=PoolTimeouts.of(settings),
    )
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=settings.shutdown_grace_seconds)


@contextlib.asynccontextmanager
async def grpc_channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a service's replicas.

    Round robin over every address the target resolves to (a headless
    Kubernetes Service's pods, or a list such as "ipv4:10.0.0.1:50051,10.0.0.2:50051"):
    gRPC keeps connections open, so the default policy (the first address that
    answers) would pin every call to one replica however many run.
    """
    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.lb_policy_name", "round_robin")], interceptors=tracing.client_interceptors()
    )
    try:
        yield channel
    finally:
        await channel.close(grace=None)
