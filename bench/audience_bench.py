"""Audience and export speed over 1,000,000 profiles, each against a baseline from the same run.

Builds the profile benchmark's data (one DCP service, 4 tables of 10
attributes, N profiles, every Optimizely user aliased to one customer of each
other table), starts `dcp up` in its own process, and prints:

- evaluations/s of one user's consolidated profile against 25 audiences of
  5 conditions each (gRPC, requests in flight), next to the consolidated view
  alone, which every evaluation reads first;
- the member count of a 3-condition audience against a plain `count(*)` of
  the same table's profiles (target: at most 3 times that scan), for the
  Optimizely table and for an aliased table;
- table export rows/s (CSV into an S3 server in its own process) against a plain
  `COPY ... TO STDOUT` of the same profiles (target: at least 0.5 of it).

Run: python -m bench.audience_bench [--profiles N] [--concurrency 16] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx

from bench.import_bench import start_s3
from bench.profiles_bench import (
    ATTRIBUTES,
    DATATYPES,
    TABLES,
    _with_database,
    build_schema,
    create_database,
    customer_id,
    drive,
    drop_database,
    load,
    start_platform,
)
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc

AUDIENCES = 25
REPEATS = 3


def _leaf(table: int, attribute: int, match_type: str, value: Any = None) -> dict[str, Any]:
    leaf: dict[str, Any] = {
        "type": "dcp",
        "dcp_datasource_id": table,
        "dcp_attribute_id": attribute,
        "match_type": match_type,
    }
    if value is not None:
        leaf["value"] = value
    return leaf


def _condition(table: int, attributes: list[int], index: int, rng: random.Random) -> dict[str, Any]:
    """A condition on attribute `index` of the table, suited to its datatype (the profile bench's values)."""
    datatype, fmt = DATATYPES[index]
    attribute = attributes[index]
    if datatype == "long":
        low = rng.randrange(-(10**12), 0)
        return _leaf(table, attribute, "between", [low, low + 10**12])
    if datatype == "double":
        return _leaf(table, attribute, rng.choice(["gt", "lt"]), rng.random() * 1000)
    if datatype == "bool":
        return _leaf(table, attribute, "exact", rng.random() < 0.5)
    if datatype == "string":
        return _leaf(table, attribute, "substring", rng.choice(["jeans", "shoes", "hats", "bags"]))
    if fmt == "epoch":
        return _leaf(table, attribute, "ge", 1_700_000_000_000 + rng.randrange(10**10))
    return _leaf(table, attribute, "after", f"2024-{rng.randrange(1, 13):02d}-01")


def audience_conditions(tables: list[int], attributes: dict[int, list[int]], rng: random.Random) -> list[Any]:
    """About 5 conditions over the service's tables, nested the way an audience builder nests them."""
    leaves = [
        _condition(table, attributes[table], rng.randrange(ATTRIBUTES), rng)
        for table in rng.sample(tables, k=min(len(tables), 3))
    ]
    extra = [
        _condition(tables[0], attributes[tables[0]], rng.randrange(ATTRIBUTES), rng),
        _condition(tables[-1], attributes[tables[-1]], rng.randrange(ATTRIBUTES), rng),
    ]
    return ["and", *leaves[:2], ["or", leaves[2], ["not", extra[0]], extra[1]]]


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """The best of REPEATS runs (after one warm-up), and the last result."""
    result = await call()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = await call()
        best = min(best, time.perf_counter() - started)
    return best, result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    options = parser.parse_args()
    users = options.profiles // TABLES
    server, name = await create_database()
    database_url = _with_database(server, name)
    # The S3 server runs in its own process, as a real store is a service of its own.
    s3_process, s3_url = start_s3()
    process = None
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            process, rest, grpc_address, token = start_platform(
                database_url,
                Path(data_dir),
                {"DCP_S3_ENDPOINT_URL": s3_url, "DCP_S3_ACCESS_KEY_ID": "bench", "DCP_S3_SECRET_ACCESS_KEY": "bench"},
            )
            async with httpx.AsyncClient(base_url=rest, headers={"Token": token}, timeout=600) as http:
                service_id, tables, attributes = await build_schema(http)
                started = time.perf_counter()
                await load(database_url, service_id, tables, attributes, users)
                # A table that has been in use is vacuumed: its visibility map then lets
                # a plain count(*) answer from the primary key alone, the hardest baseline.
                connection = await asyncpg.connect(database_url)
                try:
                    # One statement a call: VACUUM refuses a multi-statement query's transaction.
                    await connection.execute("VACUUM ANALYZE profiles.profiles")
                    await connection.execute("VACUUM ANALYZE aliases.links")
                finally:
                    await connection.close()
                print(f"loaded {users * TABLES:,} profiles in {time.perf_counter() - started:.0f} s", flush=True)
                await report(options, http, grpc_address, token, database_url, service_id, tables, attributes, users)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        s3_process.terminate()
        s3_process.wait(timeout=30)
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
    rng = random.Random(5)
    project = (
        await http.post("/experiment/v1/projects", json={"project_name": "bench", "dcp_service_id": service_id})
    ).json()["id"]

    async def create(name: str, conditions: list[Any]) -> int:
        response = await http.post(
            f"/experiment/v1/projects/{project}/audiences", json={"name": name, "conditions": conditions}
        )
        assert response.status_code == 201, response.text
        audience_id: int = response.json()["id"]
        return audience_id

    for index in range(AUDIENCES):
        await create(f"audience {index}", audience_conditions(tables, attributes, rng))
    optimizely, aliased = tables[0], tables[1]
    three = {
        table: await create(
            f"three conditions on table {table}",
            [
                "and",
                _condition(table, attributes[table], 0, rng),
                _condition(table, attributes[table], 3, rng),
                _condition(table, attributes[table], 4, rng),
            ],
        )
        for table in (optimizely, aliased)
    }

    async with grpc.aio.insecure_channel(grpc_address) as channel:
        auth = await schema_grpc.AuthServiceStub(channel).Authenticate(schema_pb.AuthenticateRequest(token=token))
        metadata = (("x-dcp-identity", auth.assertion),)
        profiles = profiles_grpc.ProfilesServiceStub(channel)

        async def consolidated(i: int) -> None:
            await profiles.GetConsolidatedView(
                profiles_pb.GetConsolidatedViewRequest(
                    dcp_service_id=service_id, optimizely_user_id=customer_id(0, rng.randrange(users))
                ),
                metadata=metadata,
            )

        async def evaluate(i: int) -> None:
            answer = await profiles.EvaluateAudiences(
                profiles_pb.EvaluateAudiencesRequest(
                    dcp_service_id=service_id, optimizely_user_id=customer_id(0, rng.randrange(users))
                ),
                metadata=metadata,
            )
            assert len(answer.audiences) == AUDIENCES + len(three)

        view = await drive(
            "gRPC consolidated view (4 tables)", consolidated, concurrency=options.concurrency, seconds=options.seconds
        )
        evaluations = await drive(
            f"gRPC evaluate {AUDIENCES + len(three)} audiences",
            evaluate,
            concurrency=options.concurrency,
            seconds=options.seconds,
        )

        counts = await measure_counts(profiles, metadata, database_url, three)
        copy_seconds, copied = await measure_copy(database_url, aliased)

        async def export_table() -> int:
            started = await http.post(f"/experiment/v1/dcp_datasources/{aliased}/exports", json={"format": "csv"})
            assert started.status_code == 201, started.text
            path = f"/experiment/v1/dcp_datasources/{aliased}/exports/{started.json()['id']}"
            while True:
                export = (await http.get(path)).json()
                if export["status"] in ("done", "failed"):
                    assert export["status"] == "done", export
                    rows: int = export["row_count"]
                    return rows
                await asyncio.sleep(0.05)

        export_seconds, exported = await timed(export_table)

    print(f"\n{users * TABLES:,} profiles, {TABLES} tables x {ATTRIBUTES} attributes, {options.concurrency} in flight")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(view.line())
    print(evaluations.line())
    print(
        f"evaluations/s against {AUDIENCES + len(three)} audiences: {evaluations.rate:,.0f}"
        f" ({evaluations.rate / view.rate:.2f} of the consolidated view's rate;"
        f" mean {statistics.fmean(evaluations.latencies) * 1000:.2f} ms)"
    )
    for table, (member_seconds, scan_seconds, members) in counts.items():
        kind = "Optimizely table" if table == optimizely else "aliased table"
        print(
            f"member count, 3 conditions on the {kind}: {member_seconds * 1000:,.0f} ms ({members:,} members)"
            f" vs count(*) {scan_seconds * 1000:,.0f} ms = {member_seconds / scan_seconds:.2f}x   (target <= 3)"
        )
    export_rate, copy_rate = exported / export_seconds, copied / copy_seconds
    print(
        f"table export (CSV to S3): {export_rate:,.0f} rows/s vs COPY TO STDOUT {copy_rate:,.0f} rows/s"
        f" = {export_rate / copy_rate:.2f}   (target >= 0.5)"
    )


async def measure_counts(
    profiles: profiles_grpc.ProfilesServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    database_url: str,
    audiences: dict[int, int],
) -> dict[int, tuple[float, float, int]]:
    """Per table: (member count seconds, count(*) seconds, members) of its 3-condition audience."""
    connection = await asyncpg.connect(database_url)
    try:
        counts: dict[int, tuple[float, float, int]] = {}
        for table, audience in audiences.items():

            async def count_members(audience: int = audience) -> int:
                answer = await profiles.CountAudienceMembers(
                    profiles_pb.CountAudienceMembersRequest(audience_id=audience), metadata=metadata
                )
                return answer.count

            async def count_rows(table: int = table) -> int:
                rows: int = await connection.fetchval(
                    "SELECT count(*) FROM profiles.profiles WHERE datasource_id = $1", table
                )
                return rows

            member_seconds, members = await timed(count_members)
            scan_seconds, _ = await timed(count_rows)
            counts[table] = (member_seconds, scan_seconds, members)
        return counts
    finally:
        await connection.close()


async def measure_copy(database_url: str, table: int) -> tuple[float, int]:
    """PostgreSQL's own output speed for one table's profiles, the bytes thrown away."""
    connection = await asyncpg.connect(database_url)

    async def discard(chunk: bytes) -> None:
        del chunk

    async def copy_table() -> int:
        status: str = await connection.copy_from_query(
            "SELECT customer_id, data FROM profiles.profiles WHERE datasource_id = $1",
            table,
            output=discard,
            format="csv",
        )
        return int(status.rsplit(maxsplit=1)[-1])

    try:
        return await timed(copy_table)
    finally:
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
