"""Bulk upload against real processes: the AWS CLI into `dcp up`, and an importer killed mid-file."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.e2e.processes import Running, base_env, scratch_database, sql

V1 = "/experiment/v1"
AWS = str(Path(sys.executable).parent / "aws")


def _json(response: httpx.Response, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _make_table(http: httpx.Client, token: str, attributes: list[str]) -> dict[str, Any]:
    headers = {"Token": token}
    service = _json(http.post(f"{V1}/dcp_services", json={"name": "shop"}, headers=headers))
    table = _json(
        http.post(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            json={"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            headers=headers,
        )
    )
    for name in attributes:
        _json(
            http.post(
                f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
                json={"name": name, "datatype": "long"},
                headers=headers,
            )
        )
    table["service"] = service
    return dict(table)


def _history(http: httpx.Client, token: str, table_id: int) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = _json(
        http.get(f"{V1}/dcp_datasources/{table_id}/uploads", headers={"Token": token}), 200
    )
    return uploads


def _wait_for_status(
    http: httpx.Client, token: str, table_id: int, statuses: set[str], within: float = 120
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        uploads = _history(http, token, table_id)
        if uploads and uploads[0]["status"] in statuses:
            return uploads
        assert time.monotonic() < deadline, uploads
        time.sleep(0.05)


def test_the_aws_cli_uploads_into_a_running_dcp_up(tmp_path: Path) -> None:
    assert shutil.which(AWS) or Path(AWS).exists()
    platform = Running(["up", "--data-dir", str(tmp_path / "dcp"), "--http-port", "0", "--grpc-port", "0"], base_env())
    try:
        rest = platform.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        endpoint = platform.wait_for(r"S3: embedded, (http://[\d.]+:\d+) bucket optimizely-import").group(1)
        token = platform.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
        with httpx.Client(base_url=rest, timeout=30) as http:
            table = _make_table(http, token, ["ltv"])
            upload = tmp_path / "customers.csv"
            upload.write_text("customerId,ltv\nc1,42\nc2,7\n")
            # As the README shows: the table's own key pair and S3 path.
            env = {
                **base_env(),
                "AWS_ACCESS_KEY_ID": table["aws_access_key"],
                "AWS_SECRET_ACCESS_KEY": table["aws_secret_key"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            }
            copied = subprocess.run(
                [
                    AWS,
                    "s3",
                    "cp",
                    str(upload),
                    f"s3://optimizely-import/{table['s3_path']}/customers.csv",
                    "--endpoint-url",
                    endpoint,
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            assert copied.returncode == 0, copied.stderr
            [done] = _wait_for_status(http, token, table["id"], {"processed", "partially_processed", "failed"})
            assert done["status"] == "processed", done
            assert done["file_name"] == "customers.csv"
            profile = _json(
                http.get(f"/api/customer_profile/{table['service']['id']}/{table['id']}/c1", headers={"Token": token}),
                200,
            )
            assert profile["data"] == {"ltv": 42}
        assert platform.stop() == 0
    finally:
        platform.kill()


ROWS = 150_000
ATTRIBUTES = [f"a{i}" for i in range(10)]


def _big_file() -> bytes:
    lines = ["customerId," + ",".join(ATTRIBUTES)]
    lines += [f"c{row}," + ",".join(str(row * 10 + i) for i in range(len(ATTRIBUTES))) for row in range(ROWS)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def crash_database(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "dcp_crash") as url:
        yield url


def test_an_importer_killed_mid_file_finishes_it_once_after_restart(
    tmp_path: Path, crash_database: str, s3_server: str
) -> None:
    bucket = f"crash-{secrets.token_hex(4)}"
    env = {
        **base_env(),
        "DCP_DATABASE_URL": crash_database,
        "DCP_S3_ENDPOINT_URL": s3_server,
        "DCP_S3_BUCKET": bucket,
        "DCP_S3_ACCESS_KEY_ID": "testing",
        "DCP_S3_SECRET_ACCESS_KEY": "testing",
        "DCP_IMPORT_POLL_SECONDS": "0.2",
    }
    args = ["up", "--data-dir", str(tmp_path / "dcp"), "--http-port", "0", "--grpc-port", "0"]
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    body = _big_file()

    first = Running(args, env)
    try:
        rest = first.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        token = first.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
        with httpx.Client(base_url=rest, timeout=30) as http:
            killed = _make_table(http, token, ATTRIBUTES)
            s3.put_object(Bucket=bucket, Key=f"{killed['s3_path']}/big.csv", Body=body)
            _wait_for_status(http, token, killed["id"], {"processing"})
            # Well into the file: rows are streaming into the open transaction, and the history,
            # written by the import worker process, shows how far they have come.
            deadline = time.monotonic() + 60
            while (reading := _history(http, token, killed["id"])[0])["rows_total"] == 0:
                assert reading["status"] == "processing", reading
                assert time.monotonic() < deadline, reading
                time.sleep(0.02)
            assert reading["status"] == "processing", reading
            assert 0 < reading["rows_total"] < ROWS, reading
        first.process.kill()
        first.process.wait(timeout=30)
    finally:
        first.kill()

    second = Running(args, env)
    try:
        rest = second.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        with httpx.Client(base_url=rest, timeout=30) as http:
            [after_crash] = _wait_for_status(http, token, killed["id"], {"processed", "partially_processed", "failed"})
            # The same file, imported without interruption, is what the crashed import must equal.
            service_id = killed["service"]["id"]
            clean = _json(
                http.post(
                    f"{V1}/dcp_services/{service_id}/dcp_datasources",
                    json={"name": "clean", "keyfield_locator_type": "uid"},
                    headers={"Token": token},
                )
            )
            for name in ATTRIBUTES:
                _json(
                    http.post(
                        f"{V1}/dcp_datasources/{clean['id']}/dcp_datasource_attributes",
                        json={"name": name, "datatype": "long"},
                        headers={"Token": token},
                    )
                )
            s3.put_object(Bucket=bucket, Key=f"{clean['s3_path']}/big.csv", Body=body)
            [uninterrupted] = _wait_for_status(http, token, clean["id"], {"processed", "partially_processed", "failed"})
        assert second.stop() == 0
    finally:
        second.kill()

    def comparable(upload: dict[str, Any]) -> dict[str, Any]:
        return {k: upload[k] for k in ("file_name", "status", "rows_total", "rows_ok", "rows_failed", "error")}

    assert comparable(after_crash) == comparable(uninterrupted)
    assert (after_crash["status"], after_crash["rows_ok"]) == ("processed", ROWS)

    # Stored values are compared in the order the attributes were registered, table by table.
    checksum = """
        SELECT count(*) AS n, md5(string_agg(p.customer_id || ':' || (
            SELECT string_agg(v.value::text, ',' ORDER BY a.ordinal)
            FROM jsonb_each(p.data) AS v(key, value)
            JOIN (SELECT id, row_number() OVER (ORDER BY id) AS ordinal FROM catalog.attributes
                  WHERE datasource_id = $1) AS a ON a.id::text = v.key
        ), ',' ORDER BY p.customer_id)) AS digest
        FROM profiles.profiles AS p WHERE p.datasource_id = $1
    """
    [crashed] = sql(crash_database, checksum, killed["id"])
    [reference] = sql(crash_database, checksum, clean["id"])
    assert crashed["n"] == ROWS
    assert (crashed["n"], crashed["digest"]) == (reference["n"], reference["digest"])
    [applied] = sql(
        crash_database,
        "SELECT count(*) AS n FROM profiles.applied_batches WHERE idempotency_key = $1",
        f"import:{after_crash['id']}",
    )
    assert applied["n"] == 1
    [attempts] = sql(crash_database, "SELECT attempts FROM imports.uploads WHERE id = $1", after_crash["id"])
    assert attempts["attempts"] == 2
