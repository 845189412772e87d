"""Driving gRPC methods with grpc_load, a load generator written in C, and reading its report.

The client must not compete with the server for the machine's cores, so gRPC
figures come from grpc_load (bench/grpc_load.c, on gRPC's C core) rather than
from a Python client in the bench's process, which spends about as much CPU
per call as the server it measures. The bench serializes the request messages
beforehand; grpc_load sends them in order, cycling, and counts every call whose
status is not OK.

The binary is built on first use, with the distribution's libgrpc-dev, into
`.tools/grpc_load/<hash of the source>/`, so a changed source is built again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

SOURCE = Path(__file__).with_name("grpc_load.c")
TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "grpc_load"
_FIGURES = ("requests", "seconds", "rate", "p50_ms", "p99_ms", "non_ok")


class GrpcLoadOutputError(ValueError):
    """grpc_load's report lacks a figure the bench reads."""


@dataclass(frozen=True)
class GrpcLoadReport:
    """What one grpc_load run measured."""

    requests: int
    """Calls with status OK that ended within the measured seconds."""
    seconds: float
    rate: float
    """Requests per second of the measured seconds."""
    p50_ms: float
    p99_ms: float
    non_ok: int
    """Calls of the whole run, warm-up included, that ended with any status but OK."""
    failure: str
    """The first non-OK call's status code and details; empty when every call was OK."""

    @property
    def failed(self) -> bool:
        return self.non_ok > 0


def parse_grpc_load_output(text: str) -> GrpcLoadReport:
    """Reads grpc_load's report: one `name: value` line per figure, and the first failure when there was one."""
    found = dict(re.findall(r"^(requests|seconds|rate|p50_ms|p99_ms|non_ok): *([\d.]+) *$", text, re.MULTILINE))
    failure = re.search(r"^first_failure: *(.+?) *$", text, re.MULTILINE)
    missing = [name for name in _FIGURES if name not in found]
    non_ok = int(found.get("non_ok", "0"))
    if non_ok > 0 and failure is None:
        missing.append("first_failure")
    if missing:
        raise GrpcLoadOutputError(f"grpc_load's output has no {', '.join(missing)}:\n{text}")
    return GrpcLoadReport(
        requests=int(found["requests"]),
        seconds=float(found["seconds"]),
        rate=float(found["rate"]),
        p50_ms=float(found["p50_ms"]),
        p99_ms=float(found["p99_ms"]),
        non_ok=non_ok,
        failure=failure.group(1) if failure is not None and non_ok > 0 else "",
    )


def missing_build_packages() -> list[str]:
    """The Debian packages grpc_load's build needs and does not find (each named as its command or library)."""
    missing = [command for command in ("gcc", "pkg-config") if not shutil.which(command)]
    # Without pkg-config there is no asking whether gRPC's development files are there.
    if "pkg-config" in missing or subprocess.run(["pkg-config", "--exists", "grpc"], check=False).returncode != 0:
        missing.append("libgrpc-dev")
    return missing


def _install_build_packages(missing: Sequence[str]) -> None:
    """Installs `missing` from the distribution, as bench.wrk installs wrk."""
    packages = " ".join(missing)
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit(
            f"grpc_load needs {packages} to be built and apt-get is not available: install them and run again"
        )
    if os.geteuid() != 0:
        raise SystemExit(
            f"grpc_load needs {packages} to be built: install them (`sudo apt-get install -y {packages}`) and run again"
        )
    print(f"grpc_load needs {packages} to be built: installing with `apt-get install -y {packages}`", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    installed = subprocess.run([apt, "install", "-y", "-q", *missing], env=environment, check=False)
    if installed.returncode != 0:
        print("apt-get install failed; refreshing the package lists (`apt-get update`) and trying again", flush=True)
        subprocess.run([apt, "update", "-q"], env=environment, check=False)
        subprocess.run([apt, "install", "-y", "-q", *missing], env=environment, check=False)
    if still_missing := missing_build_packages():
        raise SystemExit(f"{' '.join(still_missing)} could not be installed with apt-get: install them and run again")


def ensure_grpc_load() -> str:
    """The grpc_load binary built from this source, built first when missing (installing what the build needs)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    binary = TOOLS / digest / "grpc_load"
    if binary.is_file():
        return str(binary)
    if missing := missing_build_packages():
        _install_build_packages(missing)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc"], capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        raise SystemExit(f"pkg-config cannot find grpc: {flags.stderr.strip()}")
    print(f"building grpc_load into {binary.parent}", flush=True)
    TOOLS.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed, so a build that fails or is interrupted never leaves a binary to be trusted.
    staging = Path(tempfile.mkdtemp(prefix="staging.", dir=TOOLS))
    try:
        built = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(staging / "grpc_load"), str(SOURCE), *flags.stdout.split()],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise SystemExit(f"grpc_load could not be built:\n{built.stderr}")
        # The name holds the hash of the source read above, not of a file changed since.
        (staging / "grpc_load.c").write_bytes(source)
        if binary.parent.is_dir() and not binary.is_file():
            shutil.rmtree(binary.parent)
        try:
            staging.rename(binary.parent)
        except OSError:
            if not binary.is_file():  # another run's build that won the race is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in TOOLS.iterdir():
        if stale.is_dir() and stale != binary.parent and not stale.name.startswith("staging."):
            shutil.rmtree(stale, ignore_errors=True)
    return str(binary)


def write_requests(path: Path, messages: Iterable[Message]) -> int:
    """Writes `messages` serialized, each after its length as 4 bytes big-endian, as grpc_load reads them."""
    count = 0
    with path.open("wb") as file:
        for message in messages:
            body = message.SerializeToString()
            file.write(struct.pack(">I", len(body)))
            file.write(body)
            count += 1
    return count


def run_grpc_load(
    grpc_load: str,
    target: str,
    method: str,
    requests: Path,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    seconds: float,
    warm_up: float,
    concurrency: int,
) -> GrpcLoadReport:
    """One grpc_load run calling `method` (its full path) at `target` (host:port) with the messages in `requests`."""
    command = [
        grpc_load,
        f"--concurrency={concurrency}",
        f"--seconds={seconds:g}",
        f"--warm-up={warm_up:g}",
        *(f"--metadata={key}={value}" for key, value in metadata),
        target,
        method,
        str(requests),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"grpc_load failed ({finished.returncode}): {finished.stderr or finished.stdout}")
    return parse_grpc_load_output(finished.stdout)
