"""gRPC server bootstrap: interceptors, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services._runtime.auth import CallerResolver
from services._runtime.db import DcpPool
from services._runtime.interceptors import ServerInterceptor
from services._runtime.ports import GRPC, PortSharing, PortUnavailable, check_port, split_address

logger = logging.getLogger(__name__)

# A health service name that is SERVING while the process runs, whatever its
# database does: Kubernetes' liveness probe asks for it, readiness for "".
LIVENESS_SERVICE = "liveness"


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer ready to be added to a server, with its full service names."""

    service_names: tuple[str, ...]
    register: Callable[[grpc.aio.Server], None]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    service_names: tuple[str, ...]
    stop_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Background work to end once the server no longer takes calls."""
        self.stop_hooks.append(hook)

    async def mark_serving(self) -> None:
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(True)

    async def _set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    def watch_database(self, pool: DcpPool, *, interval: float, timeout: float) -> None:
        """Keeps readiness ("" and every service name) NOT_SERVING while `pool` cannot run
        `SELECT 1` within `timeout`, and SERVING again once it can; liveness stays SERVING."""
        task = asyncio.create_task(self._watch(pool, interval, timeout), name="database-health")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.on_stop(stop)

    async def _watch(self, pool: DcpPool, interval: float, limit: float) -> None:
        ready = True
        while True:
            await asyncio.sleep(interval)
            problem = await database_problem(pool, limit)
            if (problem is None) != ready:
                ready = problem is None
                if ready:
                    logger.warning("the database answers again; serving")
                else:
                    logger.warning("the database cannot be reached (%s); not serving until it answers", problem)
                await self._set_ready(ready)

    async def stop(self, grace: float) -> None:
        # Readiness goes first so load balancers drain before calls are refused.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.stop_hooks:
            await hook()


async def database_problem(pool: DcpPool, limit: float) -> str | None:
    """Why `pool`'s database cannot run a statement within `limit` seconds, or None if it can."""
    try:
        async with asyncio.timeout(limit):
            await pool.probe()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


@dataclass
class PreparedServer:
    """A server bound to its port but not started: callers can dial the port
    (e.g. a service that asks another in the same process) before servicers exist."""

    server: grpc.aio.Server
    port: int

    async def start(self, bindings: Sequence[ServiceBinding]) -> RunningServer:
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        names: list[str] = []
        for binding in bindings:
            binding.register(self.server)
            names.extend(binding.service_names)
        reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self.server.start()
        # Ready only once the process says so (RunningServer.mark_serving).
        for name in ("", LIVENESS_SERVICE, *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        return RunningServer(server=self.server, port=self.port, health=health_servicer, service_names=tuple(names))


MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


def prepare_server(
    *,
    resolver: CallerResolver,
    address: str,
    sharing: PortSharing = PortSharing.ALONE,
    private_address: str | None = None,
) -> PreparedServer:
    """A server listening on `address` ("host:0" picks a free port) once started.

    `sharing` says whether other serving processes of the platform listen on the
    same port; `private_address` (such as "unix:/path") is a second listener that
    reaches this process alone.
    """
    host, port = split_address(address)
    sharing.check_free(host, port, GRPC)
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(resolver)],
        options=[
            ("grpc.so_reuseport", 1 if sharing.reuse_port else 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Callers reconnect, and so look the service's pods up again, at least
            # this often: replicas added by an autoscaler get calls within minutes.
            # Calls in flight finish on the old connection (no grace limit), so a
            # long batch merge is never cut.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ],
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise _grpc_unavailable(address, str(error)) from None
    if port == 0:
        raise _grpc_unavailable(address, "no address could be bound")
    if private_address is not None and not server.add_insecure_port(private_address):
        raise RuntimeError(f"the gRPC server could not listen on {private_address}")
    return PreparedServer(server=server, port=port)


def _grpc_unavailable(address: str, detail: str) -> PortUnavailable:
    # gRPC says only that the bind failed; a bind of our own tells a taken port from the rest.
    host, port = split_address(address)
    try:
        check_port(host, port, GRPC)
    except PortUnavailable as unavailable:
        return unavailable
    return PortUnavailable(host=host, port=port, service=GRPC, reason=detail)


async def build_server(bindings: Sequence[ServiceBinding], *, resolver: CallerResolver, address: str) -> RunningServer:
    """Builds and starts a server on `address` ("host:0" picks a free port)."""
    return await prepare_server(resolver=resolver, address=address).start(bindings)


# Objects the cyclic collector lets accumulate before it looks at the youngest ones.
# Python's default, 700, is fewer than the objects a few dozen requests in flight
# hold between them: under load the collector then ran about a hundred times a
# second, moved what those requests held into the older generations, and so
# walked every long-lived object (a full collection, 1 to 2 ms with the loop
# stopped) twice a second. Objects that die young are freed by their reference
# count and never make this count grow; only survivors and garbage cycles do, so
# a busy process still collects, only no longer because of the requests it is
# serving. 10,000 young objects take well under a millisecond to walk.
YOUNG_GENERATION_THRESHOLD = 10_000


def started_for_good() -> None:
    """Told once a serving process has started everything it serves with.

    What exists now (modules, servers, pools, caches' scaffolding) lives until
    the process stops: moved out of the collector's sight, it is no longer
    walked by every full collection, whose pauses otherwise show in the
    slowest requests' latency. From now on the collector waits for more young
    objects (see YOUNG_GENERATION_THRESHOLD).
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


async def wait_for_stop_signal() -> None:
    """Returns on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
