"""`dcp up` as a user runs it: embedded database, first token, CLI beside it, clean stop, restart."""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

DCP = str(Path(sys.executable).parent / "dcp")


class Running:
    """A `dcp` process whose output is read line by line without blocking."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [DCP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(self.output)}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """Ends the process if it still runs, and releases its pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCP_")}
    env["DCP_LOG_LEVEL"] = "WARNING"
    return env


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DCP, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "dcp"


def _up(data_dir: Path) -> Running:
    return Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], _env())


def test_dcp_up_runs_on_the_embedded_database_and_keeps_its_data(data_dir: Path) -> None:
    first = _up(data_dir)
    try:
        rest = first.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        first.wait_for(r"gRPC: [\d.]+:\d+")
        first.wait_for(r"database: embedded PostgreSQL")
        token = first.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
        token_file = data_dir / "token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        with httpx.Client(base_url=rest, timeout=30) as http:
            created = http.post("/experiment/v1/dcp_services", json={"name": "kept"}, headers={"Token": token})
            assert created.status_code == 201, created.text

            # The CLI works beside the running platform, on the same embedded server.
            issued = _cli(data_dir, "tokens", "create", "--account", "1")
            assert issued.returncode == 0, issued.stderr
            second_token = issued.stdout.strip()
            assert http.get("/experiment/v1/dcp_services", headers={"Token": second_token}).status_code == 200
            revoked = _cli(data_dir, "tokens", "revoke", second_token.rsplit(":", 1)[1])
            assert revoked.returncode == 0, revoked.stderr
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
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

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


def test_cli_commands_start_and_stop_the_embedded_database_when_nothing_runs(data_dir: Path) -> None:
    migrated = _cli(data_dir, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied catalog/0001_catalog.sql" in migrated.stdout
    assert _cli(data_dir, "migrate").stdout.strip() == "database is up to date"
    created = _cli(data_dir, "accounts", "create", "Solo")
    assert created.returncode == 0, created.stderr
    listed = _cli(data_dir, "accounts", "list")
    assert "Solo" in listed.stdout
    missing = _cli(data_dir, "tokens", "create", "--account", "999")
    assert missing.returncode != 0
    assert "account 999 does not exist" in missing.stderr
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
