"""Driving HTTP endpoints with wrk, a load generator written in C, and reading its report.

The client must not compete with the server for the machine's cores, so REST
figures come from wrk rather than from a Python client in the bench's process.
wrk scripts (Lua) pick a random customer per request and count every answer
outside 2xx, which wrk itself reports only from 400 up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


class WrkOutputError(ValueError):
    """wrk's report lacks a figure the bench reads."""


@dataclass(frozen=True)
class WrkReport:
    """What one wrk run measured."""

    requests: int
    seconds: float
    rate: float
    """Requests per second, as wrk computes it (requests over the run's wall time)."""
    p50_ms: float
    p99_ms: float
    non_2xx: int
    """Answers outside 200-299, counted by the bench's script (wrk's own count starts at 400)."""
    socket_errors: int
    """Connect, read and write errors and timeouts: requests that got no answer."""

    @property
    def failed(self) -> bool:
        return self.non_2xx > 0 or self.socket_errors > 0


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk_output(text: str) -> WrkReport:
    """Reads a `wrk --latency` report whose script prints "non-2xx responses: N" when done."""
    percentiles = {
        match.group(1): _duration_ms(match.group(2), match.group(3))
        for match in re.finditer(rf"^\s*(50|99)(?:\.0+)?%\s+{_DURATION}\s*$", text, re.MULTILINE)
    }
    totals = re.search(rf"^\s*(\d+) requests in {_DURATION},", text, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)\s*$", text, re.MULTILINE)
    counted = re.search(r"^non-2xx responses: (\d+)\s*$", text, re.MULTILINE)
    missing = [
        name
        for name, found in (
            ("50% latency", "50" in percentiles),
            ("99% latency", "99" in percentiles),
            ("request total", totals),
            ("Requests/sec", rate),
            ("the script's non-2xx count", counted),
        )
        if not found
    ]
    if missing or totals is None or rate is None or counted is None:
        raise WrkOutputError(f"wrk's output has no {', '.join(missing)}:\n{text}")
    socket_errors = 0
    if errors := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text, re.MULTILINE):
        socket_errors = sum(int(count) for count in errors.groups())
    return WrkReport(
        requests=int(totals.group(1)),
        seconds=_duration_ms(totals.group(2), totals.group(3)) / 1000,
        rate=float(rate.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx=int(counted.group(1)),
        socket_errors=socket_errors,
    )


def ensure_wrk() -> str:
    """The wrk binary on PATH, installed from the distribution when missing."""
    if found := shutil.which("wrk"):
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit("wrk is not on PATH and apt-get is not available: install wrk (https://github.com/wg/wrk)")
    if os.geteuid() != 0:
        raise SystemExit("wrk is not on PATH: install it (`sudo apt-get install -y wrk`) and run again")
    print("wrk is not on PATH: installing it with `apt-get install -y wrk`", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    installed = subprocess.run([apt, "install", "-y", "-q", "wrk"], env=environment, check=False)
    if installed.returncode != 0:
        print("apt-get install failed; refreshing the package lists (`apt-get update`) and trying again", flush=True)
        subprocess.run([apt, "update", "-q"], env=environment, check=False)
        subprocess.run([apt, "install", "-y", "-q", "wrk"], env=environment, check=False)
    if found := shutil.which("wrk"):
        return found
    raise SystemExit("wrk could not be installed with apt-get: install wrk (https://github.com/wg/wrk) and run again")


# Shared by every script: one seed per thread, the bearer token, and a count of
# answers outside 2xx summed over the threads when the run is done.
_LUA_COMMON = """
local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_number)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("non2xx")
  end
  io.write(string.format("non-2xx responses: %d\\n", total))
end
"""


def lua_quote(value: str) -> str:
    """`value` as a Lua string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def lua_script(*, method: str, path: str, users: int, token: str, body: str | None = None) -> str:
    """A wrk script sending `method` for a random `user` in 0..users-1 with the bearer token.

    `path` and `body` are Lua expressions over `user` (a whole number), e.g.
    `'"/api/x/" .. string.format("crm1-%08d", user)'`.
    """
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    header_table = ", ".join(f"[{lua_quote(name)}] = {lua_quote(value)}" for name, value in headers.items())
    return (
        f"-- wrk script written by bench.rest_bench: {method} to random customers\n"
        f"local users = {users}\n"
        f"local headers = {{{header_table}}}\n"
        f"{_LUA_COMMON}\n"
        "function request()\n"
        "  local user = math.random(0, users - 1)\n"
        f"  return wrk.format({lua_quote(method)}, {path}, headers, {body or 'nil'})\n"
        "end\n"
    )


def run_wrk(
    wrk: str,
    url: str,
    script: str,
    scratch: Path,
    *,
    name: str,
    seconds: float,
    connections: int,
    threads: int,
) -> WrkReport:
    """One wrk run against `url` (scheme, host and port; the script makes the paths)."""
    script_file = scratch / f"{name}.lua"
    script_file.write_text(script)
    command = [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        "--latency",
        f"--script={script_file}",
        url,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"wrk failed ({finished.returncode}): {finished.stderr or finished.stdout}")
    return parse_wrk_output(finished.stdout)
