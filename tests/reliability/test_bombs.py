"""One tenant's hostile file never freezes another tenant's calls, and it can be stopped.

A real `dcp up`, with limits wide enough that the worst files are read through
rather than refused at once: a 300 KB gzip holding 300 MB of line breaks
dropped into the bucket with the table's own key, and another posted to
`validate`. While both are being worked on, a plain call answers as fast as
ever; cancelling the upload, or archiving its table, stops it within seconds.
"""

from __future__ import annotations

import statistics
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.e2e.processes import Running, base_env, scratch_database

V1 = "/experiment/v1"
WHOAMI_CALLS = 300
P99_LIMIT_SECONDS = 0.050


def gzip_of_blank_lines(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(b"customerId,ltv\nkept-out,1\n")]
    block = b"\n" * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(megabytes)]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture
def own_database(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "dcp_bombs") as url:
        yield url


@pytest.fixture
def dcp_up(tmp_path: Path, own_database: str) -> Iterator[Running]:
    env = {
        **base_env(),
        "DCP_DATABASE_URL": own_database,
        "DCP_IMPORT_POLL_SECONDS": "0.2",
        # Wide enough that the bombs are read through: the worst case for the serving process.
        "DCP_IMPORT_MAX_COMPRESSION_RATIO": "5000",
    }
    running = Running(["up", "--data-dir", str(tmp_path / "dcp"), "--http-port", "0", "--grpc-port", "0"], env)
    try:
        yield running
    finally:
        running.kill()


def _json(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _table(http: httpx.Client, token: str) -> dict[str, Any]:
    headers = {"Token": token}
    service = _json(http.post(f"{V1}/dcp_services", json={"name": "shop"}, headers=headers), 201)
    table = _json(
        http.post(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            json={"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            headers=headers,
        ),
        201,
    )
    _json(
        http.post(
            f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
            json={"name": "ltv", "datatype": "long"},
            headers=headers,
        ),
        201,
    )
    return dict(table)


def _newest(http: httpx.Client, token: str, table_id: int) -> dict[str, Any]:
    uploads = _json(http.get(f"{V1}/dcp_datasources/{table_id}/uploads", headers={"Token": token}), 200)
    assert uploads, "no upload recorded"
    return dict(uploads[0])


def _wait(http: httpx.Client, token: str, table_id: int, status: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        try:
            upload = _newest(http, token, table_id)
        except AssertionError:
            upload = {"status": None}
        if upload["status"] == status:
            return upload
        assert time.monotonic() < deadline, f"not {status} within {within} s: {upload}"
        time.sleep(0.05)


def _reading(http: httpx.Client, token: str, table_id: int, within: float) -> None:
    deadline = time.monotonic() + within
    while (upload := _newest(http, token, table_id))["bytes_read"] == 0:
        assert time.monotonic() < deadline, f"not reading within {within} s: {upload}"
        time.sleep(0.05)


def _put(endpoint: str, table: dict[str, Any], name: str, body: bytes) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=table["aws_access_key"],
        aws_secret_access_key=table["aws_secret_key"],
        region_name="us-east-1",
    )
    s3.put_object(Bucket="optimizely-import", Key=f"{table['s3_path']}/{name}", Body=body)


def test_bombs_never_slow_other_calls_and_stop_when_cancelled_or_archived(dcp_up: Running) -> None:
    rest = dcp_up.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
    endpoint = dcp_up.wait_for(r"S3: embedded, (http://[\d.]+:\d+) bucket optimizely-import").group(1)
    token = dcp_up.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
    bomb = gzip_of_blank_lines(300)
    assert len(bomb) < 400_000
    with httpx.Client(base_url=rest, timeout=60) as http:
        table = _table(http, token)
        _put(endpoint, table, "bomb.csv.gz", bomb)
        upload = _wait(http, token, table["id"], "processing", within=30)

        # Meanwhile a second bomb is checked through `validate`.
        validated: dict[str, Any] = {}

        def validate() -> None:
            with httpx.Client(base_url=rest, timeout=300) as other:
                answer = other.post(
                    f"{V1}/dcp_datasources/{table['id']}/validate?file_name=bomb.csv.gz",
                    content=gzip_of_blank_lines(40),
                    headers={"Token": token},
                )
                validated["status"] = answer.status_code
                validated["body"] = answer.json()

        checking = threading.Thread(target=validate)
        checking.start()
        latencies = []
        for _ in range(WHOAMI_CALLS):
            started = time.perf_counter()
            _json(http.get("/api/whoami", headers={"Token": token}), 200)
            latencies.append(time.perf_counter() - started)
        assert _newest(http, token, table["id"])["status"] == "processing", "the bomb finished too soon to measure"
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(f"whoami p99 {p99 * 1000:.1f} ms, median {statistics.median(latencies) * 1000:.1f} ms")
        assert p99 < P99_LIMIT_SECONDS, f"whoami p99 {p99 * 1000:.1f} ms while bombs are processed"
        checking.join(timeout=120)
        assert validated["status"] == 200, validated
        assert validated["body"]["rows_total"] == 1

        # Cancelled, the import stops within 5 s and its history says why.
        _json(
            http.post(f"{V1}/dcp_datasources/{table['id']}/uploads/{upload['id']}/cancel", headers={"Token": token}),
            202,
        )
        stopped = _wait(http, token, table["id"], "failed", within=5)
        assert "cancelled on request" in stopped["error"]
        gone = http.get(
            f"/api/customer_profile/{table['s3_path'].split('/')[1]}/{table['id']}/kept-out", headers={"Token": token}
        )
        assert gone.status_code == 404

        # Archiving the table stops the next one the same way.
        _put(endpoint, table, "bomb-2.csv.gz", bomb)
        second = _wait(http, token, table["id"], "processing", within=30)
        assert second["id"] != upload["id"]
        # Claimed is not yet begun: archived before its first byte is read, a file is refused as one
        # put into an archived table's path, which is not the case this part is about.
        _reading(http, token, table["id"], within=30)
        assert http.delete(f"{V1}/dcp_datasources/{table['id']}", headers={"Token": token}).status_code == 204
        archived = _wait(http, token, table["id"], "failed", within=5)
        assert f"table {table['id']} was archived during the import" in archived["error"]
    assert dcp_up.stop() == 0
