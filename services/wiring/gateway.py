"""The REST gateway served by uvicorn in a process that also runs services (or alone)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import uvicorn
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import GatewayClients, create_app
from gateway.console_files import ConsoleStore
from gateway.protocol import GatewayHttpProtocol
from gateway.ratelimit import LocalRateLimiter, RateLimiter, RatePolicy, RedisRateLimiter, open_redis
from services._runtime.ports import REST_GATEWAY, PortSharing, PortUnavailable
from services._runtime.settings import S3Settings, Settings


class _QuietUvicorn(uvicorn.Server):
    # The process owns SIGTERM/SIGINT and stops every part in order.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RunningGateway:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


def console_store(s3: S3Settings) -> ConsoleStore:
    """Where the console tells people to send files: the store as S3 clients outside reach it."""
    return ConsoleStore(endpoint_url=s3.endpoint_url, bucket=s3.bucket, region=s3.region)


async def start_gateway(
    settings: Settings,
    clients: GatewayClients,
    *,
    store_for_console: S3Settings | None = None,
    sharing: PortSharing = PortSharing.ALONE,
    metrics_endpoint: Callable[[Request], Awaitable[Response]] | None = None,
) -> RunningGateway:
    """`sharing` says whether other serving processes listen on the same port;
    `metrics_endpoint` answers `/metrics` instead of this process's own registry."""
    sharing.check_free(settings.http_host, settings.http_port, REST_GATEWAY)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only
    # when their proto says TCP, and without it Nagle holds each response body
    # back until the client's delayed ACK (~40 ms per request).
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sharing.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.http_host, settings.http_port))
    except OSError as error:
        sock.close()
        raise PortUnavailable.from_error(
            error, host=settings.http_host, port=settings.http_port, service=REST_GATEWAY
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    limiter: RateLimiter | None = None
    redis: Redis | None = None
    if settings.rate_limit_per_second > 0:
        policy = RatePolicy(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.redis_url:
            redis = open_redis(settings.redis_url)
            limiter = RedisRateLimiter(redis, policy)
        else:
            limiter = LocalRateLimiter(policy)
    app = create_app(
        clients,
        max_body_bytes=settings.max_body_bytes,
        limiter=limiter,
        serve_metrics=settings.metrics_port is None,
        metrics_endpoint=metrics_endpoint,
        console=console_store(store_for_console or settings.s3),
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http=GatewayHttpProtocol)
    server = _QuietUvicorn(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            # The Redis client lives exactly as long as the server that limits with it.
            if redis is not None:
                await redis.aclose()

    task = asyncio.create_task(serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return RunningGateway(server=server, task=task, host=settings.http_host, port=sock.getsockname()[1])
