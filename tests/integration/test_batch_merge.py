"""The profiles batch merge RPC as internal callers (the importer among them) use it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import httpx
import pytest

from dcp.profiles.v1 import profiles_service_pb2 as pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as pb_grpc
from services.profiles.repository import StagedMerge
from tests.conftest import MakeAccount, RunningPlatform, TestAccount

V1 = "/experiment/v1"


class Batch:
    def __init__(self, http: httpx.AsyncClient, stub: pb_grpc.ProfilesServiceAsyncStub, account: TestAccount) -> None:
        self.http = http
        self.stub = stub
        self.account = account
        self.service = 0
        self.table = 0

    async def setup(self) -> None:
        headers = self.account.headers
        self.service = (await self.http.post(f"{V1}/dcp_services", json={"name": "s"}, headers=headers)).json()["id"]
        self.table = (
            await self.http.post(
                f"{V1}/dcp_services/{self.service}/dcp_datasources",
                json={"name": "crm", "keyfield_locator_type": "uid"},
                headers=headers,
            )
        ).json()["id"]
        for name, datatype in (("ltv", "long"), ("name", "string"), ("vip", "bool")):
            response = await self.http.post(
                f"{V1}/dcp_datasources/{self.table}/dcp_datasource_attributes",
                json={"name": name, "datatype": datatype},
                headers=headers,
            )
            assert response.status_code == 201

    async def send(self, *messages: pb.MergeProfilesRequest) -> pb.MergeProfilesResponse:
        first = messages[0]
        first.dcp_service_id = self.service
        first.dcp_datasource_id = self.table

        async def stream() -> AsyncIterator[pb.MergeProfilesRequest]:
            for message in messages:
                yield message

        response: pb.MergeProfilesResponse = await self.stub.MergeProfiles(stream(), metadata=self.account.metadata)
        return response

    async def profile(self, customer: str) -> dict[str, Any] | None:
        response = await self.http.get(
            f"/api/customer_profile/{self.service}/{self.table}/{customer}", headers=self.account.headers
        )
        if response.status_code == 404:
            return None
        data: dict[str, Any] = response.json()["data"]
        return data


def text(rows: Sequence[tuple[int, str, Sequence[str]]], **fields: Any) -> pb.MergeProfilesRequest:
    return pb.MergeProfilesRequest(
        text_row_numbers=[number for number, _, _ in rows],
        text_cells=[cell for _, customer, cells in rows for cell in (customer, *cells)],
        **fields,
    )


@pytest.fixture
async def batch(http: httpx.AsyncClient, running: RunningPlatform, make_account: MakeAccount) -> Batch:
    made = Batch(http, pb_grpc.ProfilesServiceStub(running.channel), await make_account())
    await made.setup()
    return made


async def test_text_rows_parse_like_csv_cells_and_empty_cells_change_nothing(batch: Batch) -> None:
    result = await batch.send(
        text([(2, "c1", ["10", "Ann", "TRUE"]), (3, "c2", ["x", "Bob", ""])], columns=["ltv", "name", "vip"]),
        text([(4, "c1", ["", "Anna", ""]), (5, "", ["1", "", ""])]),
    )
    assert (result.rows_received, result.rows_stored, result.rows_rejected) == (4, 2, 2)
    assert [(e.row_number, e.field, e.value) for e in result.errors] == [(3, "ltv", "x"), (5, "customerId", "")]
    assert await batch.profile("c1") == {"ltv": 10, "name": "Anna", "vip": True}
    assert await batch.profile("c2") is None


async def test_columns_must_be_active_attributes_named_once(batch: Batch) -> None:
    for columns in (["ltv", "nope"], ["ltv", "ltv"]):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await batch.send(text([(2, "c1", ["1", "2"])], columns=columns))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as ragged:
        await batch.send(text([(2, "c1", ["1"])], columns=["ltv"]), pb.MergeProfilesRequest(text_cells=["c2"]))
    assert ragged.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await batch.profile("c1") is None


async def test_a_batch_sent_again_under_its_key_is_reported_but_not_applied_twice(batch: Batch) -> None:
    first = await batch.send(text([(2, "c1", ["1"])], columns=["ltv"], idempotency_key="upload-7"))
    assert (first.rows_stored, first.already_applied) == (1, False)
    await batch.http.post(
        f"/api/customer_profile/{batch.service}/{batch.table}/c1",
        json={"data": {"ltv": 5}},
        headers=batch.account.headers,
    )
    again = await batch.send(text([(2, "c1", ["1"]), (3, "c9", ["z"])], columns=["ltv"], idempotency_key="upload-7"))
    assert (again.rows_stored, again.rows_rejected, again.already_applied) == (1, 1, True)
    assert await batch.profile("c1") == {"ltv": 5}
    assert await batch.profile("c9") is None


async def test_all_or_nothing_stores_nothing_when_any_row_is_refused_here_or_by_the_caller(batch: Batch) -> None:
    refused = await batch.send(text([(2, "c1", ["1"]), (3, "c2", ["x"])], columns=["ltv"], all_or_nothing=True))
    assert (refused.rows_stored, refused.rows_rejected) == (0, 1)
    assert await batch.profile("c1") is None
    upstream = await batch.send(
        text([(2, "c1", ["1"])], columns=["ltv"], all_or_nothing=True, rows_rejected_by_caller=1)
    )
    assert upstream.rows_stored == 0
    assert await batch.profile("c1") is None
    clean = await batch.send(text([(2, "c1", ["1"])], columns=["ltv"], all_or_nothing=True))
    assert clean.rows_stored == 1
    assert await batch.profile("c1") == {"ltv": 1}


async def test_validate_only_reports_and_stores_nothing(batch: Batch) -> None:
    report = await batch.send(text([(2, "c1", ["1"]), (3, "c2", ["x"])], columns=["ltv"], validate_only=True))
    assert (report.rows_received, report.rows_stored, report.rows_rejected) == (2, 1, 1)
    assert await batch.profile("c1") is None


async def test_order_holds_across_the_parts_merged_along_the_way(batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    # Merging every two rows puts one customer's rows in different parts.
    monkeypatch.setattr(StagedMerge, "MERGE_EVERY", 2)
    monkeypatch.setattr(StagedMerge, "QUEUE_PARTS", 1)

    def typed(number: int, customer: str, **values: pb.Value) -> pb.ProfileRow:
        return pb.ProfileRow(row_number=number, customer_id=customer, data=values)

    messages = [
        pb.MergeProfilesRequest(rows=[typed(1, "c1", ltv=pb.Value(long_value=1), name=pb.Value(string_value="a"))]),
        pb.MergeProfilesRequest(rows=[typed(2, "new", ltv=pb.Value(long_value=9), name=pb.Value(null_value=True))]),
        pb.MergeProfilesRequest(rows=[typed(3, "c1", ltv=pb.Value(long_value=2))]),
        pb.MergeProfilesRequest(rows=[typed(4, "c1", name=pb.Value(null_value=True))]),
        pb.MergeProfilesRequest(rows=[typed(5, "c1", vip=pb.Value(bool_value=True))]),
    ]
    result = await batch.send(*messages)
    assert result.rows_stored == 5
    assert await batch.profile("c1") == {"ltv": 2, "vip": True}
    assert await batch.profile("new") == {"ltv": 9}


async def test_a_merge_with_progress_reports_after_each_message_then_the_result(batch: Batch) -> None:
    messages = [
        text([(2, "c1", ["1"]), (3, "c2", ["x"])], columns=["ltv"]),
        text([(4, "c3", ["3"])]),
        text([(5, "c4", ["4"]), (6, "", ["5"])]),
    ]
    messages[0].dcp_service_id = batch.service
    messages[0].dcp_datasource_id = batch.table

    async def stream() -> AsyncIterator[pb.MergeProfilesRequest]:
        for message in messages:
            yield message

    call = batch.stub.MergeProfilesWithProgress(stream(), metadata=batch.account.metadata)
    updates = [update async for update in call]
    assert [u.WhichOneof("update") for u in updates] == ["progress", "progress", "progress", "result"]
    assert [(u.progress.rows_received, u.progress.rows_valid, u.progress.rows_rejected) for u in updates[:3]] == [
        (2, 1, 1),
        (3, 2, 1),
        (5, 3, 2),
    ]
    assert (updates[-1].result.rows_stored, updates[-1].result.rows_rejected) == (3, 2)
    assert await batch.profile("c4") == {"ltv": 4}

    async def anonymously() -> None:
        # Written as the importer writes: a call the server has already ended then says why.
        refused = batch.stub.MergeProfilesWithProgress(metadata=())  # type: ignore[call-arg]
        await refused.write(messages[0])
        await refused.done_writing()
        [update async for update in refused]

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await anonymously()
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED

    async def bad_columns() -> AsyncIterator[pb.MergeProfilesRequest]:
        yield text([(2, "c9", ["1"])], columns=["nope"], dcp_service_id=batch.service, dcp_datasource_id=batch.table)

    unknown = batch.stub.MergeProfilesWithProgress(bad_columns(), metadata=batch.account.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        [update async for update in unknown]
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await batch.profile("c9") is None
