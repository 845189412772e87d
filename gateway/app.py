"""The REST gateway: authenticates, translates v1 REST to RPCs and back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dcp.aliases.v1 import aliases_service_pb2_grpc
from dcp.imports.v1 import imports_service_pb2_grpc
from dcp.profiles.v1 import profiles_service_pb2_grpc
from dcp.schema.v1 import schema_service_pb2_grpc
from gateway import openapi
from gateway.audiences_api import AudiencesApi
from gateway.auth import Authenticator, Metadata, request_id_of
from gateway.bodies import read_json, truncated
from gateway.config_api import ConfigApi, Endpoint, check_path
from gateway.console_files import ConsoleStore
from gateway.console_files import routes as console_routes
from gateway.errors import RETRY_AFTER_SECONDS, ApiError, from_rpc_error
from gateway.imports_api import ImportsApi
from gateway.openapi import TEXT, DocumentedRoute, Header, Operation, Reply, record
from gateway.profile_api import ProfileApi
from gateway.ratelimit import Allowance, RateLimiter
from gateway.responses import JSONResponse
from gateway.routing import IndexedRouter
from services._runtime import metrics
from services._runtime.interceptors import request_id

logger = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499
"""What the access log and metrics count for a caller that left mid-request (as nginx names it)."""


@dataclass(frozen=True)
class GatewayClients:
    """The gateway's stubs; their channels are owned by whoever made them."""

    auth: schema_service_pb2_grpc.AuthServiceAsyncStub
    schema: schema_service_pb2_grpc.SchemaServiceAsyncStub
    profiles: profiles_service_pb2_grpc.ProfilesServiceAsyncStub
    aliases: aliases_service_pb2_grpc.AliasesServiceAsyncStub
    imports: imports_service_pb2_grpc.ImportsServiceAsyncStub
    health: tuple[tuple[str, Any], ...] = ()
    """Each service's grpc.health.v1 stub (HealthStub), by service name, for `/readyz`."""

    @classmethod
    def over(
        cls,
        schema_channel: grpc.aio.Channel,
        profiles_channel: grpc.aio.Channel | None = None,
        aliases_channel: grpc.aio.Channel | None = None,
        imports_channel: grpc.aio.Channel | None = None,
    ) -> GatewayClients:
        """Stubs over the services' channels; one channel serves all when they share a process."""
        return cls(
            auth=schema_service_pb2_grpc.AuthServiceStub(schema_channel),
            schema=schema_service_pb2_grpc.SchemaServiceStub(schema_channel),
            profiles=profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel or schema_channel),
            aliases=aliases_service_pb2_grpc.AliasesServiceStub(aliases_channel or schema_channel),
            imports=imports_service_pb2_grpc.ImportsServiceStub(imports_channel or schema_channel),
            health=tuple(
                (name, health_pb2_grpc.HealthStub(channel or schema_channel))
                for name, channel in (
                    ("schema", schema_channel),
                    ("profiles", profiles_channel),
                    ("aliases", aliases_channel),
                    ("imports", imports_channel),
                )
            ),
        )


@dataclass
class _Call:
    request: Request
    metadata: Metadata
    max_body_bytes: int

    async def json(self) -> Any:
        return await read_json(self.request, max_bytes=self.max_body_bytes)


# A readiness probe must answer within its own timeout (3 s in deploy/).
READINESS_TIMEOUT_SECONDS = 2.0


async def _readiness(stub: Any) -> str:
    """A service's state as its gRPC health says: `serving`, `not serving` (its database
    cannot be reached, or it is stopping), or why it could not be asked."""
    try:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=READINESS_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"unreachable: no answer within {READINESS_TIMEOUT_SECONDS:.0f} s"
        return f"unreachable: {error.code().name}"
    if answer.status == health_pb2.HealthCheckResponse.SERVING:
        return "serving"
    return "not serving (its database cannot be reached, or it is stopping)"


def _version() -> str:
    try:
        return metadata.version("open-dcp")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()

_SERVICE_STATES = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "Each service's state: serving, not serving, or why it could not be asked",
}
HEALTH = Operation(
    "getLiveness",
    "Liveness: this process serves HTTP",
    "About",
    {200: Reply("Alive", record({"status": {"const": "ok"}}))},
    description="It asks nothing of the services, so an outage behind the gateway never gets it restarted.",
    authenticated=False,
)
READY = Operation(
    "getReadiness",
    "Readiness: every service behind the gateway serves",
    "About",
    {
        200: Reply("Ready", record({"status": {"const": "ready"}, "services": _SERVICE_STATES})),
        503: Reply(
            "Not ready; the message names the services that are not serving",
            record({"status": {"const": "not ready"}, "message": TEXT, "services": _SERVICE_STATES}),
            headers={"Retry-After": Header({"type": "integer", "minimum": 1}, "Seconds to wait", required=True)},
        ),
    },
    authenticated=False,
)
_INDEX = record(
    {
        "name": {"const": "Open DCP"},
        "version": TEXT,
        "links": record(
            {
                "console": {"const": "/console/"},
                "docs": {"const": "/docs"},
                "openapi": {"const": "/openapi.json"},
                "health": {"const": "/healthz"},
                "ready": {"const": "/readyz"},
            },
            # A gateway started without the console serves neither it nor the docs.
            optional=["console", "docs"],
        ),
    }
)
ROOT = Operation(
    "getRoot",
    "Where things are: the console, the API docs, this document",
    "About",
    {
        200: Reply("Links to the console, the docs, the OpenAPI document and the health checks", _INDEX),
        302: Reply(
            "A browser (one that prefers text/html) is sent to the console",
            headers={"Location": Header({"const": "/console/"}, "The console", required=True)},
        ),
    },
    authenticated=False,
)
V1_INDEX = Operation(
    "getConfigApiIndex",
    "The config API's root: links to the console, the docs and this document",
    "About",
    {200: Reply("Links", _INDEX)},
    authenticated=False,
)
API_INDEX = Operation(
    "getProfileApiIndex",
    "The profile API's root: links to the console, the docs and this document",
    "About",
    {200: Reply("Links", _INDEX)},
    authenticated=False,
)


def _quality(accept: str, media_type: str) -> float:
    """How much an Accept header wants `media_type`: the q of its most specific matching range."""
    kind = media_type.split("/", maxsplit=1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for part in accept.split(","):
        pieces = [piece.strip() for piece in part.split(";")]
        media_range = pieces[0].lower()
        q = 1.0
        for parameter in pieces[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(media_range, -1)
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def _index_routes(*, with_console: bool) -> list[BaseRoute]:
    links = {"openapi": "/openapi.json", "health": "/healthz", "ready": "/readyz"}
    if with_console:
        links = {"console": "/console/", "docs": "/docs", **links}
    body = {"name": "Open DCP", "version": VERSION, "links": links}

    async def index(request: Request) -> Response:
        return JSONResponse(body)

    async def root(request: Request) -> Response:
        accept = request.headers.get("accept", "*/*")
        # A browser asks for HTML first; it goes to the console. Only a client that prefers JSON gets the index.
        if with_console and _quality(accept, "application/json") <= _quality(accept, "text/html"):
            return RedirectResponse("/console/", status_code=302, headers={"Vary": "Accept"})
        return JSONResponse(body, headers={"Vary": "Accept"})

    return [
        DocumentedRoute("/", root, operations={"GET": ROOT}),
        DocumentedRoute("/experiment/v1/", index, operations={"GET": V1_INDEX}),
        DocumentedRoute("/api/", index, operations={"GET": API_INDEX}),
    ]


def create_app(
    clients: GatewayClients,
    *,
    max_body_bytes: int = 1024 * 1024,
    limiter: RateLimiter | None = None,
    serve_metrics: bool = True,
    metrics_endpoint: Callable[[Request], Awaitable[Response]] | None = None,
    console: ConsoleStore | None = None,
) -> Starlette:
    authenticator = Authenticator(clients.auth)

    def wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            rid = request_id_of(request)
            token = request_id.set(rid)
            allowance: Allowance | None = None
            try:
                caller = await authenticator.caller(request, rid)
                if limiter is not None:
                    allowance = await limiter.take(caller.account_id)
                    if allowance is not None and not allowance.allowed:
                        raise allowance.refusal()
                check_path(request)
                response = await endpoint(request, _Call(request, caller.metadata, max_body_bytes))
            except ApiError as error:
                response = error.response()
            except ClientDisconnect:
                # The caller went away before its body arrived: nobody reads an answer, and nothing here failed.
                response = Response(status_code=CLIENT_CLOSED_REQUEST)
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    logger.error("%s %s failed: %s", request.method, request.url.path, error.details())
                response = from_rpc_error(error).response()
            finally:
                request_id.reset(token)
            response.headers["x-request-id"] = rid
            if allowance is not None:
                response.headers.update(allowance.headers())
            return response

        return handle

    async def healthz(request: Request) -> Response:
        # Liveness: this process serves HTTP. It asks nothing of the services,
        # so an outage behind the gateway never gets it restarted.
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        states = await asyncio.gather(*(_readiness(stub) for _, stub in clients.health))
        services = {name: state for (name, _), state in zip(clients.health, states, strict=True)}
        if all(state == "serving" for state in services.values()):
            return JSONResponse({"status": "ready", "services": services})
        return JSONResponse(
            {
                "status": "not ready",
                "message": "not ready: "
                + "; ".join(f"{name} {state}" for name, state in services.items() if state != "serving"),
                "services": services,
            },
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return ApiError(
                405,
                f"{request.method} is not allowed on {truncated(request.url.path)}",
                code="METHOD_NOT_ALLOWED",
                headers=dict(exc.headers or {}),
            ).response()
        if exc.status_code == 404:
            return ApiError(404, f"no such endpoint: {truncated(request.url.path)}", code="ROUTE_NOT_FOUND").response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    routes: list[BaseRoute] = [
        *_index_routes(with_console=console is not None),
        DocumentedRoute("/healthz", healthz, operations={"GET": HEALTH}),
        DocumentedRoute("/readyz", readyz, operations={"GET": READY}),
        *ConfigApi(clients.schema).routes(wrap),
        *ProfileApi(clients.schema, clients.profiles, clients.aliases).routes(wrap),
        *ImportsApi(clients.imports).routes(wrap),
        *AudiencesApi(clients.schema, clients.profiles).routes(wrap),
    ]
    if console is not None:
        routes.extend(console_routes(console))
    routes.append(openapi.endpoint(routes, version=VERSION))
    if serve_metrics:
        # Prometheus scrapes without credentials; in `dcp up` this covers every service.
        # With a metrics port of its own, the public port does not show them.
        # `metrics_endpoint`, when given, shows the counts of every serving process of the platform.
        routes.append(Route("/metrics", metrics_endpoint or metrics.endpoint))
    app = Starlette(exception_handlers={HTTPException: http_error}, middleware=[Middleware(metrics.ObservedHttp)])
    app.router = IndexedRouter(routes)
    return app
