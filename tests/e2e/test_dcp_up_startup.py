"""`dcp up` when its start-up goes wrong or is cut short: one clear line, and nothing left running."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.app import GatewayClients
from services import cli
from services._runtime.ports import PortUnavailable
from services._runtime.server import prepare_server
from services._runtime.settings import Settings
from services.wiring.embedded_postgres import holds_database
from services.wiring.gateway import start_gateway
from tests.e2e.processes import DCP, Running, base_env, left_running, marked, up_until

FREE = ["--http-port", "0", "--grpc-port", "0", "--s3-port", "0"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def _dcp(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DCP, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert "Error:" not in output, output


@pytest.mark.parametrize(
    ("service", "flag", "variable"),
    [
        ("REST gateway", "--http-port", "DCP_HTTP_PORT"),
        ("gRPC", "--grpc-port", "DCP_GRPC_PORT"),
        ("embedded S3 server", "--s3-port", "DCP_S3_EMBEDDED_PORT"),
    ],
)
@pytest.mark.parametrize("given_by", ["flag", "variable"])
def test_a_taken_port_is_told_in_one_line_at_once_and_nothing_is_left_running(
    tmp_path: Path, taken_port: int, service: str, flag: str, variable: str, given_by: str
) -> None:
    data_dir = tmp_path / "dcp"
    env, mark = marked(base_env())
    args = _without_flag([DCP, "up", "--data-dir", str(data_dir), *FREE], flag)
    if given_by == "flag":
        args += [flag, str(taken_port)]
    else:
        env[variable] = str(taken_port)

    started = time.monotonic()
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started

    assert finished.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert finished.stderr.splitlines() == [
        f"dcp up: port {taken_port} ({service}) is in use by another program;"
        f" choose another with {flag} or {variable} (0 picks a free one)"
    ]
    _no_traceback(finished.stdout + finished.stderr)
    assert left_running(mark) == []
    # Told before anything started: not even the data dir was made.
    assert not data_dir.exists()


def _without_flag(args: list[str], flag: str) -> list[str]:
    index = args.index(flag)
    return args[:index] + args[index + 2 :]


def test_a_port_taken_while_dcp_up_starts_is_told_the_same_way_and_its_database_is_stopped(tmp_path: Path) -> None:
    # The port is free when `dcp up` looks at its start, and taken by the time the S3 server binds it.
    data_dir = tmp_path / "dcp"
    port = _free_port()
    args = ["--http-port", "0", "--grpc-port", "0", "--s3-port", str(port)]
    with (
        up_until(data_dir, args, data_dir / "postgres" / "postmaster.pid") as (process, mark),
        socket.create_server(("127.0.0.1", port)),
    ):
        stdout, stderr = process.communicate(timeout=120)

    assert process.returncode != 0
    assert stderr.splitlines() == [
        f"dcp up: port {port} (embedded S3 server) is in use by another program;"
        " choose another with --s3-port or DCP_S3_EMBEDDED_PORT (0 picks a free one)"
    ]
    _no_traceback(stdout + stderr)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert left_running(mark) == []


async def test_a_server_that_loses_the_race_for_its_port_names_the_port(taken_port: int) -> None:
    # What the REST gateway and the gRPC server raise when the port is taken between the check and their bind.
    with pytest.raises(PortUnavailable) as grpc_refused:
        prepare_server(resolver=None, address=f"127.0.0.1:{taken_port}")  # type: ignore[arg-type]
    assert cli.port_problem("dcp up", grpc_refused.value) == (
        f"dcp up: port {taken_port} (gRPC) is in use by another program;"
        " choose another with --grpc-port or DCP_GRPC_PORT (0 picks a free one)"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{taken_port}") as channel:
        with pytest.raises(PortUnavailable) as http_refused:
            await start_gateway(Settings(http_port=taken_port), GatewayClients.over(channel))
    assert cli.port_problem("dcp up", http_refused.value) == (
        f"dcp up: port {taken_port} (REST gateway) is in use by another program;"
        " choose another with --http-port or DCP_HTTP_PORT (0 picks a free one)"
    )
    assert cli.port_problem("dcp serve", http_refused.value) == (
        f"dcp serve: port {taken_port} (REST gateway) is in use by another program;"
        " choose another with DCP_HTTP_PORT (0 picks a free one)"
    )


def test_ctrl_c_while_the_embedded_database_starts_stops_dcp_up_and_leaves_nothing_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "dcp"
    # The embedded server's directory is made just before initdb runs in it.
    with up_until(data_dir, list(FREE), data_dir / "postgres") as (process, mark):
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGINT
    assert stdout.splitlines() == ["stopping..."]
    _no_traceback(stdout + stderr)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert left_running(mark) == []
    # The new database was made whole, not left half initialised: the next start can use it.
    assert holds_database(data_dir)


def test_the_cli_finds_a_running_platform_through_DCP_DATA_DIR_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "dcp"
    env, mark = marked(base_env())
    up = Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], env)
    try:
        admin = up.wait_for(r"^  admin: (dcp .+)$").group(1)
        up.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$")
        assert admin == f"dcp tokens create --account 1 --data-dir {shlex.quote(str(data_dir))}"

        # The printed line works as it is.
        issued = _dcp(shlex.split(admin)[1:], base_env())
        assert issued.returncode == 0, issued.stderr
        assert issued.stdout.strip().endswith(":2")

        # So does DCP_DATA_DIR, as `dcp up` reads it.
        by_variable = {**base_env(), "DCP_DATA_DIR": str(data_dir)}
        created = _dcp(["accounts", "create", "Beta"], by_variable)
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip() == "account 2 created: Beta"

        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == 0
        up.wait_for(r"^stopping\.\.\.$")
        output = up.finish()
        _no_traceback(output)
        # Stopping says nothing more: no library's log line about stopping the embedded database.
        assert output.rsplit("stopping...\n", 1)[1] == "", output
    finally:
        up.kill()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert left_running(mark) == []


def test_a_data_dir_the_embedded_database_cannot_use_is_told_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "my dcp"
    env, mark = marked(base_env())
    refused = _dcp(["up", "--data-dir", str(data_dir), *FREE], env)
    assert refused.returncode != 0
    assert refused.stderr.splitlines() == [
        f"dcp up: the embedded PostgreSQL cannot run in a data dir whose path has a space ({data_dir});"
        " choose another data dir with --data-dir or DCP_DATA_DIR, or a database of your own with DCP_DATABASE_URL"
    ]
    assert not data_dir.exists()
    assert left_running(mark) == []
