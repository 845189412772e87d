"""A batch merge handed to the profiles service in the same process is handled as one over gRPC:
the same caller check, the same metrics, the same errors, and no protobuf in between."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from dcp.schema.v1 import schema_service_pb2_grpc
from services._runtime.auth import CallerResolver
from services._runtime.errors import DcpError, InvalidArgument, PermissionDenied, Unauthenticated
from services._runtime.identity import AssertionSigner, CredentialKind, Identity, Scope
from services._runtime.settings import Settings
from services.domain.batches import BatchChunk, BatchHeader, BatchMerger, BatchProgress, BatchResult, TextRows
from services.profiles.links import PublishedLinks
from services.profiles.profiles import Profiles
from services.profiles.repository import ProfilesRepository
from services.schema.client import RegistryClient
from services.wiring.keys import identity_signer
from services.wiring.parts import colocated_merger, remote_merger
from tests.conftest import MakeAccount, RunningPlatform, TestAccount
from tests.integration.test_import_limits import _platform, _table

V1 = "/experiment/v1"
PROFILES_SERVICE = "dcp.profiles.v1.ProfilesService"


@dataclasses.dataclass
class Mergers:
    """The two ways to the running platform's profiles service, and a table to merge into."""

    remote: BatchMerger
    colocated: BatchMerger
    channel: grpc.aio.Channel
    signer: AssertionSigner
    resolver: CallerResolver
    profiles: Profiles
    account: TestAccount
    service: int
    table: int

    def identity(self, *scopes: Scope) -> Identity:
        return Identity(self.account.id, frozenset(scopes or {Scope.WRITE}), CredentialKind.SERVICE, "imports")

    def header(self, **fields: Any) -> BatchHeader:
        return BatchHeader(service_id=self.service, table_id=self.table, **{"columns": ("ltv",), **fields})


@pytest.fixture
async def mergers(
    running: RunningPlatform, pool: asyncpg.Pool, http: httpx.AsyncClient, make_account: MakeAccount
) -> Mergers:
    account = await make_account()
    service = (await http.post(f"{V1}/dcp_services", json={"name": "s"}, headers=account.headers)).json()["id"]
    table = (
        await http.post(
            f"{V1}/dcp_services/{service}/dcp_datasources",
            json={"name": "crm", "keyfield_locator_type": "uid"},
            headers=account.headers,
        )
    ).json()["id"]
    response = await http.post(
        f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes",
        json={"name": "ltv", "datatype": "long"},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    # Wired as `dcp up` wires its importer: the server's own caller resolver and identity key.
    signer = identity_signer(running.settings, allow_generated=False)
    resolver = CallerResolver(signer, running.parts.credentials)
    repository = ProfilesRepository(pool)
    registry = RegistryClient(schema_service_pb2_grpc.SchemaServiceStub(running.channel), signer, ttl_seconds=5)
    profiles = Profiles(repository, registry, PublishedLinks(repository))
    return Mergers(
        remote=remote_merger(running.channel, signer),
        colocated=colocated_merger(profiles, resolver, signer),
        channel=running.channel,
        signer=signer,
        resolver=resolver,
        profiles=profiles,
        account=account,
        service=service,
        table=table,
    )


def handled(method: str, code: str, grpc_type: str) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": PROFILES_SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def handling_seconds_count(method: str, code: str, grpc_type: str) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": PROFILES_SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


async def rows(*chunks: Sequence[tuple[int, str, str]]) -> AsyncIterator[BatchChunk]:
    for chunk in chunks:
        yield BatchChunk(
            text_rows=TextRows(
                [number for number, _, _ in chunk], [cell for _, customer, ltv in chunk for cell in (customer, ltv)]
            )
        )


async def ltv_of(http: httpx.AsyncClient, mergers: Mergers, customer: str) -> Any:
    response = await http.get(
        f"/api/customer_profile/{mergers.service}/{mergers.table}/{customer}", headers=mergers.account.headers
    )
    if response.status_code == 404:
        return None
    return response.json()["data"]["ltv"]


async def merged(merger: BatchMerger, mergers: Mergers, customer: str, ltv: str, **options: Any) -> BatchResult:
    return await merger.merge_stream(mergers.identity(), mergers.header(), rows([(2, customer, ltv)]), **options)


async def test_a_colocated_merge_is_counted_under_the_rpc_a_remote_one_is(
    mergers: Mergers, http: httpx.AsyncClient
) -> None:
    before = handled("MergeProfiles", "OK", "client_stream")
    seconds_before = handling_seconds_count("MergeProfiles", "OK", "client_stream")
    remote = await merged(mergers.remote, mergers, "c-remote", "1")
    assert handled("MergeProfiles", "OK", "client_stream") == before + 1
    colocated = await merged(mergers.colocated, mergers, "c-local", "2")
    assert handled("MergeProfiles", "OK", "client_stream") == before + 2
    assert handling_seconds_count("MergeProfiles", "OK", "client_stream") == seconds_before + 2
    assert dataclasses.asdict(colocated) == dataclasses.asdict(remote)
    assert (await ltv_of(http, mergers, "c-remote"), await ltv_of(http, mergers, "c-local")) == (1, 2)

    progress_before = handled("MergeProfilesWithProgress", "OK", "bidi_stream")
    reports: list[BatchProgress] = []
    result = await merged(mergers.colocated, mergers, "c-progress", "3", on_progress=reports.append)
    assert result.rows_stored == 1
    assert reports == [BatchProgress(rows_received=1, rows_valid=1, rows_rejected=0)]
    assert handled("MergeProfilesWithProgress", "OK", "bidi_stream") == progress_before + 1


async def _refusal(merger: BatchMerger, identity: Identity, header: BatchHeader) -> DcpError:
    with pytest.raises(DcpError) as refused:
        await merger.merge_stream(identity, header, rows([(2, "c1", "5")]))
    return refused.value


async def _remote_refusal(merger: BatchMerger, identity: Identity, header: BatchHeader) -> DcpError:
    """The remote merge's refusal, which must be the service's own even when it races the client's writes."""
    refusal = await _refusal(merger, identity, header)
    assert "Internal error from Core" not in refusal.message
    return refusal


def _as_seen(error: DcpError) -> tuple[Any, ...]:
    return type(error), error.message, error.reason, error.violations, error.metadata


async def test_a_colocated_merge_without_a_valid_identity_is_refused_as_a_remote_one_is(
    mergers: Mergers, http: httpx.AsyncClient
) -> None:
    impostor = AssertionSigner(secrets.token_urlsafe(48), ttl_seconds=60)
    forged = {
        "remote": remote_merger(mergers.channel, impostor),
        "colocated": colocated_merger(mergers.profiles, mergers.resolver, impostor),
    }
    remote = await _remote_refusal(forged["remote"], mergers.identity(), mergers.header())
    before = handled("MergeProfiles", "UNAUTHENTICATED", "client_stream")
    colocated = await _refusal(forged["colocated"], mergers.identity(), mergers.header())
    assert isinstance(colocated, Unauthenticated)
    assert _as_seen(colocated) == _as_seen(remote)
    assert handled("MergeProfiles", "UNAUTHENTICATED", "client_stream") == before + 1

    # A verified caller without the write scope is refused by the same check as a servicer's.
    read_only = mergers.identity(Scope.READ)
    remote = await _remote_refusal(mergers.remote, read_only, mergers.header())
    before = handled("MergeProfiles", "PERMISSION_DENIED", "client_stream")
    colocated = await _refusal(mergers.colocated, read_only, mergers.header())
    assert isinstance(colocated, PermissionDenied)
    assert _as_seen(colocated) == _as_seen(remote)
    assert handled("MergeProfiles", "PERMISSION_DENIED", "client_stream") == before + 1
    assert await ltv_of(http, mergers, "c1") is None


async def test_a_colocated_refusal_reaches_the_caller_as_a_remote_one_does(mergers: Mergers) -> None:
    bad_column = mergers.header(columns=("ltv", "no_such_attribute"))
    remote = await _remote_refusal(mergers.remote, mergers.identity(), bad_column)
    before = handled("MergeProfiles", "INVALID_ARGUMENT", "client_stream")
    colocated = await _refusal(mergers.colocated, mergers.identity(), bad_column)
    assert isinstance(colocated, InvalidArgument)
    assert colocated.violations
    assert _as_seen(colocated) == _as_seen(remote)
    assert handled("MergeProfiles", "INVALID_ARGUMENT", "client_stream") == before + 1


class BrokenFile(Exception):
    """The caller's own rows fail to come (a file that turns out broken halfway)."""


async def test_a_failure_of_the_callers_rows_reaches_it_unchanged_and_stores_nothing(
    mergers: Mergers, http: httpx.AsyncClient
) -> None:
    async def breaking() -> AsyncIterator[BatchChunk]:
        async for chunk in rows([(2, "c-broken", "7")]):
            yield chunk
        raise BrokenFile("the file ends in the middle of a row")

    before = handled("MergeProfiles", "CANCELLED", "client_stream")
    with pytest.raises(BrokenFile):
        await mergers.colocated.merge_stream(mergers.identity(), mergers.header(), breaking())
    assert handled("MergeProfiles", "CANCELLED", "client_stream") == before + 1
    assert await ltv_of(http, mergers, "c-broken") is None


async def test_merges_of_the_import_worker_process_are_counted_by_the_process_serving_metrics(
    settings: Settings, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    async with _platform(settings, pool, "colocated-counts") as platform, _table(platform, make_account) as table:
        before = handled("MergeProfilesWithProgress", "OK", "bidi_stream")
        await table.put("few.csv", "customerId,name\nc1,Ann\nc2,Bob\n")
        [upload] = await table.finished()
        assert upload["status"] == "processed", upload
        # The worker's report travels through its output pipe, read by this process as it comes.
        for _ in range(200):
            if handled("MergeProfilesWithProgress", "OK", "bidi_stream") > before:
                break
            await asyncio.sleep(0.05)
        assert handled("MergeProfilesWithProgress", "OK", "bidi_stream") == before + 1
        assert await table.profile("c2") == {"name": "Bob"}
