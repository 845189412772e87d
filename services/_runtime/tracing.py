"""OpenTelemetry traces, exported over OTLP/HTTP while `DCP_OTLP_ENDPOINT` is set.

One REST call is one trace: the gateway's HTTP server span, a client span per
unary RPC (which carries W3C `traceparent` in the call's metadata), the called
service's server span, and a span per PostgreSQL statement and per S3 call
made on its behalf. Statements and S3 calls are traced only inside a traced
operation, so the import worker's and export runner's polling start no traces
of their own; applying one upload is such an operation.

While tracing is off nothing here costs anything: every hook first reads the
active tracer, which is None, and channels get no client interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.types import Message, Scope

from services._runtime.settings import Settings

# Below the default shutdown grace, so a collector that is down cannot hold a stop up for long.
EXPORT_TIMEOUT_SECONDS = 5.0
# Statements are kept whole up to this; the longest (bulk merges) are cut.
MAX_QUERY_CHARS = 4096
REQUEST_ID_ATTRIBUTE = "dcp.request_id"
# The codes that mean the server failed, rather than the caller asking for something it may not have.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_PROPAGATOR = TraceContextTextMapPropagator()
_PROPAGATED = frozenset(_PROPAGATOR.fields)
_S3_SPAN_KEY = "dcp_span"


@dataclass(frozen=True)
class _Tracing:
    provider: TracerProvider
    tracer: Tracer


_active: _Tracing | None = None


def enabled() -> bool:
    return _active is not None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base address (which may already name it)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


@contextlib.asynccontextmanager
async def traced(settings: Settings, service_name: str) -> AsyncIterator[None]:
    """Traces exported for the life of the block, as `service_name`; nothing without an endpoint.

    Leaving the block exports the spans still queued.
    """
    global _active  # noqa: PLW0603 - one tracer provider per process, owned by its lifecycle
    if settings.otlp_endpoint is None:
        yield
        return
    if _active is not None:
        raise RuntimeError("tracing is already on in this process")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint), timeout=EXPORT_TIMEOUT_SECONDS)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _active = _Tracing(provider, provider.get_tracer("open-dcp"))
    try:
        yield
    finally:
        _active = None
        # Exporting blocks on the network; the loop goes on serving the rest of the stop.
        await asyncio.to_thread(provider.shutdown)


async def flush() -> None:
    """Exports every span ended so far."""
    state = _active
    if state is not None:
        await asyncio.to_thread(state.provider.force_flush)


def current_ids() -> tuple[str, str] | None:
    """The (trace id, span id) in effect, as the hex strings tracing back ends show, if it is exported."""
    if _active is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    # A trace the sampler dropped is nowhere to be found; its ids would mislead.
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def _in_trace() -> bool:
    return trace.get_current_span().get_span_context().is_valid


def _remote_parent(pairs: Iterable[tuple[str, Any]]) -> Context:
    carrier = {key: str(value) for key, value in pairs if key in _PROPAGATED}
    # Without a traceparent the call starts a trace of its own.
    return _PROPAGATOR.extract(carrier, context=Context()) if carrier else Context()


@contextlib.contextmanager
def operation(name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[None]:
    """A trace for work no request started (applying an upload); nothing while tracing is off."""
    state = _active
    if state is None:
        yield
        return
    with state.tracer.start_as_current_span(name, context=Context(), attributes=attributes):
        yield


class HttpServerSpan:
    """A REST request's span; named by its route template once routing has found it."""

    def __init__(self, tracer: Tracer, scope: Scope) -> None:
        headers = ((key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"])
        method = scope["method"]
        self._method = method
        self._span = tracer.start_span(
            method,
            context=_remote_parent(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def response(self, message: Message) -> None:
        for key, value in message.get("headers", ()):
            if key == b"x-request-id":
                self._span.set_attribute(REQUEST_ID_ATTRIBUTE, value.decode("latin-1"))

    def finish(self, route: str | None, status: int) -> None:
        if route is not None:
            self._span.update_name(f"{self._method} {route}")
            self._span.set_attribute("http.route", route)
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()


def http_server_span(scope: Scope) -> HttpServerSpan | None:
    state = _active
    return None if state is None else HttpServerSpan(state.tracer, scope)


class GrpcServerSpan:
    """An RPC's span on the server, a child of the caller's when its metadata carries one."""

    def __init__(self, tracer: Tracer, method: str, metadata: Iterable[tuple[str, Any]], request_id: str) -> None:
        service, _, name = method[1:].partition("/")
        self._span = tracer.start_span(
            method[1:],
            context=_remote_parent(metadata),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                REQUEST_ID_ATTRIBUTE: request_id,
            },
        )

    def attach(self) -> contextvars.Token[Context]:
        """Makes the span current; the token undoes it."""
        return otel_context.attach(trace.set_span_in_context(self._span))

    def finish(self, code: grpc.StatusCode) -> None:
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            self._span.set_status(Status(StatusCode.ERROR, code.name))
        self._span.end()


def grpc_server_span(method: str, metadata: Iterable[tuple[str, Any]], request_id: str) -> GrpcServerSpan | None:
    state = _active
    return None if state is None else GrpcServerSpan(state.tracer, method, metadata, request_id)


def query_span(record: Any, request_id: str) -> None:
    """A finished statement's span, from asyncpg's query log record (`elapsed`, `exception`, ...).

    asyncpg calls its query loggers just after the statement, in a copy of the
    caller's context, so the span's parent is the request's span.
    """
    state = _active
    if state is None or not _in_trace():
        return
    end = time.time_ns()
    query: str = record.query
    words = query.split(None, 1)
    operation_name = words[0].upper() if words else "QUERY"
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "db.operation.name": operation_name,
        "db.query.text": query[:MAX_QUERY_CHARS],
        REQUEST_ID_ATTRIBUTE: request_id,
    }
    database = getattr(record.conn_params, "database", None)
    if database:
        attributes["db.namespace"] = str(database)
    if isinstance(record.conn_addr, tuple):
        attributes["server.address"] = str(record.conn_addr[0])
        attributes["server.port"] = int(record.conn_addr[1])
    span = state.tracer.start_span(
        operation_name, kind=SpanKind.CLIENT, start_time=end - int(record.elapsed * 1e9), attributes=attributes
    )
    error = record.exception
    if error is not None:
        if isinstance(error, asyncpg.PostgresError):
            span.set_attribute("db.response.status_code", str(error.sqlstate))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end)


def instrument_s3(client: Any) -> None:
    """Spans for the S3 calls `client` makes inside a traced operation, through
    aiobotocore's own events (botocore's instrumentation patches the sync client
    only). Registered only while tracing is on."""
    if _active is None:
        return
    events = client.meta.events
    events.register("before-call.s3", _s3_started)
    events.register("after-call.s3", _s3_answered)
    events.register("after-call-error.s3", _s3_failed)


def _s3_started(model: Any, context: dict[str, Any], **_: Any) -> None:
    state = _active
    if state is None or not _in_trace():
        return
    context[_S3_SPAN_KEY] = state.tracer.start_span(
        f"S3.{model.name}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": model.name},
    )


def _s3_answered(http_response: Any, context: dict[str, Any], **_: Any) -> None:
    span: Span | None = context.pop(_S3_SPAN_KEY, None)
    if span is None:
        return
    status = int(http_response.status_code)
    span.set_attribute("http.response.status_code", status)
    # A 404 or a failed precondition is an answer the store's caller expects and handles.
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _s3_failed(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
    span: Span | None = context.pop(_S3_SPAN_KEY, None)
    if span is None:
        return
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
    span.end()


def client_interceptors() -> list[aio.ClientInterceptor]:
    """Interceptors for a new channel: none while tracing is off, as any interceptor slows every call."""
    return [] if _active is None else [cast("aio.ClientInterceptor", _ClientTracing())]


def carried() -> tuple[tuple[str, str], ...]:
    """The current trace context as call metadata, for a call that does not pass through a channel."""
    if _active is None:
        return ()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items())


def _carrying(details: aio.ClientCallDetails) -> aio.ClientCallDetails:
    """The call's details with the current trace context added to its metadata."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return details
    metadata = aio.Metadata(*(details.metadata or ()), *carrier.items())
    return aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready)


# grpc-stubs types a continuation as returning the call; grpc.aio's returns an awaitable of it.
class _ClientTracing(
    aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Carries the trace to the called service; unary calls (nearly all) get a client span."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        state = _active
        if state is None or not _in_trace():
            return await continuation(details, request)
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        service, _, name = method[1:].partition("/")
        span = state.tracer.start_span(
            method[1:],
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                call = await continuation(_carrying(details), request)
            code: grpc.StatusCode = await call.code()
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
            raise
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        return call

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_carrying(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_carrying(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_carrying(details), requests)
