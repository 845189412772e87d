"""Serves the web console's files under /console/, what the console must know of this
deployment that the v1 API does not say (where the S3 store is), and the API reference
page at /docs, which renders /openapi.json."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from console import STATIC_DIR
from gateway.openapi import DocumentedRoute, Operation, Reply
from gateway.responses import JSONResponse

# The reference page ships beside the console, and is not part of it (nor of its script budget).
DOCS_DIR = STATIC_DIR.parent / "apidocs"

# The console talks to this origin's API and PUTs files to the S3 store, which may live
# elsewhere: scripts, styles and images only from here, requests wherever the store is.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class ConsoleStore:
    """How an S3 client reaches the upload bucket, as shown on the Data Upload screen."""

    endpoint_url: str | None
    bucket: str
    region: str


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load(directory: Path) -> dict[str, _File]:
    # The console is small (its budget is 200 KB of JavaScript): read once, served from memory.
    files: dict[str, _File] = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
            media_type += "; charset=utf-8"
        files[path.relative_to(directory).as_posix()] = _File(
            body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        )
    return files


def _answer(file: _File, request: Request) -> Response:
    # Revalidated on every load, so a new release is picked up at once; unchanged files cost a 304.
    headers = {"ETag": file.etag, "Cache-Control": "no-cache", **_SECURITY_HEADERS}
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


DOCS = Operation(
    "getApiReference",
    "The API reference: this document, rendered for people",
    "About",
    {200: Reply("The page", {"type": "string"}, media_type="text/html")},
    authenticated=False,
)


def _not_found(what: str) -> Response:
    return JSONResponse({"status": 404, "code": "ROUTE_NOT_FOUND", "message": f"no such {what}"}, status_code=404)


def routes(store: ConsoleStore, directory: Path = STATIC_DIR, docs_directory: Path = DOCS_DIR) -> list[Route]:
    files = _load(directory)
    index = files["index.html"]
    docs = _load(docs_directory)
    config = {"s3": {"endpoint_url": store.endpoint_url, "bucket": store.bucket, "region": store.region}}

    async def root(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=302)

    async def reference(request: Request) -> Response:
        return _answer(docs["index.html"], request)

    async def reference_file(request: Request) -> Response:
        file = docs.get(request.path_params["path"])
        return _not_found("docs file") if file is None else _answer(file, request)

    async def page(request: Request) -> Response:
        return _answer(index, request)

    async def static(request: Request) -> Response:
        file = files.get(request.path_params["path"])
        return _not_found("console file") if file is None else _answer(file, request)

    async def settings(request: Request) -> Response:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    return [
        Route("/console", root, methods=["GET"]),
        Route("/console/", page, methods=["GET"]),
        Route("/console/config.json", settings, methods=["GET"]),
        Route("/console/static/{path:path}", static, methods=["GET"]),
        DocumentedRoute("/docs", reference, operations={"GET": DOCS}),
        Route("/docs/static/{path:path}", reference_file, methods=["GET"]),
    ]
