"""An upload being imported shows in its history, read over HTTP, how far it has come.

Files are applied in a `dcp import-worker` process, as `dcp up` applies them, so
the readings are answered by a server whose event loop does none of the import's
work. Applied in the serving process (`DCP_IMPORT_WORKER_PROCESS=off`, for tests
only), parsing and checking would hold that loop, and on a loaded machine the
server could answer no reading until the file had been read.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services._runtime.settings import Settings
from tests.conftest import MakeAccount
from tests.integration.test_import_limits import Platform, _platform
from tests.integration.test_imports import FINISHED, V1, Table, make_table

ROWS = 200_000
BAD_EVERY = 1000


def big_file(rows: int = ROWS, *, bad_every: int = BAD_EVERY, bad_from: int = 0, name_chars: int = 0) -> bytes:
    """`rows` data rows; from row `bad_from` on, every `bad_every`-th has a value its attribute refuses.

    With `name_chars`, each row has a name that long too, for a file of many more bytes than rows.
    """
    name = "n" * name_chars
    lines = ["customerId,ltv" + (",name" if name else "")]
    lines += [
        f"c{row},{'ten' if row >= bad_from and row % bad_every == bad_every - 1 else row}"
        + (f",{name}" if name else "")
        for row in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


async def watch(table: Table, upload_id: int | None = None, within: float = 120) -> list[dict[str, Any]]:
    """Every reading of the upload's history entry, as fast as they come, until it has finished."""
    readings: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while True:
        if upload_id is None:
            uploads = await table.uploads()
            if uploads:
                upload_id = uploads[0]["id"]
        else:
            response = await table.http.get(
                f"{V1}/dcp_datasources/{table.id}/uploads/{upload_id}", headers=table.account.headers
            )
            assert response.status_code == 200, response.text
            readings.append(response.json())
            if readings[-1]["status"] in FINISHED:
                return readings
        assert time.monotonic() < deadline, readings[-3:]
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
async def apart(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Platform]:
    """A platform whose uploads are applied in a `dcp import-worker` process, as `dcp up` applies them;
    bombs are read through, to have imports that run long."""
    async with _platform(settings, pool, "progress", DCP_IMPORT_MAX_COMPRESSION_RATIO="1000000") as running:
        yield running


@pytest.fixture
async def client(apart: Platform) -> AsyncIterator[httpx.AsyncClient]:
    await apart.store.ensure_bucket("us-east-1")
    await apart.store.keep_versions()
    async with httpx.AsyncClient(base_url=apart.http_url, timeout=30) as client:
        yield client


@pytest.fixture
async def table(apart: Platform, client: httpx.AsyncClient, make_account: MakeAccount) -> Table:
    return await make_table(client, apart.store, await make_account())


async def test_rows_read_stored_and_refused_so_far_show_while_a_file_is_imported(table: Table) -> None:
    # Names make the file some 16 MiB, read in many pieces, so the bytes read move in many steps too.
    body = big_file(name_chars=60)
    await table.put("big.csv", body)
    readings = await watch(table)
    final = readings[-1]
    bad = ROWS // BAD_EVERY
    assert (final["status"], final["rows_total"], final["rows_ok"], final["rows_failed"]) == (
        "partially_processed",
        ROWS,
        ROWS - bad,
        bad,
    )
    # Read whole: every byte of the object.
    assert final["bytes_read"] == final["size_bytes"] == len(body)
    meanwhile = [r for r in readings if r["status"] == "processing"]
    assert any(0 < r["rows_total"] < ROWS for r in meanwhile), meanwhile[-3:]
    assert any(r["rows_ok"] > 0 and r["rows_failed"] > 0 for r in meanwhile), meanwhile[-3:]
    for reading in meanwhile:
        assert reading["rows_ok"] + reading["rows_failed"] <= reading["rows_total"] <= ROWS
        assert reading["size_bytes"] == len(body)
    # The bytes read grow from one reading to a later one while the file is still being read.
    read_meanwhile = sorted({r["bytes_read"] for r in meanwhile if r["bytes_read"] > 0})
    assert len(read_meanwhile) >= 2, [r["bytes_read"] for r in meanwhile]
    assert read_meanwhile[-1] <= len(body)
    # Never backwards.
    for earlier, later in itertools.pairwise(readings):
        assert all(earlier[k] <= later[k] for k in ("rows_total", "rows_ok", "rows_failed", "bytes_read")), (
            earlier,
            later,
        )


async def test_an_all_or_nothing_file_never_shows_rows_it_will_not_store(
    apart: Platform, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    strict = await make_table(client, apart.store, await make_account(), import_mode="all_or_nothing")
    # Bad rows near the end only: until then the file may yet be stored whole.
    await strict.put("big.csv", big_file(bad_from=ROWS - 10 * BAD_EVERY))
    readings = await watch(strict)
    final = readings[-1]
    assert (final["status"], final["rows_total"], final["rows_ok"], final["rows_failed"]) == ("failed", ROWS, 0, 10)
    meanwhile = [r for r in readings if r["status"] == "processing"]
    assert any(0 < r["rows_ok"] <= r["rows_total"] < ROWS for r in meanwhile), meanwhile[-3:]
    # Once a row is refused, none of the file will be stored, and the counts say so at once.
    assert all(r["rows_ok"] == 0 for r in readings if r["rows_failed"] > 0)
    assert await strict.profile("c0") is None


def _rows_then_blank_lines(rows: int) -> bytes:
    """Rows enough to be checked (and counted) as the file is read, then more blank lines than a test waits for."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(big_file(rows, bad_every=10**9))]
    block = b"\n" * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(400)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def test_a_cancelled_file_keeps_no_count_of_rows_it_did_not_store(
    table: Table, client: httpx.AsyncClient
) -> None:
    await table.put("slow.csv.gz", _rows_then_blank_lines(100_000))
    deadline = time.monotonic() + 60
    while True:
        uploads = await table.uploads()
        if uploads and uploads[0]["status"] == "processing" and uploads[0]["rows_ok"] > 0:
            break
        assert not uploads or uploads[0]["status"] not in FINISHED, uploads
        assert time.monotonic() < deadline, uploads
        await asyncio.sleep(0.02)
    upload_id = uploads[0]["id"]
    cancel = await client.post(
        f"{V1}/dcp_datasources/{table.id}/uploads/{upload_id}/cancel", headers=table.account.headers
    )
    assert cancel.status_code == 202, cancel.text
    final = (await watch(table, upload_id))[-1]
    assert final["status"] == "failed", final
    assert "cancelled on request" in final["error"]
    # Rows and bytes read stay counted, as before; none was stored or refused. The bytes are the
    # compressed ones, as the object's size counts them: the file inflates to some 400 MiB.
    assert final["rows_total"] > 0
    assert 0 < final["bytes_read"] <= final["size_bytes"]
    assert (final["rows_ok"], final["rows_failed"]) == (0, 0)
    assert await table.profile("c0") is None
