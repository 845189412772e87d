"""Two profiles replicas with long registry caches still agree on what a profile holds."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest

from dcp.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.wiring.keys import identity_signer
from services.wiring.separate import start_remote_server
from tests.conftest import MakeAccount, RunningPlatform, TestAccount

V1 = "/experiment/v1"


@pytest.fixture
async def replica(
    running: RunningPlatform, pool: asyncpg.Pool
) -> AsyncIterator[profiles_service_pb2_grpc.ProfilesServiceAsyncStub]:
    """A second profiles server whose registry snapshots live a minute."""
    settings = dataclasses.replace(running.settings, grpc_port=0, registry_cache_seconds=60.0)
    signer = identity_signer(settings, allow_generated=False)
    server = await start_remote_server(
        settings, pool, signer, "profiles", schema_channel=running.channel, aliases_channel=running.channel
    )
    await server.mark_serving()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield profiles_service_pb2_grpc.ProfilesServiceStub(channel)
    finally:
        await channel.close(grace=None)
        await server.stop(0)


async def _post(http: httpx.AsyncClient, account: TestAccount, path: str, body: object) -> dict[str, object]:
    response = await http.post(path, json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    answer: dict[str, object] = response.json()
    return answer


async def test_a_value_of_a_newly_registered_attribute_is_readable_on_a_replica_with_an_older_snapshot(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    replica: profiles_service_pb2_grpc.ProfilesServiceAsyncStub,
) -> None:
    account = await make_account()
    service = await _post(http, account, f"{V1}/dcp_services", {"name": "shop"})
    table = await _post(
        http,
        account,
        f"{V1}/dcp_services/{service['id']}/dcp_datasources",
        {"name": "crm", "keyfield_locator_type": "uid"},
    )
    await _post(
        http,
        account,
        f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
        {"name": "ltv", "datatype": "long"},
    )
    await _post(http, account, f"/api/customer_profile/{service['id']}/{table['id']}/c1", {"data": {"ltv": 5}})
    request = profiles_service_pb2.GetProfileRequest(
        dcp_service_id=int(str(service["id"])), dcp_datasource_id=int(str(table["id"])), customer_id="c1"
    )
    # The replica takes its snapshot now, before "tier" exists.
    before = await replica.GetProfile(request, metadata=account.metadata)
    assert set(before.data) == {"ltv"}

    await _post(
        http,
        account,
        f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
        {"name": "tier", "datatype": "string"},
    )
    await _post(http, account, f"/api/customer_profile/{service['id']}/{table['id']}/c1", {"data": {"tier": "gold"}})

    after = await replica.GetProfile(request, metadata=account.metadata)
    assert after.data["ltv"].long_value == 5
    assert after.data["tier"].string_value == "gold"
    optimizely = (await http.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources", headers=account.headers)).json()[
        0
    ]
    await _post(http, account, f"/api/alias/{service['id']}/{optimizely['id']}/o1", {"data": {str(table["id"]): "c1"}})
    view = await replica.GetConsolidatedView(
        profiles_service_pb2.GetConsolidatedViewRequest(dcp_service_id=request.dcp_service_id, optimizely_user_id="o1"),
        metadata=account.metadata,
    )
    assert [dict(p.data) for p in view.profiles] == [dict(after.data)]
