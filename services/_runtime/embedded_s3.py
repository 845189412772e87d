"""The S3 server `dcp up` runs when no store is configured, in a process of its own.

The server (`embedded_s3_server`) checks every request's signature and keeps
each DCP service's key to its own prefix. This side starts it, tells it which
keys exist, and stops it. It listens to its standard input: when this process
ends, however it ends, the pipe closes and the server stops too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services._runtime import extras
from services._runtime.ports import EMBEDDED_S3, PortUnavailable

START_SECONDS = 60.0
REPLY_SECONDS = 10.0


class EmbeddedS3Error(RuntimeError):
    """The embedded S3 server could not start, or stopped answering."""


class EmbeddedS3PortUnavailable(EmbeddedS3Error, PortUnavailable):
    """The embedded S3 server cannot listen on its port."""

    def __init__(self, *, host: str, port: int, reason: str | None, detail: str) -> None:
        PortUnavailable.__init__(self, host=host, port=port, service=EMBEDDED_S3, reason=reason)
        self.args = (f"the embedded S3 server could not start: {detail}",)

    def __str__(self) -> str:
        return str(self.args[0])


class EmbeddedS3:
    """One embedded S3 server process; its methods block, so async callers run them in a thread."""

    def __init__(
        self,
        *,
        bucket: str,
        platform_key: tuple[str, str],
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        lean: bool = True,
    ) -> None:
        """`lean=False` leaves moto as it is, only to measure what `keep_moto_lean` saves."""
        extras.require_embedded("moto", part="the embedded S3 server", instead="DCP_S3_ENDPOINT_URL to use an S3 store")
        self._config = {
            "lean": lean,
            "host": host,
            "port": port,
            "bucket": bucket,
            "platform_key": list(platform_key),
            "data_dir": str(data_dir),
        }
        self._host = host
        self._asked_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._aborted = False

    @property
    def endpoint_url(self) -> str:
        assert self._port is not None, "start() first"
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host  # noqa: S104 - comparing, not binding
        return f"http://{host}:{self._port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self) -> str:
        """Starts the server and returns its endpoint once it accepts requests."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services._runtime.embedded_s3_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            # Out of the terminal's process group: Ctrl-C reaches the parent, which stops this server itself.
            start_new_session=True,
        )
        if self._aborted:
            self.abort()
        try:
            answer = self._ask(self._config, START_SECONDS)
        except EmbeddedS3Error:
            self.stop()
            raise
        if "error" in answer:
            self.stop()
            if "listen_errno" in answer:
                code = int(answer["listen_errno"])
                raise EmbeddedS3PortUnavailable(
                    host=self._host,
                    port=self._asked_port,
                    reason=None if code == errno.EADDRINUSE else str(answer.get("listen_reason", answer["error"])),
                    detail=answer["error"],
                )
            raise EmbeddedS3Error(f"the embedded S3 server could not start: {answer['error']}")
        self._port = int(answer["ready"])
        return self.endpoint_url

    def grant(self, grants: Iterable[tuple[int, str, str]]) -> None:
        """Lets each (service id, access key, secret key) reach its service's prefix."""
        self._command({"op": "grant", "grants": [list(grant) for grant in grants]})

    def revoke(self, access_key: str) -> None:
        self._command({"op": "revoke", "access_key": access_key})

    def abort(self) -> None:
        """Ends the server at once; callable from any thread, also while `start` waits for it,
        which then fails instead of waiting up to its time limit."""
        self._aborted = True
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def _command(self, command: dict[str, Any]) -> None:
        answer = self._ask(command, REPLY_SECONDS)
        if "error" in answer:
            raise EmbeddedS3Error(f"the embedded S3 server refused {command['op']}: {answer['error']}")

    def _ask(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            process = self._process
            if process is None:
                raise EmbeddedS3Error("the embedded S3 server is not running")
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                process.stdin.write(json.dumps(message) + "\n")
                process.stdin.flush()
            except BrokenPipeError:
                raise self._gone(process) from None
            deadline = time.monotonic() + timeout
            while not select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if time.monotonic() >= deadline:
                    raise EmbeddedS3Error(f"the embedded S3 server did not answer within {timeout:.0f} s")
            line = process.stdout.readline()
            if not line:
                raise self._gone(process)
            answer: dict[str, Any] = json.loads(line)
            return answer

    @staticmethod
    def _gone(process: subprocess.Popen[str]) -> EmbeddedS3Error:
        code = process.wait(timeout=10)
        return EmbeddedS3Error(f"the embedded S3 server exited with status {code} (its errors are above)")
