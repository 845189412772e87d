"""Schemathesis over the served OpenAPI document, against `dcp up` with two accounts' data.

Each account's run makes every call with its own token, draws path ids from both accounts' real objects,
and has the other account replay its reads (object-level authorization). A failing run prints
schemathesis's report with a curl line per failure; `--seed` makes it send the same requests again.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.api_schema import Seeded, cross_account, run_schemathesis, seed, write_config
from tests.e2e.processes import DCP, Running, base_env, scratch_database

SEED = 20240601
# Cases per operation and phase; with two runs this keeps the whole test within a few minutes on 2 cores.
MAX_EXAMPLES = 40
RUN_TIMEOUT_SECONDS = 240


@dataclass
class Scene:
    url: str
    document: dict[str, Any]
    accounts: dict[str, Seeded]


def _new_account(env: dict[str, str], data_dir: Path, name: str) -> str:
    """A new account and its classic token, made with the commands an operator uses."""
    created = subprocess.run(
        [DCP, "accounts", "create", name, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    account_id = re.search(r"account (\d+) created", created.stdout)
    assert account_id, created.stdout + created.stderr
    issued = subprocess.run(
        [DCP, "tokens", "create", "--account", account_id.group(1), "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return issued.stdout.strip()


@pytest.fixture(scope="module")
def scene(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    data_dir = tmp_path_factory.mktemp("schema-dcp")
    with scratch_database(database_url, "dcp_schema") as url:
        env = {
            **base_env(),
            "DCP_DATABASE_URL": url,
            "DCP_IMPORT_POLL_SECONDS": "0.2",
            # Services made during the run start the create-then-read chains (tables, attributes, profiles);
            # with the default of one per account every create after the seeded one is refused.
            "DCP_MAX_ACTIVE_SERVICES_PER_ACCOUNT": "1000",
        }
        running = Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], env)
        try:
            rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
            first = running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
            second = _new_account(env, data_dir, "Second")
            with httpx.Client(base_url=rest, timeout=30) as http:
                accounts = {"A": seed(http, "A", first, "a"), "B": seed(http, "B", second, "b")}
                document = http.get("/openapi.json").json()
            yield Scene(rest, document, accounts)
            assert running.stop() == 0
        finally:
            running.kill()


@pytest.mark.parametrize(("owner", "peer"), [("A", "B"), ("B", "A")])
def test_schemathesis_finds_no_fault_and_no_way_into_the_other_account(
    scene: Scene, owner: str, peer: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, scene.accounts[owner], scene.accounts[peer])
    run = run_schemathesis(
        scene.url, tmp_path, config, seed_value=SEED, max_examples=MAX_EXAMPLES, timeout=RUN_TIMEOUT_SECONDS
    )
    tested = re.search(r"Tested: (\d+)", run.output)
    summary = re.search(r"Test cases:\n\s*(.+)", run.output)
    print(
        f"schemathesis as {owner}: {tested.group(1) if tested else '?'} operations tested in {run.seconds:.0f} s, "
        f"{len(run.exchanges)} calls recorded, {summary.group(1) if summary else 'no summary'}"
    )
    assert run.returncode == 0, run.failure_text()

    crossed = cross_account(run, scene.document, owner, scene.accounts[peer])
    assert not crossed.problems, "\n".join(crossed.problems)
    # The ids were drawn so that many calls name the other account's objects; each must have been refused.
    assert crossed.calls >= 20, crossed
    assert crossed.refused.get(404, 0) >= 10, crossed
