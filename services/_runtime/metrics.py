"""Prometheus metrics: what each process counts, and where `/metrics` is served.

Every metric lives in the process-wide registry, so `dcp up` (every service in
one process) exposes them all on the gateway's port, and a process started by
`dcp serve` exposes its own on `DCP_METRICS_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services._runtime import tracing

# A `_created` series beside every counter and histogram doubles what
# Prometheus stores and tells nothing that `rate()` needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a cached read (a millisecond) to a bulk call near its deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# From a file picked up by its event notification to one that waited hours behind a big one.
IMPORT_LAG_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed by the server, by service, method and status code.",
    ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to its status, by service, method and status code.",
    ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "http_server_requests",
    "REST requests answered by the gateway, by method, route template and status.",
    ("method", "route", "status"),
)
HTTP_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Time from a REST request's arrival to its response, by method, route template and status.",
    ("method", "route", "status"),
    buckets=LATENCY_BUCKETS,
)
IMPORT_ROWS = Counter("dcp_import_rows_imported", "Rows of uploaded files stored in profiles.")
IMPORT_REJECTED = Counter("dcp_import_rows_rejected", "Rows of uploaded files refused (reported as upload errors).")
IMPORT_FILES = Counter("dcp_import_files", "Uploaded files finished, by final status.", ("status",))
IMPORT_LAG = Histogram(
    "dcp_import_lag_seconds",
    "Time from a file's arrival in S3 (its last-modified time) to its upload finishing.",
    buckets=IMPORT_LAG_BUCKETS,
)

# Anything else a client sends as a method would be a label value of its choosing.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
_CONVERTER = re.compile(r"{(\w+):\w+}")


def grpc_handled(grpc_type: str, method: str, code: str, seconds: float) -> None:
    """One finished RPC; `method` is the full path, `/package.Service/Method`."""
    service, _, name = method[1:].partition("/")
    GRPC_HANDLED.labels(grpc_type, service, name, code).inc()
    GRPC_SECONDS.labels(grpc_type, service, name, code).observe(seconds)


def import_finished(status: str, *, rows_imported: int, rows_rejected: int, lag_seconds: float) -> None:
    """One upload finished for good (its outcome committed)."""
    IMPORT_FILES.labels(status).inc()
    IMPORT_ROWS.inc(rows_imported)
    IMPORT_REJECTED.inc(rows_rejected)
    # A store whose clock runs ahead of ours would otherwise make it negative.
    IMPORT_LAG.observe(max(lag_seconds, 0.0))


class _PoolCollector(Collector):
    """Reads the process's database pools at scrape time, so the gauges are never stale."""

    def __init__(self) -> None:
        self._pools: list[asyncpg.Pool] = []
        self._lock = threading.Lock()

    def watch(self, pool: asyncpg.Pool) -> None:
        with self._lock:
            self._pools = [p for p in self._pools if not p.is_closing()]
            self._pools.append(pool)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self._pools = [p for p in self._pools if not p.is_closing()]
            pools = list(self._pools)
        size = sum(p.get_size() for p in pools)
        idle = sum(p.get_idle_size() for p in pools)
        yield GaugeMetricFamily("dcp_db_pool_size", "Open connections of this process's database pool.", size)
        yield GaugeMetricFamily("dcp_db_pool_in_use", "Connections handed out to a request or a job.", size - idle)
        yield GaugeMetricFamily("dcp_db_pool_idle", "Open connections waiting in the pool.", idle)
        yield GaugeMetricFamily(
            "dcp_db_pool_max_size", "Connections the pool may open.", sum(p.get_max_size() for p in pools)
        )


_pools = _PoolCollector()
REGISTRY.register(_pools)


def watch_pool(pool: asyncpg.Pool) -> None:
    """Adds the pool to the `dcp_db_pool_*` gauges until it closes."""
    _pools.watch(pool)


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)


async def endpoint(request: Request) -> Response:
    """`GET /metrics` for Starlette; Prometheus scrapes it without credentials."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


class ObservedHttp:
    """ASGI middleware: counts and times each request by its route template, and
    opens the request's server span when tracing is on.

    The template comes from the route Starlette matched (`scope["route"]`), so
    ids in paths never become label values.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding
        span = tracing.http_server_span(scope)

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if span is not None:
                    span.response(message)
            await send(message)

        try:
            if span is None:
                await self.app(scope, receive, observed_send)
            else:
                with span.current():
                    await self.app(scope, receive, observed_send)
        finally:
            route = _route_template(scope)
            method = scope["method"] if scope["method"] in _HTTP_METHODS else "OTHER"
            labels = (method, route, str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            if span is not None:
                span.finish(None if route == UNMATCHED_ROUTE else route, status)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:
        # Only recent Starlette releases record the route they matched; with older ones the routes are asked again.
        partial = None
        for candidate in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
            if match == Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    path = getattr(route, "path", None)
    # The label is the template as documented: `{customer_id}`, not Starlette's `{customer_id:path}`.
    return _CONVERTER.sub(r"{\1}", path) if path else UNMATCHED_ROUTE


@contextlib.asynccontextmanager
async def serving(host: str, port: int | None) -> AsyncIterator[int | None]:
    """`/metrics` on a port of its own for the life of the block; yields the port
    (0 picks a free one). Without a port there is no server and None is yielded."""
    if port is None:
        yield None
        return
    server = await asyncio.start_server(_answer, host, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


# A scraper sends one small request; anything slower or larger is not one.
_REQUEST_SECONDS = 10.0
_REQUEST_HEAD_BYTES = 16 * 1024


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_SECONDS)
        parts = head[:_REQUEST_HEAD_BYTES].split(b"\r\n", 1)[0].split()
        method, target = (parts[0], parts[1].split(b"?", 1)[0]) if len(parts) >= 2 else (b"", b"")
        if method in (b"GET", b"HEAD") and target == b"/metrics":
            status, content_type, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), exposition()
        else:
            status, content_type, body = b"404 Not Found", b"text/plain", b"this port serves GET /metrics\n"
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, content_type, len(body))
        )
        if method != b"HEAD":
            writer.write(body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass  # a client that went away or never sent a request gets nothing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
