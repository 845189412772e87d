"""Several importers on one database share the files and never apply one twice."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services._runtime.s3 import ObjectStore
from services._runtime.settings import Settings
from services.wiring.keys import identity_signer
from services.wiring.parts import import_parts, remote_merger
from tests.conftest import MakeAccount, RunningPlatform
from tests.integration.test_imports import Table, make_table


@pytest.fixture
async def more_importers(
    running: RunningPlatform, settings: Settings, pool: asyncpg.Pool, store: ObjectStore
) -> AsyncIterator[None]:
    """Two more importer replicas beside the suite's own, each taking two tables at a time."""
    replica_settings = dataclasses.replace(settings, imports=dataclasses.replace(settings.imports, concurrency=2))
    signer = identity_signer(settings, allow_generated=False)
    workers = [
        asyncio.create_task(
            import_parts(
                replica_settings,
                pool,
                signer,
                store,
                schema_channel=running.channel,
                merger=remote_merger(running.channel, signer),
            ).worker.run()
        )
        for _ in range(2)
    ]
    try:
        yield
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


@pytest.mark.usefixtures("more_importers")
async def test_replicas_apply_every_file_exactly_once_and_in_order(
    http: httpx.AsyncClient, store: ObjectStore, make_account: MakeAccount, pool: asyncpg.Pool
) -> None:
    tables: list[Table] = []
    for _ in range(4):
        tables.append(await make_table(http, store, await make_account()))
    files = 5
    for step in range(files):
        for table in tables:
            rows = "".join(f"c{n},{step},t{table.id}s{step}\n" for n in range(200))
            await table.put(f"f{step}.csv", "customerId,ltv,name\n" + rows)
    for table in tables:
        uploads = await table.finished(files, within=60)
        assert [u["status"] for u in uploads] == ["processed"] * files
        assert [u["file_name"] for u in reversed(uploads)] == [f"f{step}.csv" for step in range(files)]
        # Each file finished before the next began: strictly in arrival order.
        ordered = list(reversed(uploads))
        assert all(a["finished_at"] <= b["started_at"] for a, b in itertools.pairwise(ordered))
        assert await table.profile("c7") == {"ltv": files - 1, "name": f"t{table.id}s{files - 1}"}
    attempts = await pool.fetch("SELECT id, attempts FROM imports.uploads")
    assert len(attempts) == files * len(tables)
    assert {row["attempts"] for row in attempts} == {1}
    applied = await pool.fetchval("SELECT count(*) FROM profiles.applied_batches")
    assert applied == files * len(tables)
