"""The gRPC runtime as an internal caller meets it: health, reflection, identity, pagination, migrations."""

from __future__ import annotations

import secrets

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.identity import IDENTITY_METADATA_KEY, AssertionSigner, CredentialKind, Identity, Scope
from services.wiring.connections import migrate_all
from tests.conftest import MakeAccount, RunningPlatform


async def test_health_reports_serving_for_every_service(running: RunningPlatform) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in (
        "",
        "dcp.schema.v1.SchemaService",
        "dcp.profiles.v1.ProfilesService",
        "dcp.aliases.v1.AliasesService",
    ):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_the_services(running: RunningPlatform) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in call:
        names |= {service.name for service in response.list_services_response.service}
    assert {"dcp.schema.v1.SchemaService", "dcp.profiles.v1.ProfilesService", "dcp.aliases.v1.AliasesService"} <= names


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "dcp"
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        ((IDENTITY_METADATA_KEY, "garbage"),),
        ((IDENTITY_METADATA_KEY, "eyJhbGciOiJub25lIn0.eyJhY2MiOjF9."),),
        (("authorization", "Bearer not-a-token"),),
    ],
    ids=["none", "garbage assertion", "unsigned assertion", "bad bearer"],
)
async def test_calls_without_a_verifiable_caller_are_unauthenticated(
    running: RunningPlatform, metadata: tuple[tuple[str, str], ...]
) -> None:
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await schema.ListDcpServices(schema_service_pb2.ListDcpServicesRequest(), metadata=metadata)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _reason(refused.value) == "UNAUTHENTICATED"


async def test_an_assertion_signed_with_another_key_is_refused(
    running: RunningPlatform, make_account: MakeAccount
) -> None:
    account = await make_account()
    forged = AssertionSigner(secrets.token_urlsafe(48), ttl_seconds=60).sign(
        Identity(account.id, frozenset({Scope.READ, Scope.WRITE}), CredentialKind.CLASSIC, "forged")
    )
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await schema.ListDcpServices(
            schema_service_pb2.ListDcpServicesRequest(), metadata=((IDENTITY_METADATA_KEY, forged),)
        )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_assertion_from_authenticate_identifies_the_caller(
    running: RunningPlatform, make_account: MakeAccount
) -> None:
    account = await make_account()
    auth = schema_service_pb2_grpc.AuthServiceStub(running.channel)
    response = await auth.Authenticate(schema_service_pb2.AuthenticateRequest(token=account.token))
    assert response.identity.account_id == account.id
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    identity = await schema.WhoAmI(
        schema_service_pb2.WhoAmIRequest(), metadata=((IDENTITY_METADATA_KEY, response.assertion),)
    )
    assert identity.account_id == account.id


async def test_lists_are_paginated_without_gaps_or_repeats(running: RunningPlatform, make_account: MakeAccount) -> None:
    account = await make_account()
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    service = await schema.CreateDcpService(
        schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="s")),
        metadata=account.metadata,
    )
    table = (
        await schema.ListTables(
            schema_service_pb2.ListTablesRequest(dcp_service_id=service.id), metadata=account.metadata
        )
    ).tables[0]
    created = []
    for index in range(5):
        attribute = await schema.CreateAttribute(
            schema_service_pb2.CreateAttributeRequest(
                dcp_datasource_id=table.id,
                attribute=resources_pb2.Attribute(name=f"a{index}", datatype=resources_pb2.DATATYPE_LONG),
            ),
            metadata=account.metadata,
        )
        created.append(attribute.id)
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await schema.ListAttributes(
            schema_service_pb2.ListAttributesRequest(dcp_datasource_id=table.id, page_size=2, page_token=token),
            metadata=account.metadata,
        )
        pages += 1
        seen.extend(a.id for a in page.attributes)
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (created, 3)

    first = await schema.ListAttributes(
        schema_service_pb2.ListAttributesRequest(dcp_datasource_id=table.id, page_size=2), metadata=account.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await schema.ListTables(
            schema_service_pb2.ListTablesRequest(dcp_service_id=service.id, page_token=first.next_page_token),
            metadata=account.metadata,
        )
    assert reused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_migrations_apply_once(pool: asyncpg.Pool) -> None:
    assert await migrate_all(pool) == []
    versions = await pool.fetch("SELECT version FROM catalog.schema_migrations ORDER BY version")
    assert [v["version"] for v in versions] == [
        "0001_catalog.sql",
        "0002_service_guards.sql",
        "0003_import_mode.sql",
        "0004_audiences.sql",
    ]
