"""A `dcp` process driven the way a user drives it, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DCP = str(Path(sys.executable).parent / "dcp")


class Running:
    """A `dcp` process whose output is read line by line without blocking."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        # Marked, so that whatever it leaves behind can be found (see `kill`).
        env, self.mark = marked(env) if MARK_VARIABLE not in env else (env, env[MARK_VARIABLE])
        self.process = subprocess.Popen(
            [DCP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(self.output)}")

    def finish(self, timeout: float = 60) -> str:
        """Everything the process printed, once it has exited."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while not self.lines.empty():
            self.output.append(self.lines.get_nowait())
        return "".join(self.output)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """Ends the process if it still runs, and releases its pipe.

        A process it started that outlived it may still hold the pipe open; closing it
        then would wait for that process forever, so such leftovers are killed first
        (tests of what a killed `dcp` leaves behind look before calling this).
        """
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._reader.is_alive():
            for leftover in marked_processes(self.mark):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(leftover.split(":", 1)[0]), signal.SIGKILL)
            self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCP_")}
    env["DCP_LOG_LEVEL"] = "WARNING"
    # Free ports for everything the platform starts, so tests never collide.
    env["DCP_S3_EMBEDDED_PORT"] = "0"
    return env


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on a connection of its own, from synchronous test code."""

    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
            return rows
        finally:
            await connection.close()

    return asyncio.run(run())


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A database of its own on the test server, so that only the platform under test imports its files."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MARK_VARIABLE = "OPEN_DCP_TEST_MARK"


def marked(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """`env` with a mark of its own: every process started with it, and every process those start, carries it."""
    mark = secrets.token_hex(8)
    return {**env, MARK_VARIABLE: mark}, mark


def marked_processes(mark: str) -> list[str]:
    """The command lines of the processes still running with `mark` in their environment.

    A process's parent changes when its starter exits, but its environment stays:
    this finds what a stopped `dcp` left behind, however deep it was started.
    """
    needle = f"{MARK_VARIABLE}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if needle in environ.split(b"\0") and state != "Z":
            found.append(f"{entry.name}: {command.strip()}")
    return found


def left_running(mark: str) -> list[str]:
    """`marked_processes` once those that were already exiting have had a moment to go."""
    deadline = time.monotonic() + 2
    while (found := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@contextlib.contextmanager
def up_until(data_dir: Path, args: list[str], appears: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`dcp up --data-dir DATA_DIR ARGS`, once it has made `appears` (its embedded PostgreSQL's pid file,
    say); yields the process and its mark (see `marked`), and kills the process if it still runs at the end."""
    env, mark = marked(base_env())
    process = subprocess.Popen(
        [DCP, "up", "--data-dir", str(data_dir), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not appears.exists():
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        yield process, mark
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
