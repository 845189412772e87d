"""The OpenAPI 3.1 document of the REST surface.

It is built from the routes the gateway serves and what each route declares
beside its handler (an `Operation`: summary, query parameters, the request
body's schema from its `BodySpec`, and the schemas of its answers, which sit
next to the serializers that produce them), so it cannot drift from them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.responses import JSONResponse

Schema = dict[str, Any]

_PARAMETER = re.compile(r"{(\w+)(?::\w+)?}")
INT64_MAX = 2**63 - 1


def template(path: str) -> str:
    """A route's path as the document and the metrics name it: `{customer_id}`, not `{customer_id:path}`."""
    return _PARAMETER.sub(r"{\1}", path)


# Schema building blocks


@dataclass(frozen=True)
class Component:
    """A schema with a name under `components/schemas`; wherever it is used the document refers to it."""

    name: str
    schema: Schema


def record(properties: Mapping[str, Any], *, optional: Iterable[str] = (), description: str = "") -> Schema:
    """An object holding exactly these fields, every one always present unless named in `optional`."""
    skipped = set(optional)
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name in properties if name not in skipped],
        "properties": dict(properties),
    }
    if description:
        schema["description"] = description
    return schema


def nullable(schema: Schema) -> Schema:
    """The schema, also admitting null (JSON Schema 2020-12: a type list)."""
    kind = schema.get("type")
    kinds = list(kind) if isinstance(kind, list) else [kind]
    result = {**schema, "type": [*kinds, "null"]}
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


def array(items: Schema | Component, *, description: str = "") -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if description:
        schema["description"] = description
    return schema


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": INT64_MAX}
COUNT: Schema = {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}
TEXT: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "UTC with microseconds, e.g. 2015-08-18T21:38:55.927670Z",
}
DECIMAL_ID: Schema = {
    "type": "string",
    "pattern": "^[1-9][0-9]{0,18}$",
    "description": "An id written as a decimal string, as the v1 profile API does",
}


# What an operation declares


@dataclass(frozen=True)
class Header:
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: the operation that a value of this answer feeds, and how."""

    operation_id: str
    parameters: Mapping[str, str]
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One success answer: its description, body and headers."""

    description: str
    schema: Schema | Component | None = None
    media_type: str = "application/json"
    headers: Mapping[str, Header] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)
    alternatives: Mapping[str, Schema | Component] = field(default_factory=dict)
    """Other media types the same answer may come as (e.g. CSV, when asked for)."""


@dataclass(frozen=True)
class Query:
    name: str
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Body:
    """The request body: a JSON schema (usually a `BodySpec`'s) or raw bytes of another media type."""

    schema: Schema | Component
    media_type: str = "application/json"
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """What the document says of one method of one route."""

    operation_id: str
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    description: str = ""
    body: Body | None = None
    query: tuple[Query, ...] = ()
    errors: frozenset[int] = frozenset()
    """Refusals beyond those every operation of its kind can give (see `_error_statuses`)."""
    authenticated: bool = True
    retry_after_on_429: bool = True
    """False where a 429 may also come from a service's own limit, which names no wait."""


class DocumentedRoute(Route):
    """A route that carries its operations and the schemas of its path parameters."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        operations: Mapping[str, Operation],
        path_parameters: Mapping[str, Schema] | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=list(operations))
        self.operations = dict(operations)
        names = _PARAMETER.findall(path)
        given = path_parameters or {}
        missing = [name for name in names if name not in given]
        if missing:
            raise ValueError(f"{path}: no schema for the path parameters {missing}")
        self.path_parameters = {name: given[name] for name in names}


# Shared parts of the document


ERROR = Component(
    "Error",
    record(
        {
            "status": described(
                {"type": "integer", "minimum": 400, "maximum": 599}, "The HTTP status of this answer, repeated"
            ),
            "code": described(
                {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                "Why, in UPPER_SNAKE_CASE, for programs (e.g. INVALID_FIELD, NOT_FOUND, RATE_LIMITED)",
            ),
            "message": described({"type": "string", "minLength": 1}, "Why, for people"),
            "errors": {
                "type": "array",
                "minItems": 1,
                "description": "Present when particular fields were refused: one entry a field",
                "items": record({"field": TEXT, "message": TEXT}),
            },
        },
        optional=["errors"],
        description="Every refusal and failure of the gateway has this shape.",
    ),
)

REQUEST_ID = Header(
    {"type": "string", "minLength": 1},
    "The request's id, the caller's X-Request-Id when it was safe to pass on; it is in every log line of the request",
    required=True,
)
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": Header({"type": "integer", "minimum": 1}, "Requests the account may make at once"),
    "RateLimit-Remaining": Header({"type": "integer", "minimum": 0}, "Requests left of the account's allowance"),
    "RateLimit-Reset": Header({"type": "integer", "minimum": 0}, "Seconds until the allowance is full again"),
}
RETRY_AFTER = Header({"type": "integer", "minimum": 1}, "Seconds to wait before trying again", required=True)
LINK = Header(
    {"type": "string", "pattern": '^<[^>]+>; rel="next"$'},
    'The next page, when there is one: `</path?per_page=N&page_token=T>; rel="next"`',
)
CSV_ATTACHMENT = Header({"type": "string", "pattern": "^attachment; filename="}, "The file name to save the CSV as")

_ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "The request was refused: a field, a parameter or the path is not valid, or it breaks a rule "
        "(e.g. the object is archived); `errors` names the fields",
    ),
    401: ("Unauthorized", "No usable credentials: send `Token: <classic token>` or `Authorization: Bearer <token>`"),
    403: ("Forbidden", "The credentials do not allow this (a revoked token, or a scope the token lacks)"),
    404: ("NotFound", "No such object in this account (or a path id that cannot name one)"),
    405: ("MethodNotAllowed", "The path exists but not with this method; the Allow header lists those it takes"),
    409: ("Conflict", "The request conflicts with the current state (a name taken, or a concurrent change)"),
    413: ("PayloadTooLarge", "The request body is larger than this gateway accepts"),
    429: ("TooManyRequests", "The account made more requests than its rate limit allows"),
    503: ("Unavailable", "A service behind the gateway is unavailable; retry after the time given"),
}


def _error_response(status: int, *, retry_after: bool = True) -> dict[str, Any]:
    description = _ERROR_RESPONSES[status][1]
    headers: dict[str, Any] = {"X-Request-Id": _header(REQUEST_ID)}
    if status == 405:
        headers = {"Allow": _header(Header(TEXT, "The methods this path takes", required=True))}
    if status in (429, 503):
        headers["Retry-After"] = _header(
            RETRY_AFTER if retry_after else Header(RETRY_AFTER.schema, RETRY_AFTER.description)
        )
    if status != 405:
        headers.update({name: _header(header) for name, header in RATE_LIMIT_HEADERS.items()})
    return {
        "description": description,
        "headers": headers,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": f"#/components/schemas/{ERROR.name}"},
                        {"properties": {"status": {"const": status}}},
                    ]
                }
            }
        },
    }


def _header(header: Header) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": header.description, "schema": header.schema}
    if header.required:
        answer["required"] = True
    return answer


TAGS: tuple[tuple[str, str], ...] = (
    ("Projects", "Projects, which hold audiences and may be linked to a DCP service"),
    ("DCP services", "The account's DCP service: its S3 credentials and its guards"),
    ("Tables", "Tables (dcp_datasources) of a DCP service, each keyed by a customer id"),
    ("Attributes", "A table's attributes: the typed values a profile may hold"),
    ("Uploads", "Bulk CSV upload: upload URLs, upload history, a file's errors, the template, checking a file"),
    ("Profiles", "Customer profiles: one table's values for one customer, and a visitor's consolidated view"),
    ("Aliases", "Which customer of each table an Optimizely visitor is"),
    ("Audiences", "Audiences: conditions over profile values, their members and their evaluation"),
    ("Exports", "Files of a table's profiles or an audience's members, written to S3"),
    ("Account", "The caller's own account"),
    ("About", "Health, readiness, and where the console, these docs and this document are"),
)


def _error_statuses(method: str, operation: Operation, path_parameters: Mapping[str, Schema]) -> list[int]:
    """What an authenticated operation can be refused with.

    Every one may be refused for its credentials (401, 403), its account's
    rate (429) or a service that cannot be reached (503); an id in the path
    may name nothing (404); a path parameter, a query parameter or a body may
    be invalid (400); a body may be too large (413); a change may conflict (409).
    """
    statuses = {401, 403, 429, 503, *operation.errors}
    if path_parameters:
        statuses |= {400, 404}
    if operation.body is not None:
        statuses |= {400, 413}
    if operation.query:
        statuses.add(400)
    if method in ("POST", "PUT", "DELETE"):
        statuses.add(409)
    return sorted(statuses)


class _Builder:
    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}
        self.schema(ERROR)

    def schema(self, value: Any) -> Any:
        """A schema with every `Component` in it replaced by a reference, and registered."""
        if isinstance(value, Component):
            known = self.components.get(value.name)
            if known is None:
                self.components[value.name] = {}  # a placeholder, so that a cycle ends
                self.components[value.name] = self.schema(value.schema)
            return {"$ref": f"#/components/schemas/{value.name}"}
        if isinstance(value, dict):
            return {key: self.schema(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.schema(item) for item in value]
        return value

    def reply(self, reply: Reply, operation: Operation) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": reply.description}
        headers = {name: _header(header) for name, header in reply.headers.items()}
        if operation.authenticated:
            headers["X-Request-Id"] = _header(REQUEST_ID)
            headers.update({name: _header(header) for name, header in RATE_LIMIT_HEADERS.items()})
        if headers:
            answer["headers"] = headers
        if reply.schema is not None:
            answer["content"] = {reply.media_type: {"schema": self.schema(reply.schema)}}
            for media_type, schema in reply.alternatives.items():
                answer["content"][media_type] = {"schema": self.schema(schema)}
        if reply.links:
            answer["links"] = {
                name: {
                    "operationId": link.operation_id,
                    "parameters": dict(link.parameters),
                    **({"description": link.description} if link.description else {}),
                }
                for name, link in reply.links.items()
            }
        return answer

    def operation(self, method: str, operation: Operation, path_parameters: Mapping[str, Schema]) -> dict[str, Any]:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": schema} for name, schema in path_parameters.items()
        ]
        for query in operation.query:
            parameters.append(
                {
                    "name": query.name,
                    "in": "query",
                    "required": query.required,
                    "description": query.description,
                    "schema": query.schema,
                }
            )
        document: dict[str, Any] = {
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "tags": [operation.tag],
        }
        if operation.description:
            document["description"] = operation.description
        if parameters:
            document["parameters"] = parameters
        if operation.body is not None:
            body: dict[str, Any] = {
                "required": operation.body.required,
                "content": {operation.body.media_type: {"schema": self.schema(operation.body.schema)}},
            }
            if operation.body.description:
                body["description"] = operation.body.description
            document["requestBody"] = body
        responses: dict[str, Any] = {
            str(status): self.reply(reply, operation) for status, reply in sorted(operation.replies.items())
        }
        if operation.authenticated:
            for status in _error_statuses(method, operation, path_parameters):
                if status == 429 and not operation.retry_after_on_429:
                    responses["429"] = _error_response(429, retry_after=False)
                else:
                    responses[str(status)] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
            document["security"] = [{"token": []}, {"bearer": []}]
        else:
            document["security"] = []
        document["responses"] = responses
        return document


def document(routes: Sequence[BaseRoute], *, version: str) -> dict[str, Any]:
    """The document of every documented route, in the order the routes are declared."""
    builder = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, DocumentedRoute):
            continue
        item = paths.setdefault(template(route.path), {})
        for method, operation in route.operations.items():
            item[method.lower()] = builder.operation(method, operation, route.path_parameters)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Open DCP REST API",
            "version": version,
            "summary": "The v1 config and profile APIs of Open DCP, with their extensions",
            "description": (
                "Every request but those tagged About needs credentials: a classic token in the `Token` "
                "header, or a bearer token in `Authorization`. Ids are integers in the config API and decimal "
                "strings in the profile API. Errors have one shape, `Error`. Every answer of an authenticated "
                "request carries `X-Request-Id`, and the `RateLimit-*` headers when the gateway limits rates."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name, "description": description} for name, description in TAGS],
        "paths": paths,
        "components": {
            "schemas": builder.components,
            "responses": {name: _error_response(status) for status, (name, _) in _ERROR_RESPONSES.items()},
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Token",
                    "description": "A classic token, as `dcp tokens create` prints it",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A classic token or an OAuth access token",
                },
            },
        },
    }


def endpoint(routes: Sequence[BaseRoute], *, version: str) -> DocumentedRoute:
    """GET /openapi.json, served without credentials."""
    body = document(
        [*routes, DocumentedRoute("/openapi.json", _unused, operations={"GET": OPENAPI_OPERATION})], version=version
    )

    async def serve(request: Request) -> Response:
        return JSONResponse(body, headers={"Cache-Control": "no-cache"})

    return DocumentedRoute("/openapi.json", serve, operations={"GET": OPENAPI_OPERATION})


async def _unused(request: Request) -> Response:
    raise AssertionError("only described, never served")


OPENAPI_OPERATION = Operation(
    "getOpenApiDocument",
    "This document",
    "About",
    {200: Reply("The OpenAPI 3.1 document of this gateway", {"type": "object", "required": ["openapi", "paths"]})},
    authenticated=False,
)
