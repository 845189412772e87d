"""README.md runs as printed: every `sh` block, in order, in one bash, against a fresh `dcp up`.

The blocks run as a user runs them, pasted one after another into one terminal (so TOKEN, DCP, API and BASE
carry from block to block), in an empty working directory, with the virtual environment's `bin` first on PATH
(`dcp`, `aws`, `python3`). Each command must exit 0; a `curl` must get a 2xx answer unless its shown result
names another status; a shown result (`# → ...`, see tests/e2e/readme_blocks.py) must match what the command
printed. Processes a block starts in the background are stopped at the end.

The test changes nothing in the README's text except what `SUBSTITUTED` lists: the running platform's ports,
data dir and databases, so that the test never collides with anything else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.processes import Running, base_env, scratch_database
from tests.e2e.readme_blocks import (
    Block,
    Command,
    ReadmeError,
    fenced_blocks,
    mismatches,
    parse_expected,
    split_commands,
    substitute,
    text_matches,
)

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = Path(sys.executable).parent

# Commands of the README that this test does not run itself, and why.
NOT_RUN = {
    "make up": "it starts the platform; the test starts `dcp up` from the virtual environment, as `make up` does",
    "make test": "it runs the test suite, this test included",
}

# What the test replaces in the README's shell blocks (results included), by what.
SUBSTITUTED = {
    "~/.local/share/open-dcp": "the data dir of the `dcp up` under test",
    "8080": "its REST port",
    "50051": "its gRPC port",
    "9000": "the port of its embedded S3 server",
    "postgresql://dcp@db/dcp": 'a second fresh database, for "Running services separately"',
    "8081": "a free port (the gateway run on its own)",
    "9100": "a free port (the S3 store of the services run on their own)",
    "50061": "a free port",
    "50062": "a free port",
    "50063": "a free port",
    "50064": "a free port",
}

COMMAND_SECONDS = 120.0
"""The longest one command may take; the slowest (five processes starting and getting ready) takes seconds."""


@dataclass(frozen=True)
class Outcome:
    stdout: str
    stderr: str
    exit_status: int
    http_status: int | None
    """The status of the last HTTP answer a `curl` of the command got, if it got one."""


class TerminalEnded(Exception):
    """The bash running the README stopped (a syntax error ends a shell reading its commands from a pipe)."""


class Terminal:
    """One bash process fed command after command, as a user's terminal is; each command's output kept apart."""

    def __init__(self, cwd: Path, env: dict[str, str], records: Path) -> None:
        self.records = records
        records.mkdir()
        self.log = (records / "bash.log").open("w")
        # A session of its own: every process a command leaves running is stopped with the group at the end.
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        # curl's answer headers go to a side file, so the HTTP status is known without changing what curl prints.
        self._send('curl() { command curl -D "$__readme_headers" "$@"; }\n')
        self.count = 0
        self.background: list[int] = []

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def run(self, command: Command) -> Outcome:
        self.count += 1
        base = self.records / str(self.count)
        out, err, headers, status = (shlex.quote(f"{base}.{kind}") for kind in ("out", "err", "headers", "rc"))
        self._send(
            f"__readme_headers={headers}; : > {headers}\n"
            f"{{\n{command.text}}} </dev/null >{out} 2>{err}\n"
            f"printf '%s\\n' \"$?\" > {status}.part && mv {status}.part {status}\n"
        )
        if command.background:
            self.background.append(self.count)
        deadline = time.monotonic() + COMMAND_SECONDS
        rc_file = Path(f"{base}.rc")
        while not rc_file.exists():
            if self.process.poll() is not None:
                said = (self.records / "bash.log").read_text(errors="replace")[-3000:]
                raise TerminalEnded(f"bash ended (status {self.process.returncode}); it said:\n{said}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {COMMAND_SECONDS:.0f} s")
            time.sleep(0.05)
        answers = re.findall(r"^HTTP/\S+ (\d{3})", Path(f"{base}.headers").read_text(), flags=re.MULTILINE)
        return Outcome(
            stdout=Path(f"{base}.out").read_text(errors="replace"),
            stderr=Path(f"{base}.err").read_text(errors="replace"),
            exit_status=int(rc_file.read_text()),
            http_status=int(answers[-1]) if answers else None,
        )

    def background_output(self) -> str:
        """What the processes started in the background have printed so far, for failure messages."""
        parts = []
        for number in self.background:
            for kind in ("out", "err"):
                text = Path(self.records / f"{number}.{kind}").read_text(errors="replace")
                if text.strip():
                    parts.append(f"--- command {number}, std{kind}:\n{text[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stops the bash and every process it left running: SIGTERM to the group, then SIGKILL if need be."""
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/", 1)[0]


def _uses_curl(text: str) -> bool:
    return re.search(r"(?:^|[\s;|&($])curl\s", text) is not None


def _problems(command: Command, outcome: Outcome) -> list[str]:
    """What is wrong with a command's outcome, by the README's own account of it."""
    expected = None
    if command.expected is not None:
        # Output of `-w '%{http_code}'` and the like is compared as text.
        as_text = re.search(r"\s(?:-w|--write-out)\s", command.text) is not None
        expected = parse_expected(command.expected, as_text=as_text)
    problems = []
    if outcome.exit_status != 0:
        problems.append(f"it exited with status {outcome.exit_status}")
    if _uses_curl(command.text):
        wanted = expected.status if expected is not None else None
        if outcome.http_status is None:
            problems.append("curl got no HTTP answer")
        elif wanted is not None and outcome.http_status != wanted:
            problems.append(f"HTTP status {outcome.http_status}, not {wanted}")
        elif wanted is None and not 200 <= outcome.http_status < 300:
            problems.append(f"HTTP status {outcome.http_status}, not a 2xx")
    elif expected is not None and expected.status is not None:
        problems.append("the README shows an HTTP status for a command that makes no HTTP request")
    if expected is not None and expected.shape is not None:
        try:
            printed = json.loads(outcome.stdout)
        except ValueError:
            problems.append("its output is not JSON")
        else:
            problems.extend(mismatches(expected.shape, printed))
    elif expected is not None and expected.text is not None and not text_matches(expected.text, outcome.stdout):
        problems.append("its output is not the text shown")
    return problems


def _report(block: Block, command: Command, expected: str, outcome: Outcome | None, problems: list[str]) -> str:
    lines = [
        f"README.md line {command.line} (block at line {block.line}, section {block.section!r}):",
        *(f"    {line}" for line in command.text.rstrip("\n").splitlines()),
        f"expected: {expected}",
        *(f"problem: {problem}" for problem in problems),
    ]
    if outcome is not None:
        lines += [
            f"exit status {outcome.exit_status}, HTTP status {outcome.http_status}",
            f"stdout:\n{outcome.stdout[-4000:]}",
            f"stderr:\n{outcome.stderr[-4000:]}",
        ]
    lines += ["the block:", *(f"    {line}" for line in block.text.rstrip("\n").splitlines())]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReadmePlatform:
    data_dir: Path
    http_port: str
    grpc_port: str
    s3_port: str
    env: dict[str, str]


@contextlib.contextmanager
def _dcp_up(database: str, data_dir: Path) -> Iterator[ReadmePlatform]:
    """`dcp up` from the virtual environment, as `make up` runs it, on a fresh database and free ports."""
    env = {**base_env(), "DCP_DATABASE_URL": database, "DCP_DATA_DIR": str(data_dir)}
    running = Running(["up", "--http-port", "0", "--grpc-port", "0"], env)
    try:
        rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        grpc = running.wait_for(r"gRPC: ([\d.]+:\d+)").group(1)
        s3 = running.wait_for(r"S3: embedded, (http://[\d.]+:\d+) bucket").group(1)
        running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$")
        yield ReadmePlatform(data_dir, _port(rest), _port(grpc), _port(s3), env)
    finally:
        # Stopped as a user stops it, even after a failure: a killed `dcp up` can leave children holding its output.
        status = running.stop() if running.process.poll() is None else running.process.returncode
        running.kill()
    assert status == 0, "".join(running.output)


def _shell_env(platform: ReadmePlatform, home: Path) -> dict[str, str]:
    """A user's environment: the platform's settings as `dcp up` had them, no AWS configuration of the machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCP_", "AWS_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        # The admin commands find the running platform's database as `dcp up` did.
        DCP_DATA_DIR=str(platform.data_dir),
        DCP_DATABASE_URL=platform.env["DCP_DATABASE_URL"],
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def test_every_shell_block_of_the_readme_runs_as_printed(database_url: str, tmp_path: Path) -> None:
    blocks = [block for block in fenced_blocks(README.read_text()) if block.info == "sh"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with (
        scratch_database(database_url, "dcp_readme") as database,
        scratch_database(database_url, "dcp_readme_apart") as apart,
        _dcp_up(database, tmp_path / "data") as platform,
    ):
        table = {
            "~/.local/share/open-dcp": str(platform.data_dir),
            "8080": platform.http_port,
            "50051": platform.grpc_port,
            "9000": platform.s3_port,
            "postgresql://dcp@db/dcp": apart,
            **{port: str(_free_port()) for port in ("8081", "9100", "50061", "50062", "50063", "50064")},
        }
        assert set(table) == set(SUBSTITUTED)
        terminal = Terminal(workdir, _shell_env(platform, tmp_path), tmp_path / "records")
        checked = 0
        try:
            for original in blocks:
                block = Block(original.info, original.section, original.line, substitute(original.text, table))
                try:
                    commands = split_commands(block)
                except ReadmeError as error:
                    pytest.fail(f"README.md block at line {block.line}: {error}", pytrace=False)
                for command in commands:
                    if command.text.strip() in NOT_RUN:
                        continue
                    expected = command.expected or "exit status 0 (and, for curl, a 2xx answer)"
                    outcome: Outcome | None = None
                    try:
                        outcome = terminal.run(command)
                        problems = _problems(command, outcome)
                    except (TimeoutError, ReadmeError, TerminalEnded) as error:
                        problems = [str(error)]
                    if problems:
                        report = _report(block, command, expected, outcome, problems)
                        background = terminal.background_output()
                        if background:
                            report += f"\nwhat the processes started in the background printed:\n{background}"
                        pytest.fail(report, pytrace=False)
                    checked += 1
        finally:
            terminal.close()
        # Every command but the two the test stands in for was run and checked.
        every = sum(len(split_commands(b)) for b in blocks)
        assert checked == every - len(NOT_RUN), f"{checked} of {every} commands checked"
