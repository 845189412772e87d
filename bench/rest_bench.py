"""REST and gRPC speed in one run, driven by load generators written in C, every figure next to its baseline.

Builds the profile benchmark's data (one DCP service, 4 tables of 10
attributes, N profiles, every Optimizely user aliased to one customer of each
other table, 25 audiences of about 5 conditions), starts `dcp up` and the REST
floor each in its own process, and measures on the same machine and data:

- over REST, with wrk (C; 16 connections, 2 threads; random customers of the
  loaded set): the floor (a bare Starlette endpoint on uvicorn making one
  trivial gRPC call, bench/rest_floor.py), the gateway's WhoAmI, a
  single-table read, the consolidated view (4 tables), the audience evaluate
  call and a single-customer write of 4 attributes;
- over gRPC, with grpc_load (C, on gRPC's core library, bench/grpc_load.c,
  built on first use; 16 calls in flight; random customers of the loaded set,
  requests serialized beforehand): the floor (WhoAmI: same server,
  interceptors and authentication, no database), a single-table read and the
  same write;
- raw asyncpg upserts of that write, from this process (a reference, no target).

Every figure is measured in each of several rounds (3 unless --rounds says
otherwise), one round after the other, so that a figure and its baseline are
always taken minutes apart at most: on a shared virtual machine one 10-second
figure can differ from the next by a third, and one figure alone would say more
about the neighbours than about the platform. Each round's figures are printed
as they come; the table then shows each figure's median over the rounds (its
rate, p50 and p99 each the median of the rounds'), its baseline's, the ratio,
the target and whether it is met. A figure with any answer outside 2xx, a
request that got no answer, or a gRPC call whose status is not OK, in any
round, fails. Exits 0 either way: it is a measurement.

Run: python -m bench.rest_bench [--profiles N] [--seconds S] [--rounds R] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from bench.audience_bench import AUDIENCES, audience_conditions
from bench.grpc_load import GrpcLoadReport, ensure_grpc_load, run_grpc_load, write_requests
from bench.profiles_bench import (
    ATTRIBUTES,
    TABLES,
    Figures,
    _with_database,
    build_schema,
    create_database,
    customer_id,
    drop_database,
    load,
    raw_upserts,
    start_platform,
)
from bench.rest_floor import PATH as FLOOR_PATH
from bench.rest_floor import server_flavour, start_rest_floor
from bench.wrk import WrkReport, ensure_wrk, lua_quote, lua_script, run_wrk
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc

WARM_UP_SECONDS = 1
WRK_THREADS = 2
# grpc_load goes round its requests file once it has sent them all: a figure gets enough requests that a run under
# this many calls a second never sends one twice, so each call asks for a random customer, as wrk's requests do.
GRPC_CALLS_PER_SECOND_COVERED = 5_000
GRPC_REQUESTS_AT_LEAST = 20_000


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
    """Why the figure does not count (answers outside 2xx, requests without an answer, gRPC calls not OK);
    empty when it does."""

    @classmethod
    def of_wrk(cls, label: str, name: str, report: WrkReport) -> Measured:
        problems = []
        if report.non_2xx:
            problems.append(f"{report.non_2xx:,} non-2xx")
        if report.socket_errors:
            problems.append(f"{report.socket_errors:,} socket errors")
        return cls(name, label, "wrk", report.rate, report.p50_ms, report.p99_ms, ", ".join(problems))

    @classmethod
    def of_grpc_load(cls, label: str, name: str, report: GrpcLoadReport) -> Measured:
        problems = f"{report.non_ok:,} not OK, the first {report.failure}" if report.failed else ""
        return cls(name, label, "grpc_load", report.rate, report.p50_ms, report.p99_ms, problems)

    @classmethod
    def of_python(cls, label: str, figures: Figures, client: str = "Python gRPC") -> Measured:
        return cls(figures.name, label, client, figures.rate, figures.percentile(0.5), figures.percentile(0.99))

    @classmethod
    def median_of(cls, rounds: Sequence[Measured]) -> Measured:
        """One figure's rounds as one: each number the median of the rounds', every round's problems kept."""
        first = rounds[0]
        problems = "; ".join(f"round {n}: {m.problems}" for n, m in enumerate(rounds, 1) if m.problems)
        return cls(
            first.name,
            first.label,
            first.client,
            statistics.median(m.rate for m in rounds),
            statistics.median(m.p50_ms for m in rounds),
            statistics.median(m.p99_ms for m in rounds),
            problems,
        )


def medians(rounds: Sequence[dict[str, Measured]]) -> dict[str, Measured]:
    """Each figure's median over the rounds, in the order they were measured."""
    return {name: Measured.median_of([figures[name] for figures in rounds]) for name in rounds[0]}


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


def print_table(measured: Sequence[Measured], found: Sequence[Check], rounds: int) -> None:
    print(f"\nmedian of {rounds} round{'s' if rounds != 1 else ''}")
    print(f"{'endpoint':<52} {'client':<14} {'req/s':>9} {'p50':>9} {'p99':>9}  problems")
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


class GrpcDriver:
    """grpc_load runs against the platform's gRPC port: a warm-up, then the measured seconds."""

    def __init__(self, grpc_load: str, scratch: Path, *, platform: Platform, seconds: float, concurrency: int) -> None:
        self._grpc_load = grpc_load
        self._scratch = scratch
        self._platform = platform
        self._seconds = seconds
        self._concurrency = concurrency

    @property
    def request_count(self) -> int:
        """How many requests to write for one figure."""
        calls = GRPC_CALLS_PER_SECOND_COVERED * (WARM_UP_SECONDS + self._seconds)
        return max(GRPC_REQUESTS_AT_LEAST, math.ceil(calls))

    async def _identity(self) -> str:
        """A fresh identity assertion: an internal caller authenticates once and forwards it."""
        # Asked again for each figure, so a long run never measures with an assertion past its life.
        async with grpc.aio.insecure_channel(self._platform.grpc_address) as channel:
            auth = await schema_grpc.AuthServiceStub(channel).Authenticate(
                schema_pb.AuthenticateRequest(token=self._platform.token)
            )
        return auth.assertion

    async def measure(self, label: str, name: str, method: MethodDescriptor, requests: Sequence[Message]) -> Measured:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        requests_file = self._scratch / f"{slug}.requests"
        write_requests(requests_file, requests)
        report = await asyncio.to_thread(
            run_grpc_load,
            self._grpc_load,
            self._platform.grpc_address,
            f"/{method.containing_service.full_name}/{method.name}",
            requests_file,
            metadata=[("x-dcp-identity", await self._identity())],
            seconds=self._seconds,
            warm_up=WARM_UP_SECONDS,
            concurrency=self._concurrency,
        )
        measured = Measured.of_grpc_load(label, name, report)
        print(f"  {name}: {measured.rate:,.0f} req/s, p99 {measured.p99_ms:.1f} ms {measured.problems}", flush=True)
        return measured


async def measure_grpc(
    driver: GrpcDriver, platform: Platform, *, concurrency: int, seconds: float, seed: int = 11
) -> dict[str, Measured]:
    rng = random.Random(seed)
    service_id, crm_table, users = platform.service_id, platform.crm_table, platform.users
    schema_methods = schema_pb.DESCRIPTOR.services_by_name["SchemaService"].methods_by_name
    profiles_methods = profiles_pb.DESCRIPTOR.services_by_name["ProfilesService"].methods_by_name
    reads = [
        profiles_pb.GetProfileRequest(
            dcp_service_id=service_id, dcp_datasource_id=crm_table, customer_id=customer_id(1, rng.randrange(users))
        )
        for _ in range(driver.request_count)
    ]
    writes = [
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
        )
        for _ in range(driver.request_count)
    ]
    # Every WhoAmI request is the same empty message.
    whoami = [schema_pb.WhoAmIRequest()]
    measured = {
        "gRPC floor": await driver.measure(
            "gRPC floor", "gRPC floor: WhoAmI (no database)", schema_methods["WhoAmI"], whoami
        ),
        "gRPC read": await driver.measure("gRPC read", "gRPC single-table read", profiles_methods["GetProfile"], reads),
        "gRPC write": await driver.measure(
            "gRPC write", "gRPC single-customer write (4 attributes)", profiles_methods["MergeProfile"], writes
        ),
    }
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
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each figure is measured; the table shows the medians"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, and gRPC calls in flight")
    options = parser.parse_args()
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    # Before any loading: a missing load generator should cost seconds, not a million rows.
    wrk = ensure_wrk()
    grpc_load = ensure_grpc_load()
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
            grpc_driver = GrpcDriver(
                grpc_load, scratch, platform=platform, seconds=options.seconds, concurrency=options.connections
            )
            rounds = []
            for number in range(1, options.rounds + 1):
                print(f"round {number} of {options.rounds}", flush=True)
                figures = await measure_rest(rest, platform, floor_url)
                figures |= await measure_grpc(
                    grpc_driver, platform, concurrency=options.connections, seconds=options.seconds, seed=10 + number
                )
                rounds.append(figures)
    finally:
        _stop(floor)
        _stop(dcp)
        await drop_database(server, name)
    print(
        f"\n{users * TABLES:,} profiles, {TABLES} tables x {ATTRIBUTES} attributes; REST: wrk, {options.connections}"
        f" connections, {WRK_THREADS} threads, {options.seconds:g} s a figure; gRPC: grpc_load (C, gRPC's core),"
        f" {options.connections} calls in flight; raw upserts: asyncpg in the bench's process"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"REST floor and gateway (dcp up): uvicorn on {server_flavour()}")
    figures = medians(rounds)
    print_table(list(figures.values()), checks(figures), len(rounds))


if __name__ == "__main__":
    asyncio.run(main())
