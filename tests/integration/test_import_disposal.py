"""What becomes of a file once imported: archived, deleted or kept, as configured."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time

import asyncpg
import httpx
import pytest

from services._runtime.s3 import ObjectStore
from services._runtime.settings import Settings
from services.wiring.keys import identity_signer
from services.wiring.parts import import_parts, remote_merger
from services.wiring.stores import upload_store
from tests.conftest import MakeAccount, RunningPlatform
from tests.integration.test_imports import make_table


@pytest.mark.parametrize("after", ["delete", "keep"])
async def test_processed_files_are_deleted_or_kept_as_configured(
    after: str,
    running: RunningPlatform,
    settings: Settings,
    pool: asyncpg.Pool,
    store: ObjectStore,
    http: httpx.AsyncClient,
    make_account: MakeAccount,
) -> None:
    s3 = dataclasses.replace(settings.s3, bucket=f"after-{after}-{secrets.token_hex(4)}")
    configured = dataclasses.replace(settings, s3=s3, imports=dataclasses.replace(settings.imports, after=after))
    async with upload_store(s3) as bucket:
        parts = import_parts(
            configured,
            pool,
            identity_signer(settings, allow_generated=False),
            bucket,
            schema_channel=running.channel,
            merger=remote_merger(running.channel, identity_signer(settings, allow_generated=False)),
        )
        worker = asyncio.create_task(parts.worker.run())
        try:
            table = await make_table(http, bucket, await make_account())
            await table.put("once.csv", "customerId,ltv\nc1,1\n")
            [upload] = await table.finished()
            assert upload["status"] == "processed"
            deadline = time.monotonic() + 10
            while True:
                disposed = await pool.fetchval("SELECT disposed FROM imports.uploads WHERE id = $1", upload["id"])
                if disposed:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            keys = [found.key async for found in bucket.list("")]
            if after == "delete":
                assert keys == []
            else:
                assert keys == [f"{table.s3_path}/once.csv"]
            # Seen again on every listing, a kept file is still one upload.
            await asyncio.sleep(0.6)
            assert len(await table.uploads()) == 1
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
