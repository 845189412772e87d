"""Profile read/write speed against the same stack's floor, over gRPC and REST.

Builds one DCP service with 4 tables of 10 attributes and N profiles (default
1,000,000: N/4 customers per table, each Optimizely user aliased to one
customer of every other table), starts the platform (`dcp up`) in its own
process, and drives it from this one with a fixed number of requests in flight.
Every figure is printed next to the baseline measured in the same run:

- single-table reads over gRPC and REST against the floor: the same server,
  interceptors and authentication answering WhoAmI, which reads no data;
- the consolidated view across 4 tables against the single-table read (p99);
- single-customer writes over gRPC against raw asyncpg upserts of the same rows.

Run: python -m bench.profiles_bench [--profiles N] [--concurrency 16] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx

from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc

TABLES = 4
ATTRIBUTES = 10
DATATYPES = [
    ("long", None),
    ("double", None),
    ("string", None),
    ("bool", None),
    ("datetime", "yyyy-mm-dd"),
    ("long", None),
    ("string", None),
    ("datetime", "epoch"),
    ("double", None),
    ("bool", None),
]


@dataclass
class Figures:
    name: str
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<44} {self.rate:>9.0f} req/s   p50 {self.percentile(0.5):6.2f} ms"
            f"   p99 {self.percentile(0.99):6.2f} ms"
        )


async def drive(name: str, call: Callable[[int], Awaitable[Any]], *, concurrency: int, seconds: float) -> Figures:
    """`concurrency` workers call in a loop for `seconds` (after a short warm-up)."""
    for i in range(concurrency * 5):
        await call(i)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while (now := time.perf_counter()) < deadline:
            await call(next(counter))
            latencies.append(time.perf_counter() - now)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Figures(name, len(latencies), time.perf_counter() - started, latencies)


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def create_database() -> tuple[str, str]:
    server = os.environ.get("DCP_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"dcp_bench_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(server)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server, name


async def drop_database(server: str, name: str) -> None:
    connection = await asyncpg.connect(server)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def start_platform(
    database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, str, str]:
    """`dcp up` in its own process; returns it with its REST URL, gRPC address and token."""
    dcp = Path(sys.executable).parent / "dcp"
    env = {
        **os.environ,
        "DCP_DATABASE_URL": database_url,
        "DCP_LOG_LEVEL": "WARNING",
        "DCP_DB_POOL_MAX_SIZE": "20",
        "DCP_S3_EMBEDDED_PORT": "0",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [str(dcp), "up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    rest = grpc_address = token = ""
    for line in process.stdout:
        if match := re.search(r"REST: (http://\S+?)/experiment", line):
            rest = match.group(1)
        elif match := re.search(r"gRPC: (\S+)", line):
            grpc_address = match.group(1)
        elif re.fullmatch(r"\s+[0-9a-f]{64}:\d+\s*", line):
            token = line.strip()
            break
    if not (rest and grpc_address and token):
        process.kill()
        raise SystemExit("dcp up did not start")
    pass_on_output(process.stdout, "dcp up")
    return process, rest, grpc_address, token


def pass_on_output(stream: IO[str], prefix: str) -> None:
    """Echoes what a started process says from now on, so a full pipe never stalls it."""

    def echo() -> None:
        for line in stream:
            print(f"{prefix}: {line.rstrip()}", flush=True)

    threading.Thread(target=echo, daemon=True).start()


async def build_schema(http: httpx.AsyncClient) -> tuple[int, list[int], dict[int, list[int]]]:
    service = (await http.post("/experiment/v1/dcp_services", json={"name": "bench"})).json()
    tables = [t["id"] for t in (await http.get(f"/experiment/v1/dcp_services/{service['id']}/dcp_datasources")).json()]
    for index in range(1, TABLES):
        created = await http.post(
            f"/experiment/v1/dcp_services/{service['id']}/dcp_datasources",
            json={"name": f"table {index}", "keyfield_locator_type": "cookie", "keyfield_locator_name": f"c{index}"},
        )
        tables.append(created.json()["id"])
    attributes: dict[int, list[int]] = {}
    for table_id in tables:
        attributes[table_id] = []
        for index, (datatype, fmt) in enumerate(DATATYPES):
            body: dict[str, Any] = {"name": f"a{index}", "datatype": datatype}
            if fmt:
                body["format"] = fmt
            created = await http.post(f"/experiment/v1/dcp_datasources/{table_id}/dcp_datasource_attributes", json=body)
            attributes[table_id].append(created.json()["id"])
    return service["id"], tables, attributes


def _value(index: int, rng: random.Random) -> Any:
    datatype, fmt = DATATYPES[index]
    if datatype == "long":
        return rng.randrange(-(10**12), 10**12)
    if datatype == "double":
        return rng.random() * 1000
    if datatype == "bool":
        return rng.random() < 0.5
    if datatype == "string":
        return rng.choice(["jeans", "shoes", "hats", "bags"]) + str(rng.randrange(1000))
    if fmt == "epoch":
        return 1_700_000_000_000 + rng.randrange(10**10)
    return f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"


def customer_id(table_index: int, user: int) -> str:
    return f"oeu{1457385393173 + user}r0.{user:08d}" if table_index == 0 else f"crm{table_index}-{user:08d}"


async def load(
    database_url: str, service_id: int, tables: list[int], attributes: dict[int, list[int]], users: int
) -> None:
    """Bulk-loads profiles and aliases straight into the services' tables (setup, not measured)."""
    rng = random.Random(7)
    connection = await asyncpg.connect(database_url)
    try:
        for table_index, table_id in enumerate(tables):
            records = [
                (
                    customer_id(table_index, user),
                    table_id,
                    json.dumps({str(a): _value(i, rng) for i, a in enumerate(attributes[table_id])}),
                )
                for user in range(users)
            ]
            await connection.copy_records_to_table(
                "profiles", schema_name="profiles", columns=["customer_id", "datasource_id", "data"], records=records
            )
        links = [
            (customer_id(0, user), service_id, table_id, customer_id(table_index, user))
            for table_index, table_id in enumerate(tables)
            if table_index > 0
            for user in range(users)
        ]
        await connection.copy_records_to_table(
            "links",
            schema_name="aliases",
            columns=["optimizely_user_id", "dcp_service_id", "datasource_id", "customer_id"],
            records=links,
        )
        # Settled, as a table that has served a while is: otherwise autovacuum and the first reads' hint-bit
        # writes of freshly copied rows run during the measurement and show as its slowest requests.
        await connection.execute("VACUUM (ANALYZE) profiles.profiles")
        await connection.execute("VACUUM (ANALYZE) aliases.links")
        # The load leaves hundreds of megabytes of dirty pages and WAL: a checkpoint now, rather than one
        # falling due part way through the figures, writing them out while some are measured and not others.
        try:
            await connection.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            print("no checkpoint after loading: the bench's database role may not run CHECKPOINT", flush=True)
    finally:
        await connection.close()


async def raw_upserts(
    database_url: str, table_id: int, attribute_id: int, *, concurrency: int, seconds: float
) -> Figures:
    """The baseline for writes: the same single-row upsert, straight from asyncpg."""
    pool = await asyncpg.create_pool(database_url, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    statement = (
        "INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data) VALUES ($1, $2, $3::jsonb)"
        " ON CONFLICT (customer_id, datasource_id) DO UPDATE SET data = p.data || $3::jsonb, updated_at = now()"
        " RETURNING data"
    )

    async def call(i: int) -> None:
        await pool.fetchval(statement, f"raw-{i % 50000}", table_id, json.dumps({str(attribute_id): i}))

    try:
        return await drive("write, raw asyncpg upsert (baseline)", call, concurrency=concurrency, seconds=seconds)
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    options = parser.parse_args()
    users = options.profiles // TABLES
    server, name = await create_database()
    database_url = _with_database(server, name)
    process = None
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            process, rest, grpc_address, token = start_platform(database_url, Path(data_dir))
            async with httpx.AsyncClient(base_url=rest, headers={"Token": token}, timeout=60) as http:
                service_id, tables, attributes = await build_schema(http)
                started = time.perf_counter()
                await load(database_url, service_id, tables, attributes, users)
                print(f"loaded {users * TABLES:,} profiles in {time.perf_counter() - started:.0f} s", flush=True)
                await report(options, http, grpc_address, token, database_url, service_id, tables, attributes, users)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        await drop_database(server, name)


async def report(  # noqa: PLR0917 - one call site, and each argument is a different part of the setup
    options: argparse.Namespace,
    http: httpx.AsyncClient,
    grpc_address: str,
    token: str,
    database_url: str,
    service_id: int,
    tables: list[int],
    attributes: dict[int, list[int]],
    users: int,
) -> None:
    concurrency, seconds = options.concurrency, options.seconds
    rng = random.Random(11)
    crm_table = tables[1]
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        # An internal caller authenticates once and forwards the signed identity.
        auth = await schema_grpc.AuthServiceStub(channel).Authenticate(schema_pb.AuthenticateRequest(token=token))
        metadata = (("x-dcp-identity", auth.assertion),)
        schema = schema_grpc.SchemaServiceStub(channel)
        profiles = profiles_grpc.ProfilesServiceStub(channel)

        async def grpc_floor(i: int) -> None:
            await schema.WhoAmI(schema_pb.WhoAmIRequest(), metadata=metadata)

        async def grpc_read(i: int) -> None:
            await profiles.GetProfile(
                profiles_pb.GetProfileRequest(
                    dcp_service_id=service_id,
                    dcp_datasource_id=crm_table,
                    customer_id=customer_id(1, rng.randrange(users)),
                ),
                metadata=metadata,
            )

        async def grpc_consolidated(i: int) -> None:
            view = await profiles.GetConsolidatedView(
                profiles_pb.GetConsolidatedViewRequest(
                    dcp_service_id=service_id, optimizely_user_id=customer_id(0, rng.randrange(users))
                ),
                metadata=metadata,
            )
            assert len(view.profiles) == TABLES

        async def grpc_write(i: int) -> None:
            await profiles.MergeProfile(
                profiles_pb.MergeProfileRequest(
                    dcp_service_id=service_id,
                    dcp_datasource_id=crm_table,
                    customer_id=f"write-{i % 50000}",
                    data={"a0": profiles_pb.Value(long_value=i)},
                ),
                metadata=metadata,
            )

        async def rest_floor(i: int) -> None:
            response = await http.get("/api/whoami")
            assert response.status_code == 200

        async def rest_read(i: int) -> None:
            response = await http.get(
                f"/api/customer_profile/{service_id}/{crm_table}/{customer_id(1, rng.randrange(users))}"
            )
            assert response.status_code == 200

        floor = await drive("gRPC floor: WhoAmI (no database)", grpc_floor, concurrency=concurrency, seconds=seconds)
        read = await drive("gRPC single-table read", grpc_read, concurrency=concurrency, seconds=seconds)
        consolidated = await drive(
            "gRPC consolidated view (4 tables)", grpc_consolidated, concurrency=concurrency, seconds=seconds
        )
        write = await drive("gRPC single-customer write", grpc_write, concurrency=concurrency, seconds=seconds)
        raw = await raw_upserts(
            database_url, crm_table, attributes[crm_table][0], concurrency=concurrency, seconds=seconds
        )
        rest_floor_figures = await drive(
            "REST floor: GET /api/whoami", rest_floor, concurrency=concurrency, seconds=seconds
        )
        rest_read_figures = await drive("REST single-table read", rest_read, concurrency=concurrency, seconds=seconds)

    print(f"\n{users * TABLES:,} profiles, {TABLES} tables x {ATTRIBUTES} attributes, {concurrency} requests in flight")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for figures in (floor, read, consolidated, write, raw, rest_floor_figures, rest_read_figures):
        print(figures.line())
    print()
    print(f"gRPC read / floor throughput:            {read.rate / floor.rate:.2f}   (target >= 0.6)")
    rest_ratio = rest_read_figures.rate / rest_floor_figures.rate
    print(f"REST read / floor throughput:            {rest_ratio:.2f}   (target >= 0.6)")
    print(
        f"consolidated p99 / single-table p99:     {consolidated.percentile(0.99) / read.percentile(0.99):.2f}"
        "   (target <= 1.5)"
    )
    print(f"gRPC write / raw asyncpg upsert:         {write.rate / raw.rate:.2f}")
    print(f"mean latency, gRPC read: {statistics.fmean(read.latencies) * 1000:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
