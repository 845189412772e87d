"""Resident memory of a real `dcp up` through a large import and while idle.

Starts `dcp up` on embedded defaults (its own PostgreSQL and S3 server) in a
fresh data dir, makes a table of ten `long` attributes, uploads a file of
`--rows` rows with the table's own key, waits until it is imported, then
leaves the platform idle (the importer still polling the bucket). It prints
the RSS of each process `dcp up` runs (the serving process, the import
worker, whichever process holds that role, and the embedded S3 server) before the upload, at its peak during the
import, right after it, and at the end of the idle time, and the idle growth
per minute.

Run: python -m bench.platform_memory [--rows 1000000] [--idle 600]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

DCP = str(Path(sys.executable).parent / "dcp")
ATTRIBUTES = [f"a{i}" for i in range(10)]


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def _children(pid: int) -> dict[str, int]:
    """The processes `dcp up` started itself, by role."""
    roles: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent != pid:
            continue
        if "import-worker" in command:
            roles["import worker"] = int(entry.name)
        elif "embedded_s3" in command:
            roles["S3 server"] = int(entry.name)
    return roles


def _request(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Token": token})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"null")


def _file(rows: int) -> bytes:
    lines = ["customerId," + ",".join(ATTRIBUTES)]
    lines += [f"c{row}," + ",".join(str(row * 10 + i) for i in range(len(ATTRIBUTES))) for row in range(rows)]
    return ("\n".join(lines) + "\n").encode()


class Sampler:
    """Samples every process's RSS once a second, keeping each one's peak."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.pids = self._pids()
        self.peak = dict.fromkeys(self.pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self) -> dict[str, int]:
        # Looked up each time: a worker that has grown is replaced by a fresh process.
        return {"serving process": self.parent, **_children(self.parent)}

    def now(self) -> dict[str, float]:
        current = self._pids()
        return {role: _rss_mib(current[role]) if role in current else 0.0 for role in self.pids}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for role, value in self.now().items():
                self.peak[role] = max(self.peak[role], value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--idle", type=float, default=600.0, help="idle seconds after the import")
    options = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="dcp-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCP_", "AWS_"))}
    env.update(DCP_LOG_LEVEL="WARNING", DCP_S3_EMBEDDED_PORT="0")
    process = subprocess.Popen(
        [DCP, "up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    patterns = {
        "rest": r"REST: (http://[\d.]+:\d+)/experiment",
        "s3": r"S3: embedded, (http://[\d.]+:\d+) ",
        "token": r"^\s+([0-9a-f]{64}:\d+)\s*$",
    }
    for line in process.stdout:
        for name, pattern in patterns.items():
            match = re.search(pattern, line)
            if match:
                found[name] = match.group(1)
        if len(found) == len(patterns):
            break
    # Keep reading its output, so that a full pipe never blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    rest, token = found["rest"], found["token"]
    try:
        service = _request(f"{rest}/experiment/v1/dcp_services", token, "POST", {"name": "memory"})
        table = _request(
            f"{rest}/experiment/v1/dcp_services/{service['id']}/dcp_datasources",
            token,
            "POST",
            {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        )
        for name in ATTRIBUTES:
            _request(
                f"{rest}/experiment/v1/dcp_datasources/{table['id']}/dcp_datasource_attributes",
                token,
                "POST",
                {"name": name, "datatype": "long"},
            )
        time.sleep(5)  # let every process settle before the baseline
        body = _file(options.rows)
        with Sampler(process.pid) as sampler:
            baseline = sampler.now()
            s3 = boto3.client(
                "s3",
                endpoint_url=found["s3"],
                region_name="us-east-1",
                aws_access_key_id=table["aws_access_key"],
                aws_secret_access_key=table["aws_secret_key"],
            )
            started = time.monotonic()
            s3.put_object(Bucket="optimizely-import", Key=f"{table['s3_path']}/big.csv", Body=body)
            del body
            while True:
                uploads = _request(f"{rest}/experiment/v1/dcp_datasources/{table['id']}/uploads", token)
                if uploads and uploads[0]["status"] not in ("pending", "processing"):
                    break
                time.sleep(0.5)
            imported = time.monotonic() - started
            after_import = sampler.now()
            time.sleep(options.idle)
            after_idle = sampler.now()
            peak = dict(sampler.peak)
        print(f"{options.rows:,} rows: {uploads[0]['status']}, {uploads[0]['rows_ok']:,} stored in {imported:.1f} s")
        print(f"{'process':<16}{'baseline':>10}{'peak':>10}{'after':>10}{'idle end':>10}{'idle MiB/min':>14}")
        for role in sampler.pids:
            growth = (after_idle[role] - after_import[role]) / max(options.idle / 60, 1e-9)
            print(
                f"{role:<16}{baseline[role]:>10.0f}{peak[role]:>10.0f}{after_import[role]:>10.0f}"
                f"{after_idle[role]:>10.0f}{growth:>14.2f}"
            )
        print("(MiB of resident memory; 'after' is right after the import, 'idle end' after the idle time)")
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
