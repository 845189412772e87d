"""A `dcp up` that is killed (SIGKILL: the OOM killer, say) leaves none of its processes behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.processes import Running, base_env, scratch_database


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after its last ')' are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_dcp_up_takes_its_checking_and_import_processes_with_it(database_url: str, tmp_path: Path) -> None:
    with scratch_database(database_url, "dcp_killed") as url:
        env = {**base_env(), "DCP_DATABASE_URL": url}
        running = Running(["up", "--data-dir", str(tmp_path / "data"), "--http-port", "0", "--grpc-port", "0"], env)
        left: set[int] = set()
        try:
            rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
            token = running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
            with httpx.Client(base_url=f"{rest}/experiment/v1", headers={"Token": token}, timeout=60) as http:
                assert http.post("/dcp_services", json={"name": "s"}).status_code == 201
                table = http.post(
                    "/dcp_services/1/dcp_datasources",
                    json={"name": "t", "keyfield_locator_type": "cookie", "keyfield_locator_name": "c"},
                )
                assert table.status_code == 201, table.text
                # A file checked through `validate` starts the pool of checking processes.
                checked = http.post(
                    f"/dcp_datasources/{table.json()['id']}/validate",
                    params={"file_name": "a.csv"},
                    content=b"customerId\ncrm-1\n",
                )
                assert checked.status_code == 200, checked.text
            children = _children(running.process.pid)
            assert len(children) >= 3, "expected the S3 server, the import worker and a checking process"

            running.process.send_signal(signal.SIGKILL)
            running.process.wait(timeout=10)
            deadline = time.monotonic() + 20
            while any(_alive(child) for child in children) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = {child for child in children if _alive(child)}
            assert not left, f"processes of the killed dcp up still run: {sorted(left)}"
        finally:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            running.kill()
