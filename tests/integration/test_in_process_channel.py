"""A call through the in-process channel (what the gateway of `dcp up` uses) answers as the same call over gRPC:
the same response, the same code, message and rich status on failure, and it is counted the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc
from services._runtime.calls import received
from services._runtime.identity import IDENTITY_METADATA_KEY
from tests.conftest import MakeAccount, RunningPlatform, TestAccount

V1 = "/experiment/v1"
Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


async def _table(running: RunningPlatform, account: TestAccount) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=running.http_url, headers=account.headers) as http:
        service = (await http.post(f"{V1}/dcp_services", json={"name": "shop"})).json()["id"]
        table = (
            await http.post(
                f"{V1}/dcp_services/{service}/dcp_datasources",
                json={"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            )
        ).json()["id"]
        created = await http.post(
            f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", json={"name": "ltv", "datatype": "long"}
        )
        assert created.status_code == 201, created.text
    return service, table


async def _outcome(call: Call, channel: grpc.aio.Channel) -> tuple[str, Any]:
    try:
        return "ok", await call(channel)
    except grpc.aio.AioRpcError as error:
        return "failed", (error.code(), error.details(), received(error))


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "dcp.profiles.v1.ProfilesService",
            "grpc_method": method,
            "grpc_code": code,
        },
    )
    return value or 0.0


@pytest.fixture
async def calls(running: RunningPlatform, make_account: MakeAccount) -> dict[str, Call]:
    owner, stranger = await make_account(), await make_account()
    service, table = await _table(running, owner)

    def profiles(channel: grpc.aio.Channel) -> profiles_grpc.ProfilesServiceAsyncStub:
        return profiles_grpc.ProfilesServiceStub(channel)

    def get(customer: str, metadata: Any) -> Call:
        return lambda channel: profiles(channel).GetProfile(
            profiles_pb.GetProfileRequest(dcp_service_id=service, dcp_datasource_id=table, customer_id=customer),
            metadata=metadata,
        )

    def merge(data: dict[str, profiles_pb.Value]) -> Call:
        return lambda channel: profiles(channel).MergeProfile(
            profiles_pb.MergeProfileRequest(
                dcp_service_id=service, dcp_datasource_id=table, customer_id="c1", data=data
            ),
            metadata=owner.metadata,
        )

    await merge({"ltv": profiles_pb.Value(long_value=7)})(running.channel)
    return {
        "a read": get("c1", owner.metadata),
        "who is asking": lambda channel: schema_grpc.SchemaServiceStub(channel).WhoAmI(
            schema_pb.WhoAmIRequest(), metadata=owner.metadata
        ),
        "a missing profile": get("nobody", owner.metadata),
        "another account's table": get("c1", stranger.metadata),
        "no credentials": get("c1", ()),
        "a forged identity": get("c1", ((IDENTITY_METADATA_KEY, "eyJhbGciOiJIUzI1NiJ9.e30.forged"),)),
        "an unknown attribute and a wrong type": merge(
            {"nope": profiles_pb.Value(long_value=1), "ltv": profiles_pb.Value(string_value="x")}
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "a read",
        "who is asking",
        "a missing profile",
        "another account's table",
        "no credentials",
        "a forged identity",
        "an unknown attribute and a wrong type",
    ],
)
async def test_a_call_answers_alike_over_the_wire_and_in_process(
    running: RunningPlatform, calls: dict[str, Call], name: str
) -> None:
    over_the_wire = await _outcome(calls[name], running.channel)
    in_process = await _outcome(calls[name], running.in_process)
    assert in_process == over_the_wire
    assert over_the_wire[0] == ("ok" if name in ("a read", "who is asking") else "failed")


async def test_a_call_in_process_is_counted_as_one_over_the_wire(
    running: RunningPlatform, calls: dict[str, Call]
) -> None:
    before = _handled("GetProfile", "NOT_FOUND"), _handled("GetProfile", "OK")
    await _outcome(calls["a missing profile"], running.in_process)
    await _outcome(calls["a read"], running.in_process)
    assert (_handled("GetProfile", "NOT_FOUND"), _handled("GetProfile", "OK")) == (before[0] + 1, before[1] + 1)
