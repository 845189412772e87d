"""`dcp up` on several cores: serving processes that share its ports, count together and stop together."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.processes import (
    DCP,
    Running,
    base_env,
    left_running,
    marked,
    scratch_database,
    up_until,
)

# Fresh connections per check: the kernel spreads connections over the processes, one chance in
# 2^(n-1) that all of them land on one process of two.
CONNECTIONS = 24
FREE_OTHERS = ["--grpc-port", "0", "--s3-port", "0"]


def _listening_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _socket_inodes(port: int) -> set[str]:
    """The inodes of the established TCP connections whose local end is `port` (the server's side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                inodes.add(inode)
    return inodes


def _holders(port: int, pids: list[int]) -> set[int]:
    """Which of `pids` hold a connection accepted on `port`."""
    inodes = _socket_inodes(port)
    holders = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and target[8:-1] in inodes:
                holders.add(pid)
                break
    return holders


def _counted(metrics: str, route: str) -> float:
    pattern = rf'^http_server_requests_total{{method="GET",route="{re.escape(route)}",status="200"}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def platform(database_url: str, tmp_path: Path) -> Iterator[tuple[Running, str]]:
    with scratch_database(database_url, "dcp_processes") as url:
        env, mark = marked({**base_env(), "DCP_DATABASE_URL": url})
        running = Running(
            ["up", "--data-dir", str(tmp_path / "data"), "--http-port", "0", "--grpc-port", "0", "--processes", "2"],
            env,
        )
        try:
            yield running, mark
        finally:
            running.kill()


def test_two_serving_processes_share_the_ports_count_together_and_stop_together(
    platform: tuple[Running, str], tmp_path: Path
) -> None:
    running, mark = platform
    rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
    grpc_address = running.wait_for(r"gRPC: ([\d.]+:\d+)$").group(1)
    pids = [int(pid) for pid in running.wait_for(r"^  processes: 2 serving \(pids (\d+), (\d+)\)$").groups()]
    token = running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
    assert pids[0] == running.process.pid

    # Another `dcp up` cannot join the ports, shared as they are.
    for flag, port, service in (
        ("--http-port", _listening_port(rest), "REST gateway"),
        ("--grpc-port", _listening_port(grpc_address), "gRPC"),
    ):
        args = ["--http-port", "0", "--grpc-port", "0", "--s3-port", "0", flag, str(port)]
        second = subprocess.run(
            [DCP, "up", "--data-dir", str(tmp_path / "second"), "--processes", "2", *args],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert f"port {port} ({service}) is in use by another program" in second.stderr

    # REST over fresh connections reaches both processes, and each answers in full.
    clients = [httpx.Client(base_url=rest, timeout=30) for _ in range(CONNECTIONS)]
    try:
        for client in clients:
            assert client.get("/healthz").status_code == 200
        assert _holders(_listening_port(rest), pids) == set(pids)
    finally:
        for client in clients:
            client.close()
    for attempt in range(6):
        # A DCP service's upload key is handed out by the first process, whichever process is asked.
        with httpx.Client(base_url=f"{rest}/experiment/v1", headers={"Token": token}, timeout=30) as http:
            created = http.post("/dcp_services", json={"name": f"service {attempt}"})
            assert created.status_code == 201, created.text
            assert created.json()["aws_access_key"]
            archived = http.delete(f"/dcp_services/{created.json()['id']}")
            assert archived.status_code == 204, archived.text

    # gRPC over fresh channels too (a local subchannel pool each: channels otherwise share one connection).
    channels = [
        grpc.insecure_channel(grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CONNECTIONS)
    ]
    try:
        for channel in channels:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert _holders(_listening_port(grpc_address), pids) == set(pids)
    finally:
        for channel in channels:
            channel.close()

    # /metrics, whichever process answers, counts the requests both served.
    deadline = time.monotonic() + 30
    while _counted(httpx.get(f"{rest}/metrics", timeout=30).text, "/healthz") < CONNECTIONS:
        assert time.monotonic() < deadline, "the requests of both processes were never counted together"
        time.sleep(0.2)
    for _ in range(CONNECTIONS):
        assert _counted(httpx.get(f"{rest}/metrics", timeout=30).text, "/healthz") == CONNECTIONS

    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=60) == 0
    output = running.finish()
    assert "Traceback" not in output, output
    assert output.rsplit("stopping...\n", 1)[1] == "", output
    assert left_running(mark) == []


def test_a_port_another_program_shares_is_refused_before_the_first_process_binds_it(tmp_path: Path) -> None:
    # The port is free when `dcp up` looks at its start; by the time the gateway binds it, another
    # program listens there with SO_REUSEPORT, which a bind of the serving processes would silently join.
    data_dir = tmp_path / "dcp"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    args = ["--processes", "2", "--http-port", str(port), *FREE_OTHERS]
    with (
        up_until(data_dir, args, data_dir / "postgres" / "postmaster.pid") as (process, mark),
        socket.socket() as other,
    ):
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 1
    assert stderr.splitlines() == [
        f"dcp up: port {port} (REST gateway) is in use by another program;"
        " choose another with --http-port or DCP_HTTP_PORT (0 picks a free one)"
    ]
    assert "Traceback" not in stdout + stderr
    assert left_running(mark) == []
