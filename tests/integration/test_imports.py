"""Bulk upload end to end: files put into the S3 bucket, imported, and told of in the upload history."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from dcp.imports.v1 import imports_service_pb2 as imports_pb
from dcp.imports.v1 import imports_service_pb2_grpc as imports_grpc
from services._runtime.s3 import ObjectStore
from services.domain.limits import MAX_VALIDATE_BYTES
from tests.conftest import MakeAccount, RunningPlatform, TestAccount

V1 = "/experiment/v1"
ATTRIBUTES: list[dict[str, Any]] = [
    {"name": "name", "datatype": "string"},
    {"name": "height", "datatype": "string"},
    {"name": "ltv", "datatype": "long"},
    {"name": "score", "datatype": "double"},
    {"name": "vip", "datatype": "bool"},
    {"name": "day", "datatype": "datetime", "format": "yyyy-mm-dd"},
    {"name": "at", "datatype": "datetime", "format": "yyyy-mm-ddThh:mm:ssZ"},
    {"name": "ms", "datatype": "datetime", "format": "epoch"},
]
FINISHED = {"processed", "partially_processed", "failed"}


@dataclass
class Table:
    http: httpx.AsyncClient
    store: ObjectStore
    account: TestAccount
    service: int
    id: int
    s3_path: str

    async def put(self, name: str, body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        await self.store.put(f"{self.s3_path}/{name}", data)

    async def uploads(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{V1}/dcp_datasources/{self.id}/uploads", headers=self.account.headers)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    async def finished(self, count: int = 1, within: float = 30.0) -> list[dict[str, Any]]:
        """The history, once `count` uploads have finished (newest first)."""
        deadline = time.monotonic() + within
        while True:
            uploads = await self.uploads()
            if len(uploads) >= count and all(u["status"] in FINISHED for u in uploads):
                return uploads
            if time.monotonic() > deadline:
                raise AssertionError(f"uploads did not finish: {uploads}")
            await asyncio.sleep(0.1)

    async def errors(self, upload_id: int) -> dict[str, Any]:
        response = await self.http.get(
            f"{V1}/dcp_datasources/{self.id}/uploads/{upload_id}/errors", headers=self.account.headers
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        response = await self.http.get(
            f"/api/customer_profile/{self.service}/{self.id}/{customer_id}", headers=self.account.headers
        )
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data


async def _post(http: httpx.AsyncClient, account: TestAccount, path: str, body: Any) -> dict[str, Any]:
    response = await http.post(path, json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def make_table(
    http: httpx.AsyncClient, store: ObjectStore, account: TestAccount, *, import_mode: str | None = None
) -> Table:
    services = (await http.get(f"{V1}/dcp_services", headers=account.headers)).json()
    service = services[0] if services else await _post(http, account, f"{V1}/dcp_services", {"name": "shop"})
    body: dict[str, Any] = {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"}
    if import_mode:
        body["import_mode"] = import_mode
    table = await _post(http, account, f"{V1}/dcp_services/{service['id']}/dcp_datasources", body)
    for attribute in ATTRIBUTES:
        await _post(http, account, f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", attribute)
    return Table(http, store, account, service["id"], table["id"], table["s3_path"])


@pytest.fixture
async def table(http: httpx.AsyncClient, store: ObjectStore, make_account: MakeAccount) -> Table:
    return await make_table(http, store, await make_account())


async def test_the_seed_example_row_imports_with_its_quotes(table: Table) -> None:
    await table.put(
        "people.csv",
        'customerId, name, height\r\n"CustomerId1", "John Doe", "Height: 6\'1"""\r\n',
    )
    [upload] = await table.finished()
    assert upload["status"] == "processed", upload
    assert (upload["rows_total"], upload["rows_ok"], upload["rows_failed"]) == (1, 1, 0)
    assert upload["file_name"] == "people.csv"
    assert upload["s3_key"] == f"{table.s3_path}/people.csv"
    assert upload["received_at"]
    assert upload["started_at"]
    assert upload["finished_at"]
    assert await table.profile("CustomerId1") == {"name": "John Doe", "height": "Height: 6'1\""}


async def test_every_datatype_imports_from_text_and_empty_cells_leave_values_alone(table: Table) -> None:
    await table.http.post(
        f"/api/customer_profile/{table.service}/{table.id}/c1",
        json={"data": {"name": "kept", "ltv": 1}},
        headers=table.account.headers,
    )
    await table.put(
        "all.csv",
        "CUSTOMERID,ltv,score,vip,day,at,ms,name\n"
        "c1,42,1.5,TRUE,2024-02-29,2024-02-29T23:59:59Z,1457385393173,\n"
        "c2,-7,3,false,2023-01-01,2023-01-01T00:00:00Z,0,Zoë\n",
    )
    [upload] = await table.finished()
    assert upload["status"] == "processed", upload
    assert await table.profile("c1") == {
        "name": "kept",
        "ltv": 42,
        "score": 1.5,
        "vip": True,
        "day": "2024-02-29",
        "at": "2024-02-29T23:59:59Z",
        "ms": 1457385393173,
    }
    c2 = await table.profile("c2")
    assert c2 is not None
    assert (c2["score"], c2["vip"], c2["name"]) == (3.0, False, "Zoë")


async def test_bad_rows_are_reported_and_good_rows_stored(table: Table) -> None:
    await table.put(
        "mixed.csv",
        "customerId,ltv,vip,day\n"
        "good1,1,true,2024-01-01\n"
        "bad1,1.5,true,2024-01-01\n"
        ",2,true,2024-01-01\n"
        "bad3,3,yes,2023-02-29\n"
        "bad4,4\n"
        "good2,5,false,\n",
    )
    [upload] = await table.finished()
    assert upload["status"] == "partially_processed"
    assert (upload["rows_total"], upload["rows_ok"], upload["rows_failed"]) == (6, 2, 4)
    report = await table.errors(upload["id"])
    assert report["rows_failed"] == 4
    problems = [(e["row"], e["column"]) for e in report["errors"]]
    assert problems == [(3, "ltv"), (4, "customerId"), (5, "vip"), (5, "day"), (6, "")]
    by_place = {(e["row"], e["column"]): e for e in report["errors"]}
    assert by_place[(3, "ltv")]["value"] == "1.5"
    assert "integer" in by_place[(3, "ltv")]["message"]
    assert "2 fields" in by_place[(6, "")]["message"]
    assert await table.profile("good1") == {"ltv": 1, "vip": True, "day": "2024-01-01"}
    assert await table.profile("good2") == {"ltv": 5, "vip": False}
    for customer in ("bad1", "bad3", "bad4"):
        assert await table.profile(customer) is None

    csv_report = await table.http.get(
        f"{V1}/dcp_datasources/{table.id}/uploads/{upload['id']}/errors?format=csv", headers=table.account.headers
    )
    assert csv_report.status_code == 200
    assert csv_report.headers["content-type"].startswith("text/csv")
    assert csv_report.text.splitlines()[0] == "row,column,value,message"
    assert len(csv_report.text.splitlines()) == 6


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("name,ltv\n", "no customerId column"),
        ("customerId,ltv,Ltv,nope\n", "'Ltv', 'nope'"),
        ("customerId,ltv,ltv\n", "duplicate columns: 'ltv'"),
        ("customerId,CustomerID,ltv\n", "duplicate customerId"),
    ],
)
async def test_a_bad_header_fails_the_whole_file_before_any_row(table: Table, header: str, reason: str) -> None:
    await table.put("bad-header.csv", header + "c1,1,2,3\n")
    [upload] = await table.finished()
    assert upload["status"] == "failed"
    assert reason in upload["error"]
    assert upload["rows_ok"] == 0
    assert await table.profile("c1") is None


async def test_all_or_nothing_tables_store_nothing_from_a_file_with_a_bad_row(
    http: httpx.AsyncClient, store: ObjectStore, make_account: MakeAccount
) -> None:
    table = await make_table(http, store, await make_account(), import_mode="all_or_nothing")
    await table.put("strict.csv", "customerId,ltv\nc1,1\nc2,oops\nc3,3\n")
    [upload] = await table.finished()
    assert upload["status"] == "failed"
    assert "all or nothing" in upload["error"]
    assert (upload["rows_total"], upload["rows_ok"], upload["rows_failed"]) == (3, 0, 1)
    assert [e["row"] for e in (await table.errors(upload["id"]))["errors"]] == [3]
    assert await table.profile("c1") is None

    await table.put("strict-good.csv", "customerId,ltv\nc1,1\nc3,3\n")
    uploads = await table.finished(2)
    assert uploads[0]["status"] == "processed"
    assert await table.profile("c3") == {"ltv": 3}


async def test_files_of_one_table_apply_in_arrival_order_and_later_values_win(table: Table) -> None:
    for step in range(4):
        await table.put("daily.csv", f"customerId,ltv,name\nc1,{step},v{step}\nc{step + 10},{step},\n")
        await asyncio.sleep(0.05)
    uploads = await table.finished(4)
    assert [u["status"] for u in uploads] == ["processed"] * 4
    assert [u["id"] for u in uploads] == sorted((u["id"] for u in uploads), reverse=True)
    assert all(a["finished_at"] >= b["finished_at"] for a, b in itertools.pairwise(uploads))
    assert await table.profile("c1") == {"ltv": 3, "name": "v3"}


async def test_duplicate_customers_in_one_file_apply_in_file_order(table: Table) -> None:
    await table.put("dupes.csv", "customerId,ltv,name\nc1,1,first\nc1,2,\nc1,,last\n")
    [upload] = await table.finished()
    assert upload["status"] == "processed"
    assert await table.profile("c1") == {"ltv": 2, "name": "last"}


async def test_tsv_gzip_bom_and_crlf(table: Table) -> None:
    tsv = "\ufeffcustomerId\tname\r\nt1\tcomma, inside\r\n".encode()
    gz = gzip.compress(b'customerId,name\ng1,"two\nlines"\n')
    await table.put("a.tsv", tsv)
    await table.put("b.csv.gz", gz)
    uploads = await table.finished(2)
    assert {u["status"] for u in uploads} == {"processed"}
    # Read whole, in the object's own bytes: for the gzip file the compressed ones.
    assert {u["file_name"]: (u["size_bytes"], u["bytes_read"]) for u in uploads} == {
        "a.tsv": (len(tsv), len(tsv)),
        "b.csv.gz": (len(gz), len(gz)),
    }
    assert await table.profile("t1") == {"name": "comma, inside"}
    assert await table.profile("g1") == {"name": "two\nlines"}


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("empty.csv", b"", "empty"),
        ("header-only.csv", b"customerId,ltv\n", "no data rows"),
        ("binary.csv", b"customerId,ltv\n\x00\x01\x02", "binary"),
        ("latin1.csv", "customerId,name\nc1,Zoë\n".encode("latin-1"), "UTF-8"),
        ("quotes.csv", b'customerId,name\nc1,"never closed\n', "row 2"),
        ("semicolons.csv", b"customerId;ltv\nc1;1\n", "no customerId column"),
        ("long-field.csv", b"customerId,name\nc1," + b"x" * (3 * 1024 * 1024) + b"\n", "longer than"),
    ],
)
async def test_broken_files_end_as_clear_failures(table: Table, name: str, body: bytes, reason: str) -> None:
    await table.put(name, body)
    [upload] = await table.finished()
    assert upload["status"] == "failed"
    assert reason in upload["error"], upload["error"]
    assert upload["rows_ok"] == 0


async def test_processed_files_move_to_the_archive_prefix(table: Table) -> None:
    await table.put("done.csv", "customerId,ltv\nc1,1\n")
    [upload] = await table.finished()
    deadline = time.monotonic() + 10
    while True:
        keys = [o.key async for o in table.store.list("")]
        if f"{table.s3_path}/done.csv" not in keys:
            break
        assert time.monotonic() < deadline, keys
        await asyncio.sleep(0.1)
    assert f"archive/{table.s3_path}/done.csv.{upload['id']}" in keys


async def test_keys_outside_any_table_are_ignored_and_others_still_import(table: Table) -> None:
    for key in (
        "dcp/999/999/x.csv",
        f"dcp/{table.service}/{table.id}/../{table.id}/x.csv",
        f"dcp//{table.service}/{table.id}/x.csv",
        f"{table.s3_path}/folder/",
        "elsewhere/x.csv",
    ):
        await table.store.put(key, b"customerId,ltv\nz1,1\n")
    await table.put("real.csv", "customerId,ltv\nc1,1\n")
    [upload] = await table.finished()
    assert upload["file_name"] == "real.csv"
    assert await table.profile("z1") is None


async def test_files_for_an_archived_table_are_recorded_as_failed(table: Table) -> None:
    response = await table.http.delete(f"{V1}/dcp_datasources/{table.id}", headers=table.account.headers)
    assert response.status_code == 204
    await table.put("late.csv", "customerId,ltv\nc1,1\n")
    [upload] = await table.finished()
    assert upload["status"] == "failed"
    assert "archived" in upload["error"]


async def test_template_lists_active_attributes_in_order(table: Table) -> None:
    ltv = next(
        a
        for a in (
            await table.http.get(
                f"{V1}/dcp_datasources/{table.id}/dcp_datasource_attributes", headers=table.account.headers
            )
        ).json()
        if a["name"] == "ltv"
    )
    await table.http.delete(f"{V1}/dcp_datasource_attributes/{ltv['id']}", headers=table.account.headers)
    response = await table.http.get(f"{V1}/dcp_datasources/{table.id}/template", headers=table.account.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text == "customerId,name,height,score,vip,day,at,ms\r\n"


async def test_validate_reports_without_storing(table: Table) -> None:
    response = await table.http.post(
        f"{V1}/dcp_datasources/{table.id}/validate?file_name=check.csv",
        content=b"customerId,ltv\nc1,1\nc2,x\n",
        headers=table.account.headers,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["status"], report["rows_total"], report["rows_ok"], report["rows_failed"]) == (
        "partially_processed",
        2,
        1,
        1,
    )
    assert [(e["row"], e["column"]) for e in report["errors"]] == [(3, "ltv")]
    assert await table.profile("c1") is None
    assert await table.uploads() == []


async def test_a_large_file_with_a_name_that_cannot_be_stored_is_refused_for_its_name_every_time(table: Table) -> None:
    # The name is refused before the file is read: the caller still gets that reason, not a broken stream.
    file = b"customerId,ltv\n" + b"c1,1\n" * 1_000_000
    for attempt in range(20):
        response = await table.http.post(
            f"{V1}/dcp_datasources/{table.id}/validate?file_name=..", content=file, headers=table.account.headers
        )
        assert response.status_code == 400, (attempt, response.text)
        assert response.json()["errors"][0]["field"] == "file_name"
    assert await table.profile("c1") is None


async def test_a_file_sent_over_grpc_for_checking_is_bounded_as_over_rest(
    table: Table, running: RunningPlatform
) -> None:
    stub = imports_grpc.ImportsServiceStub(running.channel)
    rows = b"c1,1\n" * (1024 * 1024 // 5)

    async def messages() -> AsyncIterator[imports_pb.ValidateFileRequest]:
        yield imports_pb.ValidateFileRequest(dcp_datasource_id=table.id, file_name="big.csv", chunk=b"customerId,ltv\n")
        for _ in range(MAX_VALIDATE_BYTES // len(rows) + 1):
            yield imports_pb.ValidateFileRequest(chunk=rows)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ValidateFile(messages(), metadata=table.account.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_VALIDATE_BYTES} bytes" in (refused.value.details() or "")

    # A file within the bound is checked as usual.
    async def within() -> AsyncIterator[imports_pb.ValidateFileRequest]:
        yield imports_pb.ValidateFileRequest(dcp_datasource_id=table.id, file_name="ok.csv", chunk=b"customerId,ltv\n")
        yield imports_pb.ValidateFileRequest(chunk=rows)

    report = await stub.ValidateFile(within(), metadata=table.account.metadata)
    assert report.rows_total == len(rows) // 5


async def test_a_presigned_url_uploads_a_file_that_is_then_imported(table: Table) -> None:
    response = await table.http.post(
        f"{V1}/dcp_datasources/{table.id}/uploads", json={"file_name": "via-url.csv"}, headers=table.account.headers
    )
    assert response.status_code == 201, response.text
    ticket = response.json()
    assert ticket["s3_key"] == f"{table.s3_path}/via-url.csv"
    async with httpx.AsyncClient() as client:
        put = await client.put(ticket["url"], content=b"customerId,ltv\nu1,7\n")
    assert put.status_code == 200, put.text
    [upload] = await table.finished()
    assert upload["status"] == "processed"
    assert await table.profile("u1") == {"ltv": 7}


async def test_the_history_pages_newest_first_with_a_link_to_the_next_page(table: Table) -> None:
    for step in range(5):
        await table.put(f"page-{step}.csv", f"customerId,ltv\nc{step},{step}\n")
    await table.finished(5)
    seen: list[str] = []
    path: str | None = f"{V1}/dcp_datasources/{table.id}/uploads?per_page=2"
    while path is not None:
        response = await table.http.get(path, headers=table.account.headers)
        assert response.status_code == 200
        page = response.json()
        assert len(page) <= 2
        seen += [upload["file_name"] for upload in page]
        link = response.headers.get("link")
        path = link[1 : link.index(">")] if link else None
    assert seen == [f"page-{step}.csv" for step in reversed(range(5))]
    refused = await table.http.get(
        f"{V1}/dcp_datasources/{table.id}/uploads?per_page=1000", headers=table.account.headers
    )
    assert refused.status_code == 400
    assert "per_page" in refused.text
