"""The `dcp` command line: its version, its help, and admin commands that must find the platform's data."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import cli
from tests.e2e.processes import DCP, base_env


def _dcp(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DCP, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand the parser knows, as the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


def test_dcp_version_names_the_installed_version() -> None:
    shown = _dcp(["--version"], base_env())
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"dcp {importlib.metadata.version('open-dcp')}"


def test_every_command_explains_itself_with_an_example() -> None:
    commands = list(_commands(cli.parser()))
    assert ("tokens", "create") in commands
    assert ("secrets", "rotate") in commands
    for command in commands:
        shown = _dcp([*command, "--help"], base_env())
        assert shown.returncode == 0, shown.stderr
        # usage, then the description, then the arguments, then the epilog.
        description = shown.stdout.split("\n\n")[1]
        assert not description.startswith(("positional arguments:", "options:")), (command, shown.stdout)
        _, marker, example = shown.stdout.partition("\nexample:\n")
        assert marker, (command, shown.stdout)
        assert example.strip().startswith(("dcp ", "DCP_")), (command, shown.stdout)


def test_the_ports_of_dcp_up_are_documented_with_their_variables() -> None:
    shown = " ".join(_dcp(["up", "--help"], base_env()).stdout.split())
    for flag, variable in (
        ("--http-port", "DCP_HTTP_PORT"),
        ("--grpc-port", "DCP_GRPC_PORT"),
        ("--s3-port", "DCP_S3_EMBEDDED_PORT"),
    ):
        assert re.search(f"{flag} PORT [^-]*{variable}", shown), shown
    assert "A port of 0 picks a free one" in shown


ADMIN_COMMANDS = {
    "dcp accounts create": ["accounts", "create", "Acme"],
    "dcp accounts list": ["accounts", "list"],
    "dcp tokens create": ["tokens", "create", "--account", "1"],
    "dcp tokens list": ["tokens", "list", "--account", "1"],
    "dcp tokens revoke": ["tokens", "revoke", "1"],
    "dcp migrate": ["migrate"],
    "dcp secrets rotate": ["secrets", "rotate"],
}


@pytest.mark.parametrize("name", ADMIN_COMMANDS)
def test_an_admin_command_pointed_at_a_dir_without_a_database_refuses_and_makes_none(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "elsewhere"
    refused = _dcp([*ADMIN_COMMANDS[name], "--data-dir", str(missing)], base_env())
    assert refused.returncode != 0
    assert refused.stderr.splitlines() == [
        f"{name}: no Open DCP database in {missing} (given by --data-dir), and this command makes none;"
        " point it at the data dir of your `dcp up` with --data-dir DIR or DCP_DATA_DIR"
        " (its start-up line `admin:` shows the command), or at the platform's database with DCP_DATABASE_URL"
    ]
    assert not missing.exists()


def test_the_data_dir_is_found_as_dcp_up_finds_it_and_never_made(tmp_path: Path) -> None:
    # DCP_DATA_DIR, an empty directory: refused, and left empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    by_variable = _dcp(["accounts", "create", "Acme"], {**base_env(), "DCP_DATA_DIR": str(empty)})
    assert by_variable.returncode != 0
    assert f"no Open DCP database in {empty} (from DCP_DATA_DIR)" in by_variable.stderr
    assert list(empty.iterdir()) == []

    # Neither: the default directory, which is not made either.
    home = tmp_path / "home"
    home.mkdir()
    default = _dcp(["accounts", "create", "Acme"], {**base_env(), "HOME": str(home)})
    assert default.returncode != 0
    assert f"no Open DCP database in {home / '.local' / 'share' / 'open-dcp'} (the default data dir)" in default.stderr
    assert list(home.iterdir()) == []
