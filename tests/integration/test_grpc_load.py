"""grpc_load, the benchmark's C load generator, against a real grpc.aio server over a socket."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.grpc_load import ensure_grpc_load, missing_build_packages, run_grpc_load, write_requests
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb

SERVICE = "bench.Probe"
IDENTITY = ("x-dcp-identity", "caller-7")


class Probe:
    """Answers the way the platform's methods do: OK, a refusal with details, or unauthenticated."""

    def __init__(self) -> None:
        self.customers_seen: set[str] = set()

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if (IDENTITY[0], IDENTITY[1]) not in tuple(context.invocation_metadata() or ()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the identity assertion is missing or expired")
        self.customers_seen.add(profiles_pb.GetProfileRequest.FromString(request).customer_id)
        return request

    async def refuse(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "customer_id: must not be empty\nsecond line")
        raise AssertionError("abort returned")


@pytest.fixture(scope="session")
def grpc_load() -> str:
    missing = missing_build_packages()
    if missing and shutil.which("apt-get") is None:
        pytest.skip(f"grpc_load cannot be built here: {' '.join(missing)} missing and no apt-get to install them")
    return ensure_grpc_load()


@pytest.fixture
async def probe() -> AsyncIterator[tuple[str, Probe]]:
    probe = Probe()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(probe.echo),
            "Refuse": grpc.unary_unary_rpc_method_handler(probe.refuse),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", probe
    await server.stop(None)


@pytest.fixture
def requests_file(tmp_path: Path) -> Path:
    path = tmp_path / "requests.bin"
    written = write_requests(
        path,
        (
            profiles_pb.GetProfileRequest(dcp_service_id=1, dcp_datasource_id=2, customer_id=f"crm1-{i:08d}")
            for i in range(5)
        ),
    )
    assert written == 5
    return path


async def test_calls_are_counted_and_every_request_is_sent_with_the_metadata(
    grpc_load: str, probe: tuple[str, Probe], requests_file: Path
) -> None:
    target, server = probe

    report = await asyncio.to_thread(
        run_grpc_load,
        grpc_load,
        target,
        f"/{SERVICE}/Echo",
        requests_file,
        metadata=[IDENTITY],
        seconds=1,
        warm_up=0.2,
        concurrency=4,
    )

    assert report.non_ok == 0, report.failure
    assert report.failure == ""
    assert report.requests > 50
    assert report.seconds == pytest.approx(1)
    assert report.rate == pytest.approx(report.requests / report.seconds, rel=0.01)
    assert 0 < report.p50_ms <= report.p99_ms < 10_000
    assert server.customers_seen == {f"crm1-{i:08d}" for i in range(5)}


@pytest.mark.parametrize(
    ("method", "metadata", "status"),
    [
        ("Refuse", [IDENTITY], "INVALID_ARGUMENT (3): customer_id: must not be empty second line"),
        ("Echo", [], "UNAUTHENTICATED (16): the identity assertion is missing or expired"),
        ("NoSuchMethod", [IDENTITY], "UNIMPLEMENTED (12): "),
    ],
    ids=["refused", "without identity", "wrong method"],
)
async def test_a_call_that_is_not_ok_is_reported_with_its_status(
    grpc_load: str,
    probe: tuple[str, Probe],
    requests_file: Path,
    method: str,
    metadata: list[tuple[str, str]],
    status: str,
) -> None:
    target, _ = probe

    report = await asyncio.to_thread(
        run_grpc_load,
        grpc_load,
        target,
        f"/{SERVICE}/{method}",
        requests_file,
        metadata=metadata,
        seconds=0.5,
        warm_up=0,
        concurrency=2,
    )

    assert report.requests == 0
    assert report.rate == 0
    assert report.non_ok > 0
    assert report.failed
    assert report.failure.startswith(status)


async def test_a_target_without_a_server_stops_the_run(grpc_load: str, requests_file: Path) -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    # Bound then stopped: a port nothing listens on.
    await server.start()
    await server.stop(None)

    with pytest.raises(SystemExit, match=f"cannot reach 127.0.0.1:{port}"):
        await asyncio.to_thread(
            run_grpc_load,
            grpc_load,
            f"127.0.0.1:{port}",
            f"/{SERVICE}/Echo",
            requests_file,
            seconds=0.5,
            warm_up=0,
            concurrency=2,
        )
