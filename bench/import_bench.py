"""Bulk import speed and memory against PostgreSQL's own floor.

Builds one table with 10 attributes and N existing profiles (default
1,000,000), writes a CSV file updating every one of them, puts it into an S3
server (moto's, in its own process) and lets `dcp up`, in its own process,
import it. Printed in the same run:

- the import: rows/s from the moment the file is claimed to the moment its
  upload is marked done, and the importing process's peak resident memory;
- the floor: the same rows, already parsed, sent straight to PostgreSQL with
  COPY into a staging table and one set-based merge into the same profiles.

Run: python -m bench.import_bench [--rows N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import boto3
import httpx

from bench.profiles_bench import _with_database, create_database, drop_database, start_platform
from services._runtime.db import init_connection

ATTRIBUTES = [
    ("ltv", "long", None),
    ("score", "double", None),
    ("tier", "string", None),
    ("vip", "bool", None),
    ("joined", "datetime", "yyyy-mm-dd"),
    ("visits", "long", None),
    ("segment", "string", None),
    ("seen", "datetime", "epoch"),
    ("spend", "double", None),
    ("opted", "bool", None),
]
BUCKET = "optimizely-import"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the S3 server did not start")


def cells(rng: random.Random, row: int) -> list[str]:
    return [
        str(rng.randrange(10**9)),
        f"{rng.random() * 1000:.4f}",
        rng.choice(["gold", "silver", "bronze", "Height: 6'1\""]),
        rng.choice(["true", "false"]),
        f"20{rng.randrange(10, 25)}-0{rng.randrange(1, 10)}-1{rng.randrange(0, 10)}",
        str(row % 1000),
        f"segment {rng.randrange(100)}",
        str(1_600_000_000_000 + row),
        f"{rng.random() * 100:.2f}",
        rng.choice(["TRUE", "False"]),
    ]


def typed(texts: list[str]) -> list[object]:
    return [
        int(texts[0]),
        float(texts[1]),
        texts[2],
        texts[3] == "true",
        texts[4],
        int(texts[5]),
        texts[6],
        int(texts[7]),
        float(texts[8]),
        texts[9].lower() == "true",
    ]


def write_file(path: Path, rows: int) -> None:
    """The CSV file, written line by line with the csv module's quoting."""
    import csv  # noqa: PLC0415 - only the file writer needs it

    rng = random.Random(7)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customerId", *(name for name, _, _ in ATTRIBUTES)])
        for row in range(rows):
            writer.writerow([f"customer-{row}", *cells(rng, row)])


async def preload(database_url: str, table_id: int, attribute_ids: list[int], rows: int) -> None:
    """Every customer of the file already has a profile, so each row is an update."""
    connection = await asyncpg.connect(database_url)
    try:
        await init_connection(connection)
        batch = [
            (f"customer-{row}", table_id, {str(attribute_ids[0]): row, str(attribute_ids[2]): "old"})
            for row in range(rows)
        ]
        await connection.copy_records_to_table(
            "profiles", schema_name="profiles", columns=("customer_id", "datasource_id", "data"), records=batch
        )
        await connection.execute("ANALYZE profiles.profiles")
    finally:
        await connection.close()


async def floor(database_url: str, table_id: int, attribute_ids: list[int], rows: int) -> float:
    """Rows/s of parsed rows sent straight to PostgreSQL: COPY into staging, one merge."""
    rng = random.Random(7)
    keys = [str(a) for a in attribute_ids]
    parsed = [(f"customer-{row}", dict(zip(keys, typed(cells(rng, row)), strict=True))) for row in range(rows)]
    connection = await asyncpg.connect(database_url)
    try:
        await init_connection(connection)
        started = time.perf_counter()
        async with connection.transaction():
            await connection.execute("CREATE TEMP TABLE stage (customer_id text, data jsonb) ON COMMIT DROP")
            await connection.copy_records_to_table("stage", records=parsed, columns=("customer_id", "data"))
            await connection.execute(
                "INSERT INTO profiles.profiles AS p (customer_id, datasource_id, data)"
                " SELECT customer_id, $1, data FROM stage"
                " ON CONFLICT (customer_id, datasource_id) DO UPDATE SET data = p.data || EXCLUDED.data,"
                " updated_at = now()",
                table_id,
            )
        return rows / (time.perf_counter() - started)
    finally:
        await connection.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def finished_upload(database_url: str, table_id: int) -> asyncpg.Record:
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            row = await connection.fetchrow(
                "SELECT status, error, extract(epoch FROM finished_at - started_at) AS seconds"
                " FROM imports.uploads WHERE datasource_id = $1",
                table_id,
            )
            if row is not None and row["status"] not in ("pending", "processing"):
                return row
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    options = parser.parse_args()
    server, name = await create_database()
    database_url = _with_database(server, name)
    s3_process, s3_url = start_s3()
    platform = None
    try:
        with tempfile.TemporaryDirectory() as work:
            platform, rest, _, token = start_platform(
                database_url,
                Path(work) / "dcp",
                {
                    "DCP_S3_ENDPOINT_URL": s3_url,
                    "DCP_S3_ACCESS_KEY_ID": "bench",
                    "DCP_S3_SECRET_ACCESS_KEY": "bench",
                    "DCP_IMPORT_POLL_SECONDS": "0.5",
                },
            )
            async with httpx.AsyncClient(base_url=rest, headers={"Token": token}, timeout=60) as http:
                service = (await http.post("/experiment/v1/dcp_services", json={"name": "bench"})).json()
                table = (
                    await http.post(
                        f"/experiment/v1/dcp_services/{service['id']}/dcp_datasources",
                        json={"name": "warehouse", "keyfield_locator_type": "uid"},
                    )
                ).json()
                attribute_ids = []
                for attribute, datatype, fmt in ATTRIBUTES:
                    body = {"name": attribute, "datatype": datatype, **({"format": fmt} if fmt else {})}
                    created = await http.post(
                        f"/experiment/v1/dcp_datasources/{table['id']}/dcp_datasource_attributes", json=body
                    )
                    attribute_ids.append(created.json()["id"])
            await preload(database_url, table["id"], attribute_ids, options.rows)
            path = Path(work) / "customers.csv"
            write_file(path, options.rows)
            size_mb = path.stat().st_size / 1024 / 1024
            s3 = boto3.client(
                "s3",
                endpoint_url=s3_url,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                region_name="us-east-1",
            )
            print(f"{options.rows:,} rows, {size_mb:.0f} MB; platform resident before: {rss_mb(platform.pid):.0f} MB")
            s3.upload_file(str(path), BUCKET, f"{table['s3_path']}/customers.csv")
            path.unlink()
            row = await finished_upload(database_url, table["id"])
            if row["status"] != "processed":
                raise SystemExit(f"the import ended {row['status']}: {row['error']}")
            imported = options.rows / float(row["seconds"])
            peak = peak_rss_mb(platform.pid)
            floor_rate = await floor(database_url, table["id"], attribute_ids, options.rows)
            print(f"{'import from S3 (parse, validate, merge)':<44} {imported:>9,.0f} rows/s")
            print(f"{'floor: COPY to staging + one merge':<44} {floor_rate:>9,.0f} rows/s")
            print(f"{'ratio (target >= 0.5)':<44} {imported / floor_rate:>9.2f}")
            print(f"{'peak resident memory of dcp up (< 300 MB)':<44} {peak:>9.0f} MB")
    finally:
        if platform is not None:
            platform.terminate()
            platform.wait(timeout=60)
        s3_process.terminate()
        s3_process.wait(timeout=30)
        await drop_database(server, name)


if __name__ == "__main__":
    if sys.platform != "linux":
        raise SystemExit("the benchmark reads peak memory from /proc; run it on Linux")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
