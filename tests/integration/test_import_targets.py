"""ListImportTargets: every account's tables for the importer, and only for callers with the internal scope."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.errors import Unauthenticated
from services._runtime.identity import (
    IDENTITY_METADATA_KEY,
    AssertionSigner,
    CredentialKind,
    Identity,
    Scope,
    internal_identity,
)
from services.schema.client import ImportTarget, ImportTargetsClient
from services.wiring.keys import identity_signer
from tests.conftest import MakeAccount, RunningPlatform
from tests.conftest import TestAccount as Account

V1 = "/experiment/v1"


@pytest.fixture
def signer(running: RunningPlatform) -> AssertionSigner:
    return identity_signer(running.settings, allow_generated=False)


@pytest.fixture
def schema(running: RunningPlatform) -> schema_service_pb2_grpc.SchemaServiceAsyncStub:
    return schema_service_pb2_grpc.SchemaServiceStub(running.channel)


def internal_metadata(signer: AssertionSigner) -> tuple[tuple[str, str], ...]:
    return ((IDENTITY_METADATA_KEY, signer.sign(internal_identity("imports"))),)


async def new_service(http: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await http.post(V1 + "/dcp_services", json={"name": "s"}, headers=account.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_table(http: httpx.AsyncClient, account: Account, service_id: int, **extra: Any) -> dict[str, Any]:
    response = await http.post(
        f"{V1}/dcp_services/{service_id}/dcp_datasources",
        json={"name": "t", "keyfield_locator_type": "uid", **extra},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def tables_of(http: httpx.AsyncClient, account: Account, service_id: int) -> list[dict[str, Any]]:
    response = await http.get(f"{V1}/dcp_services/{service_id}/dcp_datasources", headers=account.headers)
    assert response.status_code == 200, response.text
    tables: list[dict[str, Any]] = response.json()
    return tables


def target(account: Account, table: dict[str, Any], *, archived: bool = False) -> ImportTarget:
    return ImportTarget(
        table_id=table["id"],
        service_id=table["dcp_service_id"],
        account_id=account.id,
        s3_path=table["s3_path"],
        import_mode=table["import_mode"],
        archived=archived,
    )


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


async def test_every_accounts_tables_are_listed_with_their_settings(
    running: RunningPlatform,
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    first, second = await make_account(), await make_account()
    first_service = await new_service(http, first)
    second_service = await new_service(http, second)
    strict = await new_table(http, first, first_service["id"], import_mode="all_or_nothing")
    lenient = await new_table(http, second, second_service["id"], import_mode="partial")
    [first_optimizely, _] = await tables_of(http, first, first_service["id"])
    [second_optimizely, _] = await tables_of(http, second, second_service["id"])

    targets = await ImportTargetsClient(schema, signer).all()
    assert targets == sorted(
        [
            target(first, first_optimizely),
            target(first, strict),
            target(second, second_optimizely),
            target(second, lenient),
        ],
        key=lambda t: t.table_id,
    )
    assert next(t for t in targets if t.table_id == strict["id"]) == ImportTarget(
        table_id=strict["id"],
        service_id=first_service["id"],
        account_id=first.id,
        s3_path=f"dcp/{first_service['id']}/{strict['id']}",
        import_mode="all_or_nothing",
        archived=False,
    )

    # The raw RPC speaks the proto enum.
    page = await schema.ListImportTargets(
        schema_service_pb2.ListImportTargetsRequest(), metadata=internal_metadata(signer)
    )
    assert [(t.dcp_datasource_id, t.import_mode) for t in page.targets] == sorted(
        [
            (first_optimizely["id"], resources_pb2.IMPORT_MODE_PARTIAL),
            (strict["id"], resources_pb2.IMPORT_MODE_ALL_OR_NOTHING),
            (second_optimizely["id"], resources_pb2.IMPORT_MODE_PARTIAL),
            (lenient["id"], resources_pb2.IMPORT_MODE_PARTIAL),
        ]
    )
    assert page.next_page_token == ""


async def test_a_changed_import_mode_is_listed(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    account = await make_account()
    service = await new_service(http, account)
    [optimizely] = await tables_of(http, account, service["id"])
    changed = await http.put(
        f"{V1}/dcp_datasources/{optimizely['id']}", json={"import_mode": "all_or_nothing"}, headers=account.headers
    )
    assert changed.status_code == 202, changed.text
    assert [t.import_mode for t in await ImportTargetsClient(schema, signer).all()] == ["all_or_nothing"]


async def test_archived_tables_and_tables_of_archived_services_are_flagged(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    kept, gone = await make_account(), await make_account()
    kept_service = await new_service(http, kept)
    archived_table = await new_table(http, kept, kept_service["id"])
    active_table = await new_table(http, kept, kept_service["id"])
    assert (await http.delete(f"{V1}/dcp_datasources/{archived_table['id']}", headers=kept.headers)).status_code == 204
    gone_service = await new_service(http, gone)
    await new_table(http, gone, gone_service["id"])
    assert (await http.delete(f"{V1}/dcp_services/{gone_service['id']}", headers=gone.headers)).status_code == 204

    [kept_optimizely, _, _] = await tables_of(http, kept, kept_service["id"])
    gone_tables = await tables_of(http, gone, gone_service["id"])
    targets = await ImportTargetsClient(schema, signer).all()
    assert targets == [
        target(kept, kept_optimizely),
        target(kept, archived_table, archived=True),
        target(kept, active_table),
        *(target(gone, table, archived=True) for table in gone_tables),
    ]
    assert len(gone_tables) == 2


async def test_targets_are_paginated_in_id_order_without_gaps_or_repeats(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    expected: list[int] = []
    for _ in range(2):
        account = await make_account()
        service = await new_service(http, account)
        for _ in range(2):
            await new_table(http, account, service["id"])
        expected += [t["id"] for t in await tables_of(http, account, service["id"])]
    assert len(expected) == 6

    seen: list[int] = []
    pages = 0
    token = ""
    while True:
        page = await schema.ListImportTargets(
            schema_service_pb2.ListImportTargetsRequest(page_size=4, page_token=token),
            metadata=internal_metadata(signer),
        )
        pages += 1
        assert len(page.targets) <= 4
        seen += [t.dcp_datasource_id for t in page.targets]
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (sorted(expected), 2)

    paged = await ImportTargetsClient(schema, signer, page_size=1).all()
    assert [t.table_id for t in paged] == sorted(expected)
    # Past the largest page size, pages are cut to it rather than refused.
    whole = await schema.ListImportTargets(
        schema_service_pb2.ListImportTargetsRequest(page_size=1_000_000), metadata=internal_metadata(signer)
    )
    assert [t.dcp_datasource_id for t in whole.targets] == sorted(expected)


async def test_bad_page_requests_are_invalid(
    make_account: MakeAccount, schema: schema_service_pb2_grpc.SchemaServiceAsyncStub, signer: AssertionSigner
) -> None:
    account = await make_account()
    for name in ("a", "b"):
        await schema.CreateProject(
            schema_service_pb2.CreateProjectRequest(project=resources_pb2.Project(name=name)),
            metadata=account.metadata,
        )
    projects = await schema.ListProjects(schema_service_pb2.ListProjectsRequest(page_size=1), metadata=account.metadata)
    assert projects.next_page_token
    for request in (
        schema_service_pb2.ListImportTargetsRequest(page_size=-1),
        schema_service_pb2.ListImportTargetsRequest(page_token="garbage"),
        schema_service_pb2.ListImportTargetsRequest(page_token=projects.next_page_token),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await schema.ListImportTargets(request, metadata=internal_metadata(signer))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_account_callers_are_refused(
    running: RunningPlatform,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    account = await make_account()
    auth = schema_service_pb2_grpc.AuthServiceStub(running.channel)
    authenticated = await auth.Authenticate(schema_service_pb2.AuthenticateRequest(token=account.token))
    # A classic token grants its account's scopes, never the internal one.
    assert sorted(authenticated.identity.scopes) == ["read", "write"]
    account_assertion = signer.sign(
        Identity(account.id, frozenset({Scope.READ, Scope.WRITE}), CredentialKind.CLASSIC, "token")
    )
    # Even a service's own identity needs the internal scope, not just the key.
    service_assertion = signer.sign(
        Identity(account.id, frozenset({Scope.READ, Scope.WRITE}), CredentialKind.SERVICE, "imports")
    )
    for metadata in (
        account.metadata,
        ((IDENTITY_METADATA_KEY, authenticated.assertion),),
        ((IDENTITY_METADATA_KEY, account_assertion),),
        ((IDENTITY_METADATA_KEY, service_assertion),),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await schema.ListImportTargets(schema_service_pb2.ListImportTargetsRequest(), metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(refused.value) == "INSUFFICIENT_SCOPE"


async def test_callers_without_a_verifiable_internal_identity_are_unauthenticated(
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
) -> None:
    forged = AssertionSigner(secrets.token_urlsafe(48), ttl_seconds=60).sign(internal_identity("imports"))
    for metadata in ((), ((IDENTITY_METADATA_KEY, forged),), (("authorization", "Bearer not-a-token"),)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await schema.ListImportTargets(schema_service_pb2.ListImportTargetsRequest(), metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_an_internal_identity_is_refused_by_account_methods(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    signer: AssertionSigner,
) -> None:
    account = await make_account()
    service = await new_service(http, account)
    metadata = internal_metadata(signer)
    # Account 0 owns nothing, so a wrongly admitted call would answer empty or
    # NOT_FOUND rather than fail loudly; each must be refused for its scope.
    calls: list[tuple[Any, Any]] = [
        (schema.WhoAmI, schema_service_pb2.WhoAmIRequest()),
        (schema.ListDcpServices, schema_service_pb2.ListDcpServicesRequest()),
        (schema.GetDcpService, schema_service_pb2.GetDcpServiceRequest(dcp_service_id=service["id"])),
        (schema.ListTables, schema_service_pb2.ListTablesRequest(dcp_service_id=service["id"])),
        (
            schema.CreateDcpService,
            schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="x")),
        ),
        (schema.ArchiveDcpService, schema_service_pb2.ArchiveDcpServiceRequest(dcp_service_id=service["id"])),
    ]
    for method, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert reason_of(refused.value) == "INSUFFICIENT_SCOPE"
    response = await http.get(f"{V1}/dcp_services/{service['id']}", headers=account.headers)
    assert response.json() == service


async def test_the_client_reports_a_refusal_as_a_typed_error(
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
) -> None:
    stranger = AssertionSigner(secrets.token_urlsafe(48), ttl_seconds=60)
    with pytest.raises(Unauthenticated):
        await ImportTargetsClient(schema, stranger).all()


async def test_the_import_mode_over_grpc(
    make_account: MakeAccount, schema: schema_service_pb2_grpc.SchemaServiceAsyncStub
) -> None:
    account = await make_account()
    service = await schema.CreateDcpService(
        schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="s")),
        metadata=account.metadata,
    )
    table = await schema.CreateTable(
        schema_service_pb2.CreateTableRequest(
            dcp_service_id=service.id,
            table=resources_pb2.Table(name="t", keyfield_locator_type=resources_pb2.LOCATOR_TYPE_UID),
        ),
        metadata=account.metadata,
    )
    assert table.import_mode == resources_pb2.IMPORT_MODE_PARTIAL

    async def update(paths: list[str], **fields: Any) -> resources_pb2.Table:
        return await schema.UpdateTable(
            schema_service_pb2.UpdateTableRequest(
                table=resources_pb2.Table(id=table.id, **fields), update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=account.metadata,
        )

    strict = await update(["import_mode"], import_mode=resources_pb2.IMPORT_MODE_ALL_OR_NOTHING)
    assert strict.import_mode == resources_pb2.IMPORT_MODE_ALL_OR_NOTHING
    # Unspecified leaves the mode as it is, whether or not the mask names it.
    assert (await update(["name"], name="renamed")).import_mode == resources_pb2.IMPORT_MODE_ALL_OR_NOTHING
    assert (await update(["import_mode"])).import_mode == resources_pb2.IMPORT_MODE_ALL_OR_NOTHING
    unmasked = await schema.UpdateTable(
        schema_service_pb2.UpdateTableRequest(
            table=resources_pb2.Table(id=table.id, import_mode=resources_pb2.IMPORT_MODE_PARTIAL)
        ),
        metadata=account.metadata,
    )
    assert unmasked.import_mode == resources_pb2.IMPORT_MODE_PARTIAL

    before = await schema.GetTable(
        schema_service_pb2.GetTableRequest(dcp_datasource_id=table.id), metadata=account.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await update(["import_mode"], import_mode=resources_pb2.ImportMode.ValueType(7))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "import_mode" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await schema.CreateTable(
            schema_service_pb2.CreateTableRequest(
                dcp_service_id=service.id,
                table=resources_pb2.Table(
                    name="u",
                    keyfield_locator_type=resources_pb2.LOCATOR_TYPE_UID,
                    import_mode=resources_pb2.ImportMode.ValueType(7),
                ),
            ),
            metadata=account.metadata,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    after = await schema.GetTable(
        schema_service_pb2.GetTableRequest(dcp_datasource_id=table.id), metadata=account.metadata
    )
    assert after == before
    tables = await schema.ListTables(
        schema_service_pb2.ListTablesRequest(dcp_service_id=service.id), metadata=account.metadata
    )
    assert len(tables.tables) == 2


async def test_the_database_holds_only_known_import_modes(pool: asyncpg.Pool) -> None:
    account = await pool.fetchval("INSERT INTO catalog.accounts (name) VALUES ('a') RETURNING id")
    service = await pool.fetchval(
        "INSERT INTO catalog.dcp_services (account_id, name, aws_access_key, aws_secret_key)"
        " VALUES ($1, 's', $2, 'secret') RETURNING id",
        account,
        secrets.token_hex(8),
    )
    insert = (
        "INSERT INTO catalog.datasources (account_id, dcp_service_id, name, keyfield_locator_type)"
        " VALUES ($1, $2, 't', 'uid') RETURNING import_mode"
    )
    assert await pool.fetchval(insert, account, service) == "partial"
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE catalog.datasources SET import_mode = 'strict' WHERE account_id = $1", account)
