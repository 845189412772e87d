"""Exports survive the process running them: an unfinished export is run again, by one runner only; a running
export shows how far it has come."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import asyncpg
import httpx
import pytest

from services._runtime.s3 import ObjectStore
from services.profiles import exports
from services.profiles.export_repository import ExportRecord, ExportsRepository
from tests.conftest import MakeAccount, TestAccount

V1 = "/experiment/v1"


async def _table_with_profiles(http: httpx.AsyncClient, account: TestAccount) -> tuple[int, int]:
    async def post(path: str, body: Any) -> dict[str, Any]:
        response = await http.post(path, json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    service = (await post(f"{V1}/dcp_services", {"name": "shop"}))["id"]
    table = (
        await post(
            f"{V1}/dcp_services/{service}/dcp_datasources",
            {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        )
    )["id"]
    await post(f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", {"name": "ltv", "datatype": "long"})
    for i in range(3):
        await post(f"/api/customer_profile/{service}/{table}/c{i}", {"data": {"ltv": i}})
    return service, table


async def _left_running(pool: asyncpg.Pool, account: int, service: int, table: int) -> ExportRecord:
    """An export as a replica that died mid-way leaves it: running, its lock gone with its session."""
    record = await ExportsRepository(pool).create(
        account,
        service,
        datasource_id=table,
        audience_id=None,
        export_format="csv",
        bucket="optimizely-import",
        key_of=lambda export_id: f"exports/{service}/table-{table}-export-{export_id}.csv",
    )
    await pool.execute("UPDATE profiles.exports SET status = 'running', attempts = 1 WHERE id = $1", record.id)
    return record


async def _status(http: httpx.AsyncClient, account: TestAccount, table: int, export_id: int) -> dict[str, Any]:
    response = await http.get(f"{V1}/dcp_datasources/{table}/exports/{export_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_an_export_cut_short_by_a_crash_is_run_again(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, store: ObjectStore
) -> None:
    account = await make_account()
    service, table = await _table_with_profiles(http, account)
    record = await _left_running(pool, account.id, service, table)
    deadline = time.monotonic() + 20
    while (export := await _status(http, account, table, record.id))["status"] != "done":
        assert time.monotonic() < deadline, export
        await asyncio.sleep(0.1)
    assert export["row_count"] == 3
    stored = await store.head(record.key)
    assert stored is not None
    body = b"".join([chunk async for chunk in store.chunks(stored)])
    assert body.decode().splitlines()[0] == "customerId,ltv"
    assert sorted(body.decode().splitlines()[1:]) == ['"c0","0"', '"c1","1"', '"c2","2"']
    assert await pool.fetchval("SELECT attempts FROM profiles.exports WHERE id = $1", record.id) == 2


async def test_an_export_held_by_a_running_replica_is_left_to_it(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, store: ObjectStore
) -> None:
    account = await make_account()
    service, table = await _table_with_profiles(http, account)
    record = await _left_running(pool, account.id, service, table)
    async with pool.acquire() as replica:
        # Another replica holds it, as its runner does while it works.
        assert await ExportsRepository(pool).claim(replica, record.id) is not None
        await asyncio.sleep(1.0)  # several of the runner's rounds
        assert (await _status(http, account, table, record.id))["status"] == "running"
        assert await pool.fetchval("SELECT attempts FROM profiles.exports WHERE id = $1", record.id) == 2
        await ExportsRepository(pool).finish(record.id, row_count=0, size_bytes=0)
        await ExportsRepository(pool).release(replica, record.id)
    await asyncio.sleep(0.5)
    assert await pool.fetchval("SELECT attempts FROM profiles.exports WHERE id = $1", record.id) == 2
    assert (await _status(http, account, table, record.id))["status"] == "done"


# Enough profiles that exporting them takes about a second even on a fast machine, many times the
# progress period the test sets.
BULK_ROWS = 600_000
TEST_PROGRESS_SECONDS = 0.05


async def test_a_running_export_shows_the_rows_and_bytes_written_so_far(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    pool: asyncpg.Pool,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The platform runs in this process: its export shows progress every 50 ms here instead of every
    # half second, so that how fast the machine exports does not decide how many readings there are.
    monkeypatch.setattr(exports, "PROGRESS_SECONDS", TEST_PROGRESS_SECONDS)
    account = await make_account()
    _, table = await _table_with_profiles(http, account)
    for name, datatype in (("name", "string"), ("score", "double")):
        response = await http.post(
            f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes",
            json={"name": name, "datatype": datatype},
            headers=account.headers,
        )
        assert response.status_code == 201, response.text
    attributes = await http.get(f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", headers=account.headers)
    ids = {a["name"]: str(a["id"]) for a in attributes.json()}
    # Written straight to the table: as many through the API would take minutes on a small machine.
    await pool.execute(
        "INSERT INTO profiles.profiles (customer_id, datasource_id, data)"
        " SELECT 'bulk-' || g, $1, jsonb_build_object($2::text, g, $3::text, 'customer ' || g, $4::text, g / 8.0)"
        " FROM generate_series(1, $5) g",
        table,
        ids["ltv"],
        ids["name"],
        ids["score"],
        BULK_ROWS,
    )
    started = await http.post(
        f"{V1}/dcp_datasources/{table}/exports", json={"format": "jsonl"}, headers=account.headers
    )
    assert started.status_code == 201, started.text
    readings = [started.json()]
    deadline = time.monotonic() + 300
    while readings[-1]["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, readings[-3:]
        await asyncio.sleep(0.05)
        readings.append(await _status(http, account, table, readings[0]["id"]))
    final = readings[-1]
    assert final["status"] == "done", final
    assert final["row_count"] == BULK_ROWS + 3
    stored = await store.head(final["key"])
    assert stored is not None
    assert final["size_bytes"] == stored.size
    running = [r for r in readings if r["status"] == "running"]
    # The rows written grow from one reading to a later one while the export runs, and so do the bytes.
    rows_meanwhile = sorted({r["row_count"] for r in running if r["row_count"] > 0})
    assert len(rows_meanwhile) >= 2, [(r["row_count"], r["size_bytes"]) for r in running]
    assert rows_meanwhile[-1] <= final["row_count"]
    bytes_meanwhile = sorted({r["size_bytes"] for r in running if r["size_bytes"] > 0})
    assert len(bytes_meanwhile) >= 2, [(r["row_count"], r["size_bytes"]) for r in running]
    assert bytes_meanwhile[-1] <= final["size_bytes"]
    # Never backwards.
    for earlier, later in itertools.pairwise(readings):
        assert earlier["row_count"] <= later["row_count"], (earlier, later)
        assert earlier["size_bytes"] <= later["size_bytes"], (earlier, later)
