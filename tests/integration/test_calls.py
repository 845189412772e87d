"""A refusal of another service reaches the caller as that service gave it, over a real gRPC socket."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.errors import DcpError, InvalidArgument, NotFound, Unavailable
from services._runtime.identity import AssertionSigner, CredentialKind, Identity, Scope
from services.imports.uploads import TableDirectory

CALLER = Identity(7, frozenset({Scope.READ}), CredentialKind.SERVICE, "test")


def _refusal(code: int, message: str, reason: str, violations: list[tuple[str, str]]) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="dcp", metadata={"resource": "table", "id": "0"}))
    details = [info]
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                ]
            )
        )
        details.append(bad)
    return status_pb2.Status(code=code, message=message, details=details)


# What the stand-in schema service answers GetTable with, by table id.
ANSWERS = {
    1: _refusal(
        code_pb2.INVALID_ARGUMENT,
        "dcp_datasource_id: must be positive",
        "INVALID_FIELD",
        [("dcp_datasource_id", "must be positive")],
    ),
    2: _refusal(code_pb2.NOT_FOUND, "no such thing", "NOT_FOUND", []),
    3: _refusal(code_pb2.FAILED_PRECONDITION, "the table is archived", "RESOURCE_ARCHIVED", []),
    4: _refusal(code_pb2.INTERNAL, "something broke", "INTERNAL", []),
}


async def _get_table(request: schema_service_pb2.GetTableRequest, context: Any) -> resources_pb2.Table:
    await context.abort_with_status(rpc_status.to_status(ANSWERS[request.dcp_datasource_id]))
    raise AssertionError("abort_with_status returned")


# Only GetTable, served as the schema service serves it.
REFUSING_SCHEMA = grpc.method_handlers_generic_handler(
    "dcp.schema.v1.SchemaService",
    {
        "GetTable": grpc.unary_unary_rpc_method_handler(
            _get_table,
            request_deserializer=schema_service_pb2.GetTableRequest.FromString,
            response_serializer=resources_pb2.Table.SerializeToString,
        )
    },
)


@pytest.fixture
async def tables() -> AsyncIterator[tuple[TableDirectory, grpc.aio.Server]]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((REFUSING_SCHEMA,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        signer = AssertionSigner(secrets.token_urlsafe(48), ttl_seconds=60)
        yield TableDirectory(schema_service_pb2_grpc.SchemaServiceStub(channel), signer), server
    await server.stop(None)


async def test_a_bad_argument_passes_on_with_its_reason_and_field_violations(
    tables: tuple[TableDirectory, grpc.aio.Server],
) -> None:
    directory, _ = tables
    with pytest.raises(InvalidArgument) as refused:
        await directory.owned_table(CALLER, 1)
    assert refused.value.message == "dcp_datasource_id: must be positive"
    assert refused.value.reason == "INVALID_FIELD"
    assert refused.value.violations == [("dcp_datasource_id", "must be positive")]
    assert refused.value.metadata == {"resource": "table", "id": "0"}
    # The caller gets the status exactly as the schema service gave it.
    assert refused.value.to_status() == ANSWERS[1]


async def test_a_broken_rule_passes_on_rather_than_as_unavailable(
    tables: tuple[TableDirectory, grpc.aio.Server],
) -> None:
    directory, _ = tables
    with pytest.raises(DcpError) as refused:
        await directory.owned_table(CALLER, 3)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "RESOURCE_ARCHIVED"


async def test_not_found_names_the_table_the_caller_asked_for(tables: tuple[TableDirectory, grpc.aio.Server]) -> None:
    directory, _ = tables
    with pytest.raises(NotFound) as missing:
        await directory.owned_table(CALLER, 2)
    assert missing.value.message == "table 2 does not exist"
    assert missing.value.metadata == {"resource": "table", "id": "2"}


async def test_a_fault_of_the_other_service_is_not_passed_off_as_the_callers(
    tables: tuple[TableDirectory, grpc.aio.Server],
) -> None:
    directory, _ = tables
    with pytest.raises(DcpError) as failed:
        await directory.owned_table(CALLER, 4)
    assert failed.value.code is grpc.StatusCode.INTERNAL
    assert failed.value.reason == "INTERNAL"
    assert "the schema service answered INTERNAL" in failed.value.message


async def test_a_stopped_service_is_unavailable(tables: tuple[TableDirectory, grpc.aio.Server]) -> None:
    directory, server = tables
    await server.stop(None)
    with pytest.raises(Unavailable) as unavailable:
        await directory.owned_table(CALLER, 1)
    assert unavailable.value.message == "the schema service is unavailable; retry later"
