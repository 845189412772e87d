"""The imports service running on its own, as `dcp serve imports` runs it."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest

from dcp.imports.v1 import imports_service_pb2 as pb
from dcp.imports.v1 import imports_service_pb2_grpc as pb_grpc
from services import import_worker
from services._runtime.s3 import ObjectStore
from services._runtime.settings import Settings
from services.wiring.keys import identity_signer
from services.wiring.separate import start_imports_server
from services.wiring.stores import upload_store
from tests.conftest import MakeAccount, RunningPlatform
from tests.integration.test_imports import make_table
from tests.integration.test_upload_progress import ROWS, big_file, watch


@dataclasses.dataclass
class Apart:
    stub: pb_grpc.ImportsServiceAsyncStub
    store: ObjectStore


@pytest.fixture
async def apart(
    running: RunningPlatform, settings: Settings, pool: asyncpg.Pool, store: ObjectStore
) -> AsyncIterator[Apart]:
    s3 = dataclasses.replace(settings.s3, bucket=f"apart-{secrets.token_hex(4)}")
    alone = dataclasses.replace(settings, s3=s3, grpc_port=0)
    assert settings.database_url is not None
    async with upload_store(s3) as bucket:
        imports = await start_imports_server(
            alone,
            pool,
            identity_signer(settings, allow_generated=False),
            bucket,
            schema_channel=running.channel,
            profiles_channel=running.channel,
            import_worker=False,
        )
        # Uploads are applied in a worker process of its own, as `dcp serve imports` applies them,
        # so that the readings of an upload's progress are answered by a loop that does none of it.
        worker = await import_worker.start_import_worker_process(
            alone,
            {
                "DCP_DATABASE_URL": settings.database_url,
                "DCP_SCHEMA_ADDRESS": running.grpc_address,
                "DCP_PROFILES_ADDRESS": running.grpc_address,
                "DCP_IMPORT_POLL_SECONDS": "0.2",
                "DCP_LOG_LEVEL": "WARNING",
                **import_worker.store_wiring(s3),
            },
        )
        await imports.server.mark_serving()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{imports.server.port}")
        try:
            yield Apart(pb_grpc.ImportsServiceStub(channel), bucket)
        finally:
            await channel.close(grace=None)
            await worker.stop(5)
            await imports.stop(0)


async def test_a_separate_imports_service_serves_its_api_and_imports_its_bucket(
    http: httpx.AsyncClient, make_account: MakeAccount, apart: Apart
) -> None:
    account = await make_account()
    table = await make_table(http, apart.store, account)
    template = await apart.stub.GetTemplate(
        pb.GetTemplateRequest(dcp_datasource_id=table.id), metadata=account.metadata
    )
    assert template.csv.startswith("customerId,name,height,ltv")

    await table.put("apart.csv", "customerId,ltv\na1,3\n")
    [upload] = await table.finished()
    assert upload["status"] == "processed"
    assert await table.profile("a1") == {"ltv": 3}

    listed = await apart.stub.ListUploads(pb.ListUploadsRequest(dcp_datasource_id=table.id), metadata=account.metadata)
    assert [u.file_name for u in listed.uploads] == ["apart.csv"]

    other = await make_account()
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await apart.stub.ListUploads(pb.ListUploadsRequest(dcp_datasource_id=table.id), metadata=other.metadata)
    assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await apart.stub.ListUploads(pb.ListUploadsRequest(dcp_datasource_id=table.id))
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_separate_imports_service_shows_how_far_a_file_has_come(
    http: httpx.AsyncClient, make_account: MakeAccount, apart: Apart
) -> None:
    # Rows go to the profiles service over gRPC, which reports back as it checks them.
    table = await make_table(http, apart.store, await make_account())
    await table.put("big.csv", big_file())
    readings = await watch(table)
    final = readings[-1]
    assert (final["status"], final["rows_total"]) == ("partially_processed", ROWS)
    # Rows are sent faster than the profiles service checks them: what it has checked shows as it goes.
    meanwhile = [r for r in readings if r["status"] == "processing"]
    assert any(0 < r["rows_ok"] < final["rows_ok"] and r["rows_failed"] > 0 for r in meanwhile), meanwhile[-3:]
