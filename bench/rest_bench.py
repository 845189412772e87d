"""REST and gRPC speed in one run, REST driven by wrk, every figure next to its baseline.

Builds the profile benchmark's data (one DCP service, 4 tables of 10
attributes, N profiles, every Optimizely user aliased to one customer of each
other table, 25 audiences of about 5 conditions), starts `dcp up` and the REST
floor each in its own process, and measures on the same machine and data:

- over REST, with wrk (C; 16 connections, 2 threads; random customers of the
  loaded set): the floor (a bare Starlette endpoint on uvicorn making one
  trivial gRPC call, bench/rest_floor.py), the gateway's WhoAmI, a
  single-table read, the consolidated view (4 tables), the audience evaluate
  call and a single-customer write of 4 attributes;
- over gRPC, with a Python client in this process (16 calls in flight): the
  floor (WhoAmI: same server, interceptors and authentication, no database), a
  single-table read, the same write, and raw asyncpg upserts of that write.

Prints one table: each figure, its baseline from the same run, the ratio, the
target and whether it is met. A figure with any answer outside 2xx, or a
request that got no answer, fails. Exits 0 either way: it is a measurement.

Run: python -m bench.rest_bench [--profiles N] [--seconds S] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from bench.audience_bench import AUDIENCES, audience_conditions
from bench.profiles_bench import (
    ATTRIBUTES,
    TABLES,
    Figures,
    _with_database,
    build_schema,
    create_database,
    customer_id,
    drive,
    drop_database,
    load,
    raw_upserts,
    start_platform,
)
from bench.rest_floor import PATH as FLOOR_PATH
from bench.rest_floor import server_flavour, start_rest_floor
from bench.wrk import WrkReport, ensure_wrk, lua_quote, lua_script, run_wrk
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc

WARM_UP_SECONDS = 1
WRK_THREADS = 2


@dataclass(frozen=True)
class Measured:
    """One endpoint's figures."""

    name: str
    label: str
    """Short, for the baseline column."""
    client: str
    rate: float
    p50_ms: float
    p99_ms: float
    problems: str = ""
    """Why the figure does not count (answers outside 2xx, requests without an answer); empty when it does."""

    @classmethod
    def of_wrk(cls, label: str, name: str, report: WrkReport) -> Measured:
        problems = []
        if report.non_2xx:
            problems.append(f"{report.non_2xx:,} non-2xx")
        if report.socket_errors:
            problems.append(f"{report.socket_errors:,} socket errors")
        return cls(name, label, "wrk", report.rate, report.p50_ms, report.p99_ms, ", ".join(problems))

    @classmethod
    def of_python(cls, label: str, figures: Figures, client: str = "Python gRPC") -> Measured:
        return cls(figures.name, label, client, figures.rate, figures.percentile(0.5), figures.percentile(0.99))


@dataclass(frozen=True)
class Check:
    """A figure against its baseline from the same run, and the issue's target for it."""

    what: str
    figure: Measured
    baseline: Measured
    metric: str
    """"rate" (req/s) or "p99" (ms)."""
    target: str
    met: bool | None
    """None: shown for reference, no target."""

    def value(self, measured: Measured) -> float:
        return measured.rate if self.metric == "rate" else measured.p99_ms

    def shown(self, measured: Measured) -> str:
        return f"{measured.rate:,.0f} req/s" if self.metric == "rate" else f"{measured.p99_ms:.1f} ms"

    @property
    def verdict(self) -> str:
        problems = [m.problems for m in (self.figure, self.baseline) if m.problems]
        if problems:
            return "FAILED: " + "; ".join(problems)
        if self.met is None:
            return "-"
        return "met" if self.met else "MISSED"


def checks(figures: dict[str, Measured]) -> list[Check]:
    """The issue's targets, each with the baseline it is read against."""
    floor, gateway_whoami = figures["REST floor"], figures["REST whoami"]
    read, view = figures["REST read"], figures["REST view"]
    write, evaluate = figures["REST write"], figures["REST evaluate"]
    grpc_floor, grpc_read = figures["gRPC floor"], figures["gRPC read"]
    grpc_write, raw = figures["gRPC write"], figures["raw upsert"]
    return [
        Check("REST single-table read", read, floor, "rate", ">= 2,000 req/s", read.rate >= 2000),
        Check(
            "REST single-table read / REST floor", read, floor, "rate", "ratio >= 0.6", read.rate >= 0.6 * floor.rate
        ),
        Check("REST single-table read p99", read, floor, "p99", "<= 25 ms", read.p99_ms <= 25),
        Check(
            "REST consolidated view p99 / single-table p99",
            view,
            read,
            "p99",
            "ratio <= 1.5",
            view.p99_ms <= 1.5 * read.p99_ms,
        ),
        Check("REST single-customer write", write, floor, "rate", ">= 1,500 req/s", write.rate >= 1500),
        Check("REST single-customer write p99", write, floor, "p99", "<= 30 ms", write.p99_ms <= 30),
        Check(
            "REST evaluate / consolidated view",
            evaluate,
            view,
            "rate",
            "ratio >= 0.8",
            evaluate.rate >= 0.8 * view.rate,
        ),
        Check(
            "gRPC single-table read / gRPC floor",
            grpc_read,
            grpc_floor,
            "rate",
            "ratio >= 0.6",
            grpc_read.rate >= 0.6 * grpc_floor.rate,
        ),
        Check(
            "gRPC single-customer write / gRPC floor",
            grpc_write,
            grpc_floor,
            "rate",
            "ratio >= 0.6",
            grpc_write.rate >= 0.6 * grpc_floor.rate,
        ),
        Check("gRPC write / raw asyncpg upserts", grpc_write, raw, "rate", "-", None),
        Check("REST gateway WhoAmI / REST floor", gateway_whoami, floor, "rate", "-", None),
    ]


def print_table(measured: Sequence[Measured], found: Sequence[Check]) -> None:
    print(f"\n{'endpoint':<52} {'client':<14} {'req/s':>9} {'p50':>9} {'p99':>9}  problems")
    for m in measured:
        print(
            f"{m.name:<52} {m.client:<14} {m.rate:>9,.0f} {m.p50_ms:>6.1f} ms {m.p99_ms:>6.1f} ms  {m.problems or '-'}"
        )
    print(f"\n{'check':<46} {'figure':>13}  {'baseline (same run)':<26} {'ratio':>6}  {'target':<15} verdict")
    for check in found:
        baseline = f"{check.baseline.label} {check.shown(check.baseline)}"
        divisor = check.value(check.baseline)
        ratio = f"{check.value(check.figure) / divisor:.2f}" if divisor else "-"
        print(
            f"{check.what:<46} {check.shown(check.figure):>13}  {baseline:<26} {ratio:>6}  {check.target:<15}"
            f" {check.verdict}"
        )


@dataclass(frozen=True)
class Platform:
    """The running platform and the data loaded into it."""

    database_url: str
    gateway: str
    grpc_address: str
    token: str
    service_id: int
    tables: list[int]
    attributes: dict[int, list[int]]
    users: int
    """Customers per table."""

    @property
    def crm_table(self) -> int:
        return self.tables[1]


class RestDriver:
    """wrk runs against the gateway and the floor: a warm-up, then the measured run."""

    def __init__(self, wrk: str, scratch: Path, *, token: str, users: int, seconds: float, connections: int) -> None:
        self._wrk = wrk
        self._scratch = scratch
        self._token = token
        self._users = users
        self._seconds = seconds
        self._connections = connections

    async def measure(
        self, label: str, name: str, url: str, *, method: str, path: str, body: str | None = None
    ) -> Measured:
        script = lua_script(method=method, path=path, users=self._users, token=self._token, body=body)
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        for seconds in (WARM_UP_SECONDS, self._seconds):
            report = await asyncio.to_thread(
                run_wrk,
                self._wrk,
                url,
                script,
                self._scratch,
                name=slug,
                seconds=seconds,
                connections=self._connections,
                threads=WRK_THREADS,
            )
        measured = Measured.of_wrk(label, name, report)
        print(f"  {name}: {measured.rate:,.0f} req/s, p99 {measured.p99_ms:.1f} ms {measured.problems}", flush=True)
        return measured


def _lua_customer(table_index: int) -> str:
    """customer_id(table_index, user) as a Lua expression (the loaded set's ids)."""
    if table_index == 0:
        # %.0f: the Optimizely id's number is past 2^31, which %d does not print in every Lua.
        return 'string.format("oeu%.0fr0.%08d", 1457385393173 + user, user)'
    return f'string.format("crm{table_index}-%08d", user)'


async def create_audiences(
    http: httpx.AsyncClient, service_id: int, tables: list[int], attributes: dict[int, list[int]]
) -> None:
    rng = random.Random(5)
    response = await http.post("/experiment/v1/projects", json={"project_name": "bench", "dcp_service_id": service_id})
    project = response.json()["id"]
    for index in range(AUDIENCES):
        created = await http.post(
            f"/experiment/v1/projects/{project}/audiences",
            json={"name": f"audience {index}", "conditions": audience_conditions(tables, attributes, rng)},
        )
        assert created.status_code == 201, created.text


async def measure_rest(rest: RestDriver, platform: Platform, floor: str) -> dict[str, Measured]:
    gateway, service_id, crm_table = platform.gateway, platform.service_id, platform.crm_table
    profile_path = f"{lua_quote(f'/api/customer_profile/{service_id}/{crm_table}/')} .. {_lua_customer(1)}"
    write_body = (
        'string.format(\'{"data": {"a0": %d, "a1": %.3f, "a2": "jeans%d", "a3": %s}}\','
        " math.random(-1000000000, 1000000000), math.random() * 1000, math.random(0, 999),"
        " tostring(math.random() < 0.5))"
    )
    return {
        "REST floor": await rest.measure(
            "REST floor", "REST floor: bare Starlette, gRPC WhoAmI", floor, method="GET", path=lua_quote(FLOOR_PATH)
        ),
        "REST whoami": await rest.measure(
            "REST whoami", "REST gateway: GET /api/whoami", gateway, method="GET", path=lua_quote("/api/whoami")
        ),
        "REST read": await rest.measure(
            "REST read", "REST single-table read", gateway, method="GET", path=profile_path
        ),
        "REST view": await rest.measure(
            "REST view",
            "REST consolidated view (4 tables)",
            gateway,
            method="GET",
            path=f"{lua_quote(f'/api/consolidatedCustomerView/{service_id}/')} .. {_lua_customer(0)}",
        ),
        "REST evaluate": await rest.measure(
            "REST evaluate",
            f"REST evaluate {AUDIENCES} audiences",
            gateway,
            method="POST",
            path=f"{lua_quote(f'/api/audiences/evaluate/{service_id}/')} .. {_lua_customer(0)}",
            body=lua_quote("{}"),
        ),
        "REST write": await rest.measure(
            "REST write",
            "REST single-customer write (4 attributes)",
            gateway,
            method="POST",
            path=profile_path,
            body=write_body,
        ),
    }


async def measure_grpc(platform: Platform, *, concurrency: int, seconds: float) -> dict[str, Measured]:
    rng = random.Random(11)
    service_id, crm_table, users = platform.service_id, platform.crm_table, platform.users
    async with grpc.aio.insecure_channel(platform.grpc_address) as channel:
        # An internal caller authenticates once and forwards the signed identity.
        auth = await schema_grpc.AuthServiceStub(channel).Authenticate(
            schema_pb.AuthenticateRequest(token=platform.token)
        )
        metadata = (("x-dcp-identity", auth.assertion),)
        schema = schema_grpc.SchemaServiceStub(channel)
        profiles = profiles_grpc.ProfilesServiceStub(channel)

        async def floor(i: int) -> None:
            await schema.WhoAmI(schema_pb.WhoAmIRequest(), metadata=metadata)

        async def read(i: int) -> None:
            await profiles.GetProfile(
                profiles_pb.GetProfileRequest(
                    dcp_service_id=service_id,
                    dcp_datasource_id=crm_table,
                    customer_id=customer_id(1, rng.randrange(users)),
                ),
                metadata=metadata,
            )

        async def write(i: int) -> None:
            await profiles.MergeProfile(
                profiles_pb.MergeProfileRequest(
                    dcp_service_id=service_id,
                    dcp_datasource_id=crm_table,
                    customer_id=customer_id(1, rng.randrange(users)),
                    data={
                        "a0": profiles_pb.Value(long_value=rng.randrange(-(10**9), 10**9)),
                        "a1": profiles_pb.Value(double_value=round(rng.random() * 1000, 3)),
                        "a2": profiles_pb.Value(string_value=f"jeans{rng.randrange(1000)}"),
                        "a3": profiles_pb.Value(bool_value=rng.random() < 0.5),
                    },
                ),
                metadata=metadata,
            )

        measured: dict[str, Measured] = {}
        for key, name, call in (
            ("gRPC floor", "gRPC floor: WhoAmI (no database)", floor),
            ("gRPC read", "gRPC single-table read", read),
            ("gRPC write", "gRPC single-customer write (4 attributes)", write),
        ):
            measured[key] = Measured.of_python(key, await drive(name, call, concurrency=concurrency, seconds=seconds))
            print(f"  {name}: {measured[key].rate:,.0f} req/s, p99 {measured[key].p99_ms:.1f} ms", flush=True)
    raw = await raw_upserts(
        platform.database_url,
        crm_table,
        platform.attributes[crm_table][0],
        concurrency=concurrency,
        seconds=seconds,
    )
    measured["raw upsert"] = Measured.of_python("raw upsert", raw, "Python asyncpg")
    return measured


def _stop(process: subprocess.Popen[str] | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured figure")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, and gRPC calls in flight")
    options = parser.parse_args()
    # Before any loading: a missing load generator should cost seconds, not a million rows.
    wrk = ensure_wrk()
    users = options.profiles // TABLES
    server, name = await create_database()
    database_url = _with_database(server, name)
    dcp = floor = None
    try:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            (scratch / "platform").mkdir()
            dcp, gateway, grpc_address, token = start_platform(database_url, scratch / "platform")
            async with httpx.AsyncClient(base_url=gateway, headers={"Token": token}, timeout=60) as http:
                service_id, tables, attributes = await build_schema(http)
                started = time.perf_counter()
                await load(database_url, service_id, tables, attributes, users)
                print(f"loaded {users * TABLES:,} profiles in {time.perf_counter() - started:.0f} s", flush=True)
                await create_audiences(http, service_id, tables, attributes)
            platform = Platform(database_url, gateway, grpc_address, token, service_id, tables, attributes, users)
            floor, floor_url = start_rest_floor(grpc_address, token)
            rest = RestDriver(
                wrk, scratch, token=token, users=users, seconds=options.seconds, connections=options.connections
            )
            figures = await measure_rest(rest, platform, floor_url)
            figures |= await measure_grpc(platform, concurrency=options.connections, seconds=options.seconds)
    finally:
        _stop(floor)
        _stop(dcp)
        await drop_database(server, name)
    print(
        f"\n{users * TABLES:,} profiles, {TABLES} tables x {ATTRIBUTES} attributes; REST: wrk, {options.connections}"
        f" connections, {WRK_THREADS} threads, {options.seconds:g} s a figure; gRPC: a Python client in the bench's"
        f" process, {options.connections} calls in flight"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"REST floor and gateway (dcp up): uvicorn on {server_flavour()}")
    print_table(list(figures.values()), checks(figures))


if __name__ == "__main__":
    asyncio.run(main())
