"""The ports a process listens on: whether one can be had, and the error when it cannot."""

from __future__ import annotations

import enum
import errno
import socket

from services._runtime.settings import Settings

# What listens on each port, as people running the platform know it.
REST_GATEWAY = "REST gateway"
GRPC = "gRPC"
EMBEDDED_S3 = "embedded S3 server"
# The embedded S3 server's interface, named once so that the port check probes where it will bind.
EMBEDDED_S3_HOST = "127.0.0.1"


class PortUnavailable(Exception):
    """A port this process must listen on cannot be had."""

    def __init__(self, *, host: str, port: int, service: str, reason: str | None = None) -> None:
        """`reason` None means another program listens on the port already."""
        self.host = host
        self.port = port
        self.service = service
        self.reason = reason
        super().__init__(
            f"port {port} ({service}) is in use by another program"
            if reason is None
            else f"cannot listen on {host}:{port} ({service}): {reason}"
        )

    @property
    def in_use(self) -> bool:
        return self.reason is None

    @classmethod
    def from_error(cls, error: OSError, *, host: str, port: int, service: str) -> PortUnavailable:
        if error.errno == errno.EADDRINUSE:
            return cls(host=host, port=port, service=service)
        return cls(host=host, port=port, service=service, reason=error.strerror or str(error))


class PortSharing(enum.Enum):
    """Whether a listener shares its port with the platform's other serving processes (SO_REUSEPORT)."""

    ALONE = "alone"
    """The only process on the port."""
    FIRST = "first"
    """The first of several: the port must be free of other programs, which SO_REUSEPORT would not tell."""
    JOINING = "joining"
    """Another of the platform's serving processes listens on the port already."""

    @property
    def reuse_port(self) -> bool:
        return self is not PortSharing.ALONE

    def check_free(self, host: str, port: int, service: str) -> None:
        """Before the first bind: a port another program listens on is told as the lone bind tells it."""
        if self is PortSharing.FIRST:
            check_port(host, port, service)


def check_port(host: str, port: int, service: str) -> None:
    """Raises PortUnavailable unless `host:port` can be listened on now (port 0 always can).

    Binds the way the servers do (SO_REUSEADDR, so a port whose old connections
    linger in TIME_WAIT counts as free) and lets go at once.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:  # socket.gaierror included: a host that does not resolve
            raise PortUnavailable.from_error(error, host=host, port=port, service=service) from None
        except UnicodeError as error:  # a host name that cannot be looked up at all
            raise PortUnavailable(host=host, port=port, service=service, reason=str(error)) from None


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6 host]:port"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_ports(settings: Settings) -> None:
    """Raises PortUnavailable for the first port `dcp up` would listen on that it cannot have now.

    Checked before anything starts, so that a taken port costs no database start;
    each server still reports its own bind failing later (another program may
    take the port meanwhile).
    """
    wanted = [(settings.http_host, settings.http_port, REST_GATEWAY), (settings.grpc_host, settings.grpc_port, GRPC)]
    if settings.s3.endpoint_url is None:
        wanted.append((EMBEDDED_S3_HOST, settings.s3.embedded_port, EMBEDDED_S3))
    for host, port, service in wanted:
        check_port(host, port, service)
    chosen = [(host, port, service) for host, port, service in wanted if port != 0]
    for index, (host, port, service) in enumerate(chosen):
        for other_host, other_port, other in chosen[index + 1 :]:
            if (host, port) == (other_host, other_port):
                raise PortUnavailable(
                    host=host, port=port, service=other, reason=f"the {service} is set to the same port"
                )
