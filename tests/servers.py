"""Servers that tests start in processes of their own, on free ports of this machine."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PortHolder:
    """Keeps a stopped server's port while it is down: bound but not listening, so
    calls to it are refused, as they are by a host whose server died, and no other
    process on the machine is handed the port meanwhile."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._socket: socket.socket | None = None

    def hold(self) -> None:
        if self._socket is None:
            held = socket.socket()
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind(("127.0.0.1", self.port))
            self._socket = held

    def release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class S3Process:
    """moto's S3 server in a process of its own, which a test may kill and start again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._port_holder = PortHolder(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._port_holder.release()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        """Ends the server at once, as a crash or a lost host would: open connections break mid-transfer."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None
        self._port_holder.hold()

    def stop(self) -> None:
        self.kill()
        self._port_holder.release()
