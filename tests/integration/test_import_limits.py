"""A file that breaks a limit fails with a clear error; a running import stops when cancelled or archived."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import httpx
import pytest

from services import import_worker
from services._runtime.s3 import ObjectStore, open_store
from services._runtime.settings import Settings
from services._runtime.supervisor import ChildProcess
from services.wiring.keys import identity_signer
from services.wiring.suite import start_suite
from tests.conftest import MakeAccount, empty_tables
from tests.integration.test_imports import V1, Table, make_table

MAX_ROWS = 100_000
MAX_INFLATED = 5_000_000


def gzip_of_blank_lines(header: bytes, megabytes: int) -> bytes:
    """A header and then `megabytes` MiB of line breaks, gzipped: a tiny file that inflates enormously."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    block = b"\n" * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(megabytes)]
    parts.append(compressor.flush())
    return b"".join(parts)


@dataclass
class Platform:
    http_url: str
    store: ObjectStore
    worker: ChildProcess


@contextlib.asynccontextmanager
async def _platform(
    settings: Settings, pool: asyncpg.Pool, bucket: str, checks: dict[str, Any] | None = None, **limits: str
) -> AsyncIterator[Platform]:
    """Another platform on the same database, its worker in a process of its own as `dcp up` runs it,
    with its own limits (`limits` for the worker, `checks` for `validate`) and a bucket of its own
    (so only it imports these files)."""
    changed = settings.with_overrides(
        s3=replace(settings.s3, bucket=bucket), imports=replace(settings.imports, **(checks or {}))
    )
    signer = identity_signer(changed, allow_generated=False)
    assert changed.database_url is not None
    # Starting seals stored secrets, so rows another module left behind must not be there.
    await empty_tables(pool)
    async with open_store(changed.s3) as store:
        await store.ensure_bucket("us-east-1")
        suite = await start_suite(changed, pool, signer, store=store, import_worker=False)
        worker = None
        try:
            worker = await import_worker.start_import_worker_process(
                changed,
                {
                    "DCP_DATABASE_URL": changed.database_url,
                    "DCP_SCHEMA_ADDRESS": suite.grpc_address,
                    "DCP_IMPORT_POLL_SECONDS": "0.2",
                    "DCP_IMPORT_CANCEL_CHECK_SECONDS": "0.2",
                    "DCP_LOG_LEVEL": "WARNING",
                    **import_worker.store_wiring(changed.s3),
                    **limits,
                },
            )
            yield Platform(suite.http_url, store, worker)
        finally:
            if worker is not None:
                await worker.stop(5)
            await suite.stop(1)


@pytest.fixture(scope="module")
async def limited(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Platform]:
    async with _platform(
        settings,
        pool,
        "limits-small",
        DCP_IMPORT_MAX_ROWS=str(MAX_ROWS),
        DCP_IMPORT_MAX_INFLATED_BYTES=str(MAX_INFLATED),
        DCP_IMPORT_MAX_COMPRESSION_RATIO="20",
        DCP_IMPORT_RATIO_CHECK_BYTES=str(64 * 1024),
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def lenient(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Platform]:
    """Limits so wide that a bomb is read through (slowly), to have an import that runs long."""
    async with _platform(settings, pool, "limits-wide", DCP_IMPORT_MAX_COMPRESSION_RATIO="1000000") as running:
        yield running


@pytest.fixture(scope="module")
async def renewing(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Platform]:
    """A worker replaced as soon as it has grown 8 MiB while idle."""
    async with _platform(
        settings, pool, "limits-renew", DCP_IMPORT_WORKER_MAX_GROWTH_BYTES=str(8 * 1024**2)
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def hurried(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Platform]:
    """`validate` gives a file two seconds, and reads bombs through rather than refusing them."""
    async with _platform(
        settings, pool, "limits-hurry", checks={"validate_seconds": 2.0, "max_compression_ratio": 1_000_000}
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def _table(running: Platform, make_account: MakeAccount) -> AsyncIterator[Table]:
    # The shared S3 server is reset between tests: the bucket comes back for each.
    await running.store.ensure_bucket("us-east-1")
    await running.store.keep_versions()
    async with httpx.AsyncClient(base_url=running.http_url, timeout=30) as client:
        yield await make_table(client, running.store, await make_account())


@pytest.fixture
async def small(limited: Platform, make_account: MakeAccount) -> AsyncIterator[Table]:
    async with _table(limited, make_account) as table:
        yield table


@pytest.fixture
async def patient(lenient: Platform, make_account: MakeAccount) -> AsyncIterator[Table]:
    async with _table(lenient, make_account) as table:
        yield table


async def test_a_gzip_bomb_fails_as_one_before_it_is_read_through(small: Table) -> None:
    bomb = gzip_of_blank_lines(b"customerId,name\n", 64)
    assert len(bomb) < 100_000
    await small.put("bomb.csv.gz", bomb)
    [upload] = await small.finished(within=20)
    assert upload["status"] == "failed"
    assert "more than 20 times its compressed size" in upload["error"]
    assert "decompression bomb" in upload["error"]


async def test_a_file_with_more_text_than_allowed_fails(small: Table) -> None:
    rows = "".join(f"c{i},{'x' * 100}\n" for i in range(50_000))
    assert len(rows) > MAX_INFLATED
    await small.put("long.csv", "customerId,name\n" + rows)
    [upload] = await small.finished()
    assert upload["status"] == "failed"
    assert f"more than {MAX_INFLATED} bytes of text" in upload["error"]


async def test_a_file_with_more_rows_than_allowed_stores_nothing(small: Table) -> None:
    await small.put("many.csv", "customerId,name\n" + "".join(f"c{i},n{i}\n" for i in range(MAX_ROWS + 50)))
    [upload] = await small.finished()
    assert upload["status"] == "failed"
    assert f"more than {MAX_ROWS} data rows" in upload["error"]
    assert upload["rows_ok"] == 0
    assert await small.profile("c1") is None


async def test_a_file_within_the_limits_imports(small: Table) -> None:
    await small.put("few.csv", "customerId,name\n" + "".join(f"c{i},n{i}\n" for i in range(MAX_ROWS)))
    [upload] = await small.finished()
    assert (upload["status"], upload["rows_ok"]) == ("processed", MAX_ROWS)


async def test_validate_refuses_a_bomb_with_the_same_error(small: Table) -> None:
    response = await small.http.post(
        f"{V1}/dcp_datasources/{small.id}/validate?file_name=x.csv.gz",
        content=gzip_of_blank_lines(b"customerId,name\n", 64),
        headers=small.account.headers,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["status"] == "failed"
    assert "decompression bomb" in report["error"]


async def _processing(table: Table, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        uploads = await table.uploads()
        if uploads and uploads[0]["status"] == "processing":
            return uploads[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the upload never started: {await table.uploads()}")


async def _reading(table: Table, within: float = 20.0) -> dict[str, Any]:
    """The upload once its import has read some of the file: claimed is not yet begun (see the archiving test)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        uploads = await table.uploads()
        if uploads and uploads[0]["status"] == "processing" and uploads[0]["bytes_read"] > 0:
            return uploads[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the import never began reading: {await table.uploads()}")


async def _stopped_within(table: Table, upload_id: int, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        response = await table.http.get(
            f"{V1}/dcp_datasources/{table.id}/uploads/{upload_id}", headers=table.account.headers
        )
        upload: dict[str, Any] = response.json()
        if upload["status"] != "processing":
            return upload
        assert time.monotonic() < deadline, f"still processing after {seconds} s: {upload}"
        await asyncio.sleep(0.1)


async def test_cancel_stops_a_running_import_within_seconds_and_says_why(
    patient: Table, make_account: MakeAccount
) -> None:
    # Rows first (which must not be stored), then a long stretch of blank lines to keep the import busy.
    await patient.put("slow.csv.gz", _rows_then_blank_lines())
    upload = await _processing(patient)
    response = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{upload['id']}/cancel", headers=patient.account.headers
    )
    assert response.status_code == 202, response.text
    asked = time.monotonic()
    stopped = await _stopped_within(patient, upload["id"], 5)
    assert time.monotonic() - asked < 5
    assert stopped["status"] == "failed"
    assert "cancelled on request" in stopped["error"]
    assert await patient.profile("kept-out") is None
    # A finished upload cannot be cancelled; another account's cannot be seen.
    again = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{upload['id']}/cancel", headers=patient.account.headers
    )
    assert again.status_code == 202  # the same cancel again is answered as done
    stranger = await make_account()
    other = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{upload['id']}/cancel", headers=stranger.headers
    )
    assert other.status_code == 404


async def test_archiving_the_table_stops_its_running_import(patient: Table) -> None:
    await patient.put("slow.csv.gz", _rows_then_blank_lines())
    # Claimed but not yet begun, an import whose table is archived refuses its file as one put into an
    # archived table's path, with that message: this test is about an import stopped midway.
    upload = await _reading(patient)
    response = await patient.http.delete(f"{V1}/dcp_datasources/{patient.id}", headers=patient.account.headers)
    assert response.status_code == 204, response.text
    asked = time.monotonic()
    stopped = await _stopped_within(patient, upload["id"], 5)
    assert time.monotonic() - asked < 5
    assert stopped["status"] == "failed"
    assert f"table {patient.id} was archived during the import" in stopped["error"]


async def test_a_pending_upload_cancels_at_once_and_a_finished_one_cannot_be(patient: Table) -> None:
    # Files of one table are applied in order: the second waits, pending, behind the slow first.
    await patient.put("slow.csv.gz", _rows_then_blank_lines())
    running = await _processing(patient)
    await patient.put("waiting.csv", "customerId,name\nwaiting,a\n")
    deadline = time.monotonic() + 20
    while len(uploads := await patient.uploads()) < 2:
        assert time.monotonic() < deadline, uploads
        await asyncio.sleep(0.05)
    waiting = uploads[0]
    assert waiting["status"] == "pending"
    response = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{waiting['id']}/cancel", headers=patient.account.headers
    )
    assert response.status_code == 202, response.text
    answered = response.json()
    assert answered["status"] == "failed"
    assert "cancelled on request" in answered["error"]

    cancel_running = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{running['id']}/cancel", headers=patient.account.headers
    )
    assert cancel_running.status_code == 202
    await _stopped_within(patient, running["id"], 5)
    assert await patient.profile("waiting") is None
    finished = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{running['id']}/cancel", headers=patient.account.headers
    )
    # Asked again once stopped, the same cancel is answered as done; any other finished upload is refused.
    assert finished.status_code == 202

    await patient.put("done.csv", "customerId,name\nc1,a\n")
    deadline = time.monotonic() + 20
    while (done := (await patient.uploads())[0])["file_name"] != "done.csv" or done["status"] != "processed":
        assert time.monotonic() < deadline, done
        await asyncio.sleep(0.05)
    response = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/{done['id']}/cancel", headers=patient.account.headers
    )
    assert response.status_code == 400
    assert response.json()["code"] == "UPLOAD_FINISHED"
    missing = await patient.http.post(
        f"{V1}/dcp_datasources/{patient.id}/uploads/999999/cancel", headers=patient.account.headers
    )
    assert missing.status_code == 404


def _rows_then_blank_lines() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(b"customerId,name\nkept-out,x\n")]
    block = b"\n" * (1024 * 1024)
    # Far more blank lines than can be read in the seconds the test waits.
    parts += [compressor.compress(block) for _ in range(400)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def test_a_worker_grown_by_a_large_file_makes_way_for_a_fresh_one_that_goes_on_importing(
    renewing: Platform, make_account: MakeAccount
) -> None:
    async with _table(renewing, make_account) as table:
        first_pid = renewing.worker.pid
        rows = "".join(f"c{i},{'n' * 40}{i}\n" for i in range(200_000))
        await table.put("large.csv", "customerId,name\n" + rows)
        [large] = await table.finished(within=60)
        assert (large["status"], large["rows_ok"]) == ("processed", 200_000)
        deadline = time.monotonic() + 30
        # The count goes up as the grown worker exits; its successor's pid shows once it has started.
        while renewing.worker.renewals == 0 or renewing.worker.pid in (None, first_pid):
            assert time.monotonic() < deadline, "the grown worker was never replaced by a fresh process"
            await asyncio.sleep(0.1)
        # A fresh worker with nothing to do is left alone.
        await asyncio.sleep(3)
        assert renewing.worker.renewals == 1
        await table.put("after.csv", "customerId,name\nlater,x\n")
        [after, _] = await table.finished(count=2, within=60)
        assert (after["file_name"], after["status"]) == ("after.csv", "processed")
        assert await table.profile("later") == {"name": "x"}


async def test_a_check_that_runs_out_of_time_says_so_and_one_account_checks_one_file_at_a_time(
    hurried: Platform, make_account: MakeAccount
) -> None:
    async with _table(hurried, make_account) as table:

        async def validate(headers: dict[str, str], body: bytes) -> httpx.Response:
            return await table.http.post(
                f"{V1}/dcp_datasources/{table.id}/validate?file_name=x.csv.gz", content=body, headers=headers
            )

        bomb = _rows_then_blank_lines()
        slow = asyncio.create_task(validate(table.account.headers, bomb))
        small = gzip_of_blank_lines(b"customerId,name\n", 1)
        await asyncio.sleep(0.5)
        # Should the large file's check not have begun yet (a loaded machine), a small file is checked at
        # once; from the moment it has, the small one waits its turn.
        second = await validate(table.account.headers, small)
        while second.status_code == 200 and not slow.done():
            await asyncio.sleep(0.1)
            second = await validate(table.account.headers, small)
        assert second.status_code == 429, second.text
        assert second.json()["code"] == "CHECK_IN_PROGRESS"
        started = time.monotonic()
        answer = await slow
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "CHECK_TOO_LONG"
        assert "could not be checked within 2 s" in answer.json()["message"]
        assert time.monotonic() - started < 5
        # Once it is done, the account checks its next file as usual.
        after = await validate(table.account.headers, gzip_of_blank_lines(b"customerId,name\nc1,a\n", 1))
        assert after.status_code == 200, after.text
        assert after.json()["rows_total"] == 1
