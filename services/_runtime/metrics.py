"""Prometheus metrics: what each process counts, and where `/metrics` is served.

Every metric lives in the process-wide registry, so a `dcp up` process (every
service in one process) counts them all, and a process started by `dcp serve`
exposes its own on `DCP_METRICS_PORT`.

`dcp up` on several cores runs several serving processes on the same ports, and
a scrape of the gateway's `/metrics` lands on any of them; each answers with the
whole platform's counts. The other processes send their samples (`samples`) to
the first one about every second, which adds them to its own (`PlatformCounts`);
they answer a scrape with its sums. So what a scrape shows of another process's
counts is up to about a second old. Counters and histograms of a process that
was restarted keep counting from where it stopped, minus at most that second.
The `process_*` and `python_*` series describe the first process alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

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
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
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
        yield GaugeMetricFamily(
            "dcp_db_pool_size",
            "Open connections of the database pool (in `dcp up`, of all its serving processes).",
            size,
        )
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


def endpoint_of(text: Callable[[], Awaitable[bytes]]) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics` answered with `text()`; 503 when it cannot be had."""

    async def answer(request: Request) -> Response:
        try:
            body = await text()
        except MetricsUnavailable as error:
            return Response(f"{error}\n", status_code=503, media_type="text/plain")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return answer


class MetricsUnavailable(Exception):
    """The platform's counts cannot be gathered now (the process holding them does not answer)."""


# What one process sends of its registry: by family name, its type and its samples (name, labels, value).
Families = dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]

# Series about the process that answers (its memory, its start time): a sum over processes means nothing.
_OWN_PROCESS_PREFIXES = ("process_", "python_")
# Types that only grow while a process lives, so a stopped process's last counts are kept.
_MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})


def samples() -> Families:
    """This process's counts, for the process that answers scrapes for the platform."""
    return {
        family.name: (family.type, [(sample.name, sample.labels, sample.value) for sample in family.samples])
        for family in REGISTRY.collect()
        if not family.name.startswith(_OWN_PROCESS_PREFIXES)
    }


def families_from(data: Any) -> Families:
    """`samples()` as it arrives in JSON; raises ValueError (or TypeError, KeyError) if it is something else."""
    return {
        str(name): (
            str(kind),
            [(str(n), {str(k): str(v) for k, v in labels.items()}, float(value)) for n, labels, value in rows],
        )
        for name, (kind, rows) in data.items()
    }


class PlatformCounts(Collector):
    """This process's registry plus the latest samples of the platform's other serving processes, summed."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, Families]] = {}
        # The last counts of processes that were replaced, so the sums never go back.
        self._retired: Families = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def update(self, process: str, pid: int, families: Families) -> None:
        """The latest samples of `process` (a name that outlives restarts), now running as `pid`."""
        previous = self._latest.get(process)
        if previous is not None and previous[0] != pid:
            self._retire(previous[1])
        self._latest[process] = (pid, {n: f for n, f in families.items() if not n.startswith(_OWN_PROCESS_PREFIXES)})

    def _retire(self, families: Families) -> None:
        kept = {name: family for name, family in families.items() if family[0] in _MONOTONIC_TYPES}
        self._retired = _summed(self._retired, kept)

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    async def text(self) -> bytes:
        return self.exposition()

    def collect(self) -> Iterable[Metric]:
        others: Families = self._retired
        for _, families in self._latest.values():
            others = _summed(others, families)
        for family in REGISTRY.collect():
            extra = others.pop(family.name, None)
            if extra is not None:
                family.samples = _merged_samples(family.samples, extra[1])
            yield family
        for name, (kind, rows) in others.items():
            # A family this process has not registered (none today: every process runs the same code).
            family = Metric(name, "", "untyped" if kind not in _MONOTONIC_TYPES | {"gauge"} else kind)
            family.samples = [Sample(n, labels, value) for n, labels, value in rows]
            yield family


def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def _summed(first: Families, second: Families) -> Families:
    total: Families = {}
    for families in (first, second):
        for name, (kind, rows) in families.items():
            _, so_far = total.get(name, (kind, []))
            total[name] = (kind, _merged_rows(so_far, rows))
    return total


def _merged_rows(
    first: list[tuple[str, dict[str, str], float]], second: list[tuple[str, dict[str, str], float]]
) -> list[tuple[str, dict[str, str], float]]:
    # In the order first seen, so a histogram's buckets stay together and in order.
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, dict[str, str], float]] = {}
    for name, labels, value in (*first, *second):
        key = _key(name, labels)
        previous = merged.get(key)
        merged[key] = (name, labels, value + (previous[2] if previous is not None else 0.0))
    return list(merged.values())


def _merged_samples(own: list[Sample], extra: list[tuple[str, dict[str, str], float]]) -> list[Sample]:
    rows = _merged_rows([(sample.name, sample.labels, sample.value) for sample in own], extra)
    return [Sample(name, labels, value) for name, labels, value in rows]


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
