"""The OpenAPI document of the v1 surface, derived from the routes the gateway serves, so it cannot drift from them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.config_api import TEXT_ID_PARAMETERS
from services.profiles.profiles import MAX_CUSTOMER_ID_LENGTH

_PARAMETER = re.compile(r"{(\w+)(?::\w+)?}")
_ERROR = {
    "type": "object",
    "required": ["status", "code", "message"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _parameter(name: str) -> dict[str, Any]:
    if name in TEXT_ID_PARAMETERS:
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOMER_ID_LENGTH}
    else:
        schema = {"type": "integer", "format": "int64", "minimum": 1}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Paths, methods and path parameters of every authenticated v1 route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith(("/experiment/", "/api/")):
            continue
        path = _PARAMETER.sub(r"{\1}", route.path)
        parameters = [_parameter(name) for name in _PARAMETER.findall(route.path)]
        operations: dict[str, Any] = {}
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation: dict[str, Any] = {
                "parameters": parameters,
                "security": [{"token": []}, {"bearer": []}],
                "responses": {
                    "default": {
                        "description": "An error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                },
            }
            if method in ("POST", "PUT"):
                operation["requestBody"] = {
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            operations[method.lower()] = operation
        paths[path] = operations
    return {
        "openapi": "3.1.0",
        "info": {"title": "Open DCP v1 REST API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def endpoint(routes: Sequence[BaseRoute]) -> Route:
    """GET /openapi.json, served without credentials."""
    body = document(routes)

    async def serve(request: Request) -> Response:
        return JSONResponse(body)

    return Route("/openapi.json", serve, methods=["GET"])
