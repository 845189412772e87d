"""`dcp up` as a user runs it: embedded database, first token, CLI beside it and after it, clean stop, restart."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.auth import REUSE_SECONDS
from tests.e2e.processes import DCP, Running, base_env


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DCP, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=120,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "dcp"


def _up(data_dir: Path) -> Running:
    return Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], base_env())


def test_dcp_up_runs_on_the_embedded_database_and_keeps_its_data(data_dir: Path) -> None:
    first = _up(data_dir)
    try:
        rest = first.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        reference = first.wait_for(r"API reference: (http://\S+/docs) \(OpenAPI 3.1: (http://\S+)\)")
        first.wait_for(r"gRPC: [\d.]+:\d+")
        first.wait_for(r"database: embedded PostgreSQL")
        token = first.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
        token_file = data_dir / "token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        with httpx.Client(base_url=rest, timeout=30) as http:
            assert http.get(reference.group(1)).status_code == 200
            assert http.get(reference.group(2)).json()["openapi"] == "3.1.0"
            created = http.post("/experiment/v1/dcp_services", json={"name": "kept"}, headers={"Token": token})
            assert created.status_code == 201, created.text

            # The CLI works beside the running platform, on the same embedded server.
            issued = _cli(data_dir, "tokens", "create", "--account", "1")
            assert issued.returncode == 0, issued.stderr
            second_token = issued.stdout.strip()
            assert http.get("/experiment/v1/dcp_services", headers={"Token": second_token}).status_code == 200
            revoked = _cli(data_dir, "tokens", "revoke", second_token.rsplit(":", 1)[1])
            assert revoked.returncode == 0, revoked.stderr
            # The gateway may reuse its answer about the token for this long, and no longer.
            time.sleep(REUSE_SECONDS)
            refused = http.get("/experiment/v1/dcp_services", headers={"Token": second_token})
            assert refused.status_code == 403
            assert refused.json()["code"] == "TOKEN_REVOKED"

            personal = _cli(data_dir, "tokens", "create", "--account", "1", "--kind", "personal").stdout.strip()
            assert http.get("/experiment/v1/dcp_services", headers={"Token": personal}).status_code == 403

            other = _cli(data_dir, "accounts", "create", "Acme")
            assert other.returncode == 0, other.stderr
            assert "Acme" in other.stdout
        assert first.stop() == 0
    finally:
        first.kill()

    # Stopped means stopped: the embedded server is gone with the platform.
    postmaster = data_dir / "postgres" / "postmaster.pid"
    assert not postmaster.exists()

    # With nothing running, the CLI starts the embedded server for itself and stops it again.
    assert _cli(data_dir, "migrate").stdout.strip() == "database is up to date"
    assert "Acme" in _cli(data_dir, "accounts", "list").stdout
    missing = _cli(data_dir, "tokens", "create", "--account", "999")
    assert missing.returncode != 0
    assert "account 999 does not exist" in missing.stderr
    assert not postmaster.exists()

    again = _up(data_dir)
    try:
        rest = again.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        again.wait_for(r"database: embedded PostgreSQL")
        with httpx.Client(base_url=rest, timeout=30) as http:
            services = http.get("/experiment/v1/dcp_services", headers={"Token": token}).json()
        assert [s["name"] for s in services] == ["kept"]
        assert not any("first account" in line for line in again.output)
        assert again.stop() == 0
    finally:
        again.kill()
