"""Resident memory of the embedded S3 server through imports and while idle.

Starts the server as `dcp up` does, then does to it what the importer does:
a file arrives under `dcp/` (multipart, as the AWS CLI sends large files), the
importer lists `dcp/` with ListObjectVersions, reads the file, copies it to
`archive/` and deletes the version it imported. Then it only polls, as the
importer does while nothing arrives. The server's RSS is printed after each
file and during the idle polls, for the server as shipped and, with
`--moto-as-is`, for moto without the changes of `keep_moto_lean`.

Run: python -m bench.embedded_s3_memory [--files 20] [--mib 16] [--idle 30] [--poll 0.5] [--moto-as-is]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from services._runtime.embedded_s3 import EmbeddedS3

BUCKET = "optimizely-import"
KEY = ("BENCHPLATFORMKEY0000", "bench-platform-secret")
SERVICE = (1, "AKDCBENCHSERVICE0000", "bench-service-secret")


def _client(endpoint: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def _mib(pid: int) -> float:
    """Resident memory of the process, from Linux's /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _poll(platform: Any) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = []
    for page in platform.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix="dcp/"):
        versions.extend(page.get("Versions", ()))
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20, help="files imported and archived")
    parser.add_argument("--mib", type=int, default=16, help="size of each file in MiB")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle polling afterwards")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls (the importer: 2)")
    parser.add_argument("--moto-as-is", action="store_true", help="without keep_moto_lean, for comparison")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dcp-s3-bench-") as data:
        server = EmbeddedS3(bucket=BUCKET, platform_key=KEY, data_dir=Path(data) / "s3", lean=not options.moto_as_is)
        endpoint = server.start()
        try:
            server.grant([SERVICE])
            process = server.pid
            platform = _client(endpoint, *KEY)
            customer = _client(endpoint, *SERVICE[1:])
            platform.create_bucket(Bucket=BUCKET)
            platform.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
            print(f"{'moto as is' if options.moto_as_is else 'as shipped'}: RSS at start {_mib(process):.0f} MiB")
            body = (b"customerId,ltv\n" + b"c0000000001,1234567\n" * (options.mib * 1024 * 1024 // 20))[
                : options.mib * 1024 * 1024
            ]
            parts = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2)
            peak = 0.0
            started = time.monotonic()
            for number in range(options.files):
                key = f"dcp/1/1/file-{number}.csv"
                customer.upload_fileobj(_Reader(body), BUCKET, key, Config=parts)
                for version in _poll(platform):
                    got = platform.get_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])
                    for _ in got["Body"].iter_chunks(1024 * 1024):
                        pass
                    source = {"Bucket": BUCKET, "Key": version["Key"], "VersionId": version["VersionId"]}
                    platform.copy_object(Bucket=BUCKET, Key="archive/" + version["Key"], CopySource=source)
                    platform.delete_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])
                peak = max(peak, _mib(process))
                print(f"  after file {number + 1:3}: RSS {_mib(process):7.0f} MiB")
            took = time.monotonic() - started
            print(f"imported {options.files} x {options.mib} MiB in {took:.1f} s; peak RSS {peak:.0f} MiB")
            idle_start = _mib(process)
            started = time.monotonic()
            polls = 0
            while time.monotonic() - started < options.idle:
                _poll(platform)
                polls += 1
                time.sleep(options.poll)
            idle_end = _mib(process)
            seconds = time.monotonic() - started
            print(
                f"idle: {polls} polls in {seconds:.0f} s, RSS {idle_start:.0f} -> {idle_end:.0f} MiB"
                f" ({(idle_end - idle_start) / seconds:+.2f} MiB/s); descriptors {_open_files(process)}"
            )
        finally:
            server.stop()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        piece = bytes(self._data[self._at : end])
        self._at += len(piece)
        return piece


if __name__ == "__main__":
    main()
