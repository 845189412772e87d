"""gRPC status to HTTP: one pinned table, and real RPC failures translated with their details."""

from __future__ import annotations

import grpc
import pytest

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from gateway.errors import HTTP_STATUS_BY_GRPC_CODE, from_rpc_error
from tests.conftest import MakeAccount, RunningPlatform

EXPECTED: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@pytest.mark.parametrize(("code", "status"), list(EXPECTED.items()), ids=[code.name for code in EXPECTED])
def test_every_grpc_code_has_its_http_status(code: grpc.StatusCode, status: int) -> None:
    assert HTTP_STATUS_BY_GRPC_CODE[code] == status


def test_the_table_covers_every_code() -> None:
    assert set(HTTP_STATUS_BY_GRPC_CODE) == set(grpc.StatusCode)


async def test_real_rpc_failures_keep_their_reason_and_field_violations(
    running: RunningPlatform, make_account: MakeAccount
) -> None:
    account = await make_account()
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await schema.GetDcpService(
            schema_service_pb2.GetDcpServiceRequest(dcp_service_id=999), metadata=account.metadata
        )
    not_found = from_rpc_error(missing.value)
    assert (not_found.status, not_found.code, not_found.errors) == (404, "NOT_FOUND", [])

    service = await schema.CreateDcpService(
        schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="s")),
        metadata=account.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await schema.CreateTable(
            schema_service_pb2.CreateTableRequest(
                dcp_service_id=service.id,
                table=resources_pb2.Table(
                    name="t", keyfield_locator_type=resources_pb2.LOCATOR_TYPE_COOKIE, keyfield_locator_name="9x"
                ),
            ),
            metadata=account.metadata,
        )
    invalid = from_rpc_error(bad.value)
    assert invalid.status == 400
    assert invalid.code == "INVALID_FIELD"
    assert [field for field, _ in invalid.errors] == ["keyfield_locator_name"]

    with pytest.raises(grpc.aio.AioRpcError) as second:
        await schema.CreateDcpService(
            schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="again")),
            metadata=account.metadata,
        )
    limit = from_rpc_error(second.value)
    assert (limit.status, limit.code) == (400, "SERVICE_LIMIT_REACHED")

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await schema.ListDcpServices(schema_service_pb2.ListDcpServicesRequest())
    unauthenticated = from_rpc_error(anonymous.value)
    assert (unauthenticated.status, unauthenticated.code) == (401, "UNAUTHENTICATED")
