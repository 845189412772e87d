"""The embedded S3 server's process: moto's S3, behind signature and prefix checks.

`dcp up` starts it (see `embedded_s3.EmbeddedS3`) and speaks to it over its
standard input and output, one JSON object a line: first the configuration,
then the keys to grant and revoke. The end of standard input (the parent
stopped, or was killed) ends the process.

Each request must be signed (SigV4) with a known key. The platform's key may
do everything; a DCP service's key may do what `keys.prefix_policy` gives it
on AWS: write, read and list under `dcp/{service id}/`, and read
`exports/{service id}/`. Browsers' CORS preflights, which carry no
credentials, are the one thing answered unsigned.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from services._runtime.sigv4 import Request, SignatureError, query_names, verify

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Small bodies stay in memory; larger ones go to a file of their own under the data dir.
MEMORY_BODY_BYTES = 64 * 1024
# Request bodies are read (and hashed) before moto sees them; beyond this they wait on disk.
SPOOL_REQUEST_BYTES = 16 * 1024 * 1024
_READ_BYTES = 1024 * 1024
# Query parameters that name no operation of their own.
_NEUTRAL = frozenset({"x-id"})
_LISTING = frozenset(
    {"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after", "fetch-owner",
     "encoding-type", "marker"}
)  # fmt: skip
_READING = frozenset(
    {"response-content-type", "response-content-disposition", "response-content-language", "response-expires",
     "response-cache-control", "response-content-encoding", "partNumber"}
)  # fmt: skip


# CORS, so that the console's page can upload through a presigned URL. Any origin
# may ask, as every request but a preflight still needs its signature; browsers
# download (GET), upload (PUT) and look (HEAD).
CORS_METHODS = ("GET", "PUT", "HEAD")
CORS_MAX_AGE_SECONDS = 3600
# A browser lets a page read only the response headers named here; an uploader checks the ETag.
CORS_EXPOSED_HEADERS = "ETag"


@dataclass(frozen=True)
class Grant:
    """A DCP service's key pair."""

    service_id: int
    access_key: str
    secret_key: str


class Keys:
    """Who may sign: the platform, and each DCP service granted so far."""

    def __init__(self, platform_key: str, platform_secret: str) -> None:
        self._platform_key = platform_key
        self._secrets = {platform_key: platform_secret}
        self._services: dict[str, int] = {}
        self._lock = threading.Lock()

    def grant(self, grants: Iterable[Grant]) -> None:
        with self._lock:
            for grant in grants:
                if grant.access_key == self._platform_key:
                    raise ValueError("a DCP service cannot have the platform's key")
                self._secrets[grant.access_key] = grant.secret_key
                self._services[grant.access_key] = grant.service_id

    def revoke(self, access_key: str) -> None:
        with self._lock:
            if access_key in self._services:
                del self._services[access_key]
                del self._secrets[access_key]

    def secret_of(self, access_key: str) -> str | None:
        return self._secrets.get(access_key)

    def service_of(self, access_key: str) -> int | None:
        """The DCP service a key belongs to; None for the platform's key."""
        return self._services.get(access_key)


def service_may(
    service_id: int, bucket: str, *, method: str, path: str, params: dict[str, str], headers: dict[str, str]
) -> bool:
    """Whether a DCP service's key may make this (path-style) request; mirrors `keys.prefix_policy`."""
    asked_bucket, _, key = path.lstrip("/").partition("/")
    if asked_bucket != bucket:
        return False
    names = {name for name in params if not name.startswith("X-Amz-")} - _NEUTRAL
    own = f"dcp/{service_id}/"
    if not key:
        # ListBucket, only with the service's own prefix, as the policy's s3:prefix condition says.
        return method == "GET" and names <= _LISTING and params.get("prefix", "").startswith(own)
    if key.startswith(own):
        if method in ("GET", "HEAD"):
            return names <= _READING or names == {"uploadId"}  # GetObject, ListParts
        if method == "PUT":
            copied = headers.get("x-amz-copy-source")
            if copied is not None and not _readable(service_id, bucket, unquote(copied.split("?")[0])):
                return False
            return not names or names == {"partNumber", "uploadId"}  # PutObject, UploadPart
        if method == "POST":
            return names in ({"uploads"}, {"uploadId"})  # CreateMultipartUpload, CompleteMultipartUpload
        if method == "DELETE":
            return names == {"uploadId"}  # AbortMultipartUpload; objects are not theirs to delete
        return False
    if key.startswith(f"exports/{service_id}/"):
        return method in ("GET", "HEAD") and names <= _READING
    return False


def _readable(service_id: int, bucket: str, source: str) -> bool:
    asked_bucket, _, key = source.lstrip("/").partition("/")
    return asked_bucket == bucket and (key.startswith((f"dcp/{service_id}/", f"exports/{service_id}/")))


def error_response(
    start_response: Callable[..., Any], method: str, code: str, message: str, status: int
) -> list[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()
    reason = {400: "Bad Request", 403: "Forbidden"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [] if method == "HEAD" else [body]


class Guard:
    """WSGI middleware: a request reaches moto only signed by a known key, and within that key's rights."""

    def __init__(self, app: WsgiApp, keys: Keys, bucket: str, spool_dir: Path) -> None:
        self._app = app
        self._keys = keys
        self._bucket = bucket
        self._spool_dir = spool_dir

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        raw_path, _, raw_query = raw_uri.partition("?")
        headers = _headers(environ)
        if "origin" in headers:
            if method == "OPTIONS" and "access-control-request-method" in headers:
                # A browser's preflight carries no credentials, so it is answered without any.
                return preflight_response(start_response, headers)
            start_response = _with_cors(start_response)
        try:
            verified = verify(Request(method, raw_path, raw_query, headers), self._keys.secret_of)
            service_id = self._keys.service_of(verified.access_key)
            path = environ.get("PATH_INFO", "/")
            if path.startswith("/moto-api"):
                raise SignatureError("AccessDenied", "Access Denied")
            if service_id is not None and not service_may(
                service_id, self._bucket, method=method, path=path, params=query_names(raw_query), headers=headers
            ):
                raise SignatureError("AccessDenied", "Access Denied")
            if verified.payload_sha256 is not None:
                body = self._checked_body(environ, verified.payload_sha256)
                environ["wsgi.input"] = body
                environ["CONTENT_LENGTH"] = str(_size(body))
        except SignatureError as refused:
            return error_response(start_response, method, refused.code, refused.message, refused.status)
        return self._app(environ, start_response)

    def _checked_body(self, environ: dict[str, Any], expected: str) -> IO[bytes]:
        """The body, read whole and hashed, so moto never stores bytes the signature does not vouch for."""
        source = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        # Without a length the body runs to its end only when chunked; otherwise there is none.
        remaining = int(length) if length else (None if environ.get("wsgi.input_terminated") else 0)
        # Closed by the WSGI server with the request, or below when the bytes are wrong.
        spooled: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_REQUEST_BYTES, dir=str(self._spool_dir))  # noqa: SIM115
        digest = hashlib.sha256()
        while remaining is None or remaining > 0:
            piece = source.read(_READ_BYTES if remaining is None else min(_READ_BYTES, remaining))
            if not piece:
                break
            digest.update(piece)
            spooled.write(piece)
            if remaining is not None:
                remaining -= len(piece)
        if digest.hexdigest() != expected:
            spooled.close()
            raise SignatureError(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        spooled.seek(0)
        return spooled


def preflight_response(start_response: Callable[..., Any], headers: dict[str, str]) -> list[bytes]:
    """The answer to a browser's CORS preflight: what a cross-origin request may be, or 403 as S3 says it."""
    asked = headers["access-control-request-method"].strip()
    if asked not in CORS_METHODS:
        allowed = ", ".join(CORS_METHODS)
        return error_response(
            start_response, "OPTIONS", "AccessForbidden", f"CORSResponse: {asked!r} is not one of {allowed}", 403
        )
    answer = [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", ", ".join(CORS_METHODS)),
        ("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS)),
        ("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS),
        ("Vary", "Access-Control-Request-Headers"),
        ("Content-Length", "0"),
    ]
    requested = headers.get("access-control-request-headers", "").strip()
    if requested:
        answer.append(("Access-Control-Allow-Headers", requested))
    start_response("200 OK", answer)
    return []


def _with_cors(start_response: Callable[..., Any]) -> Callable[..., Any]:
    """`start_response` that lets a browser page of any origin read the answer; moto's own CORS headers make way."""

    def start(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        kept = [(name, value) for name, value in response_headers if not name.lower().startswith("access-control-")]
        kept += [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS)]
        return start_response(status, kept, exc_info) if exc_info is not None else start_response(status, kept)

    return start


def _size(body: IO[bytes]) -> int:
    body.seek(0, io.SEEK_END)
    size = body.tell()
    body.seek(0)
    return size


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {
        name[5:].replace("_", "-").lower(): str(value) for name, value in environ.items() if name.startswith("HTTP_")
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            headers[name.replace("_", "-").lower()] = str(environ[name])
    return headers


class FileBody:
    """An object's bytes: in memory while small, else in a file of their own.

    It stands in for the SpooledTemporaryFile moto keeps per object, with
    two differences that matter for a long-running store: the file lives in
    the data dir rather than /tmp, and no descriptor stays open between
    calls, so thousands of archived files cost neither memory nor descriptors.
    """

    def __init__(self, directory: Path, max_size: int = 0) -> None:
        del max_size  # moto's in-memory limit; this store has its own
        self._directory = directory
        self._memory: bytearray | None = bytearray()
        self._path: Path | None = None
        self._position = 0
        self.closed = False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        else:
            self._position = self._size() + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        if self._memory is not None:
            end = len(self._memory) if size is None or size < 0 else self._position + size
            data = bytes(self._memory[self._position : end])
        else:
            assert self._path is not None
            with self._path.open("rb") as file:
                file.seek(self._position)
                data = file.read(size)
        self._position += len(data)
        return data

    def write(self, data: bytes) -> int:
        if self._memory is not None and self._position + len(data) > MEMORY_BODY_BYTES:
            self._path = self._directory / uuid.uuid4().hex
            self._path.write_bytes(self._memory)
            self._memory = None
        if self._memory is not None:
            self._memory[self._position : self._position + len(data)] = data
        else:
            assert self._path is not None
            with self._path.open("r+b") as file:
                file.seek(self._position)
                file.write(data)
        self._position += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self._memory is not None:
            del self._memory[size:]
        else:
            assert self._path is not None
            os.truncate(self._path, size)
        return size

    def close(self) -> None:
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._memory = None
        self._path = None
        self.closed = True

    def _size(self) -> int:
        if self._memory is not None:
            return len(self._memory)
        return self._path.stat().st_size if self._path is not None else 0


class _Untracked(list[Any]):
    """moto's register of every model ever made, which here registers nothing."""

    def append(self, item: Any) -> None:
        return None


def keep_moto_lean(bodies: Path) -> None:
    """Changes to moto that keep a long-running S3 server's memory flat.

    - moto remembers every model instance it ever made (for its dashboard);
      that list alone keeps every object ever uploaded, copied, deleted or
      listed alive.
    - ListObjectVersions deep-copies every version of every key in the bucket,
      bodies included, on each call, only to mark the latest ones; with the
      list above, each poll of the bucket leaked a copy of all of it.
    - Bodies live in `bodies` through `FileBody`, not in memory or /tmp.
    """
    from moto.core import base_backend  # noqa: PLC0415 - moto loads only in this process
    from moto.s3 import models  # noqa: PLC0415

    classes: dict[str, dict[str, Any]] = base_backend.model_data  # type: ignore[attr-defined]
    for by_name in classes.values():
        for cls in by_name.values():
            cls.instances_tracked = _Untracked()

    def listing_copy(key: Any, memo: dict[int, Any]) -> Any:
        key.etag  # noqa: B018 - computed once on the original, so the copy needs no body
        twin = object.__new__(type(key))
        twin.__dict__.update(key.__dict__)
        twin.__dict__.update(_value_buffer=io.BytesIO(), multipart=None, lock=threading.Lock(), disposed=True)
        return twin

    models.FakeKey.__deepcopy__ = listing_copy  # type: ignore[attr-defined]

    class _BodyFiles:
        @staticmethod
        def SpooledTemporaryFile(max_size: int = 0, *args: Any, **kwargs: Any) -> FileBody:
            return FileBody(bodies, max_size)

    models.tempfile = _BodyFiles  # type: ignore[attr-defined,assignment]


def lock_etags() -> None:
    """An object's ETag is computed under the lock every other read of its body takes.

    moto computes it on first use by reading the body from the start, without that lock.
    A bucket listing and the PUT's own answer asking at once interleave their reads of the
    one body position: both get a hash of part of the file, so one version of an object is
    listed with two ETags, and the importer, which tells objects apart by version and ETag,
    takes the second for a new upload of the same file.
    """
    from moto.s3 import models  # noqa: PLC0415 - moto loads only in this process

    unlocked = vars(models.FakeKey)["etag"].fget

    def etag(key: Any) -> str:
        with key.lock:
            value: str = unlocked(key)
            return value

    models.FakeKey.etag = property(etag)  # type: ignore[assignment,method-assign]


def serve(config: dict[str, Any], replies: IO[str]) -> None:
    """Serves until standard input ends; `replies` carries the answers to the parent."""
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    data = Path(config["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    # Held for the life of the process (the kernel drops it with the process).
    lock = (data / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _reply(replies, {"error": f"another embedded S3 server is using {data}"})
        return
    bodies = data / "bodies"
    spool = data / "requests"
    # The objects of an earlier run are gone with its process; so are their bodies.
    for directory in (bodies, spool):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
    lock_etags()
    if config.get("lean", True):
        keep_moto_lean(bodies)
    keys = Keys(*config["platform_key"])
    app = Guard(DomainDispatcherApplication(create_backend_app), keys, config["bucket"], spool)
    try:
        # Bound here, as werkzeug would end the process on a taken port rather than raise.
        listener = socket.create_server((config["host"], config["port"]))
    except OSError as error:
        _reply(
            replies,
            {
                "error": f"cannot listen on {config['host']}:{config['port']}: {error.strerror or error}",
                "listen_errno": error.errno or 0,
                "listen_reason": error.strerror or str(error),
            },
        )
        return
    server = make_server(
        config["host"], config["port"], app, threaded=True, request_handler=MotoRequestHandler, fd=listener.fileno()
    )
    listener.close()  # the server holds its own duplicate
    threading.Thread(target=server.serve_forever, name="s3-server", daemon=True).start()
    _reply(replies, {"ready": server.server_address[1]})
    for line in sys.stdin:
        _reply(replies, _command(keys, json.loads(line)))
    server.shutdown()


def _command(keys: Keys, command: dict[str, Any]) -> dict[str, Any]:
    try:
        if command["op"] == "grant":
            keys.grant(Grant(int(g[0]), str(g[1]), str(g[2])) for g in command["grants"])
        elif command["op"] == "revoke":
            keys.revoke(str(command["access_key"]))
        else:
            return {"error": f"unknown op {command['op']!r}"}
    except (KeyError, ValueError, TypeError, IndexError) as error:
        return {"error": f"bad command: {error}"}
    return {"ok": True}


def _reply(replies: IO[str], answer: dict[str, Any]) -> None:
    replies.write(json.dumps(answer) + "\n")
    replies.flush()


def main() -> None:
    # Standard output carries replies only; anything else printed goes to standard error.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    first = sys.stdin.readline()
    if not first:
        return
    serve(json.loads(first), replies)


if __name__ == "__main__":
    main()
