"""The upload store: any S3-compatible server, spoken to over HTTP with aiobotocore.

Everything the platform does with S3 goes through `ObjectStore`, so the
imports service reads as a story about files, not about botocore calls, and a
store that behaves differently (AWS, MinIO, Ceph) changes one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from services._runtime import tracing
from services._runtime.settings import S3Settings

log = logging.getLogger(__name__)

# Reading in pieces this size keeps memory flat whatever the file's size,
# while each await still carries enough bytes to amortise its cost.
READ_CHUNK_BYTES = 1024 * 1024
READ_AHEAD_PIECES = 4
# S3's multipart rules: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
DEFAULT_PART_BYTES = 8 * 1024 * 1024
# What a failed write may raise from the client; used where a second failure
# must not hide the first.
_TRANSFER_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True)
class StoredObject:
    """One version of one object, as a listing or an event names it."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str = ""
    """Empty on unversioned buckets."""


STORE_UNREACHABLE = "the file store cannot be reached; retry later"


def store_unreachable(error: BaseException) -> bool:
    """Whether `error` says the store could not be reached or did not answer, rather than refused a request."""
    # A body cut short (the server went away mid-read) is one of these too.
    return isinstance(
        error,
        BotoConnectionError
        | HTTPClientError
        | IncompleteReadError
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError,
    )


class ObjectGone(Exception):
    """The object (or that version of it) is no longer in the store."""


class ObjectStore:
    """One bucket, through one long-lived client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        self.versioned = False
        """Whether the bucket keeps every version: then a file uploaded twice
        under one name, before the first was seen, is still two uploads."""

    async def ensure_bucket(self, region: str) -> None:
        """Creates the bucket when missing; an existing one is left as it is."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if _code(error) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with contextlib.suppress(self._client.exceptions.BucketAlreadyOwnedByYou):
            await self._client.create_bucket(**arguments)

    async def keep_versions(self) -> bool:
        """Turns on versioning where the store allows it; says whether it is on."""
        try:
            answer = await self._client.get_bucket_versioning(Bucket=self.bucket)
            if answer.get("Status") != "Enabled":
                await self._client.put_bucket_versioning(
                    Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
                )
            self.versioned = True
        except ClientError as error:
            log.warning(
                "bucket %s keeps no versions (%s): a file re-uploaded under one name before the first was"
                " imported replaces it",
                self.bucket,
                _code(error),
            )
            self.versioned = False
        return self.versioned

    async def list(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under `prefix`; every version of each, oldest first, on a versioned bucket."""
        if self.versioned:
            async for found in self._list_versions(prefix):
                yield found
            return
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield StoredObject(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=item["LastModified"],
                )

    async def _list_versions(self, prefix: str) -> AsyncIterator[StoredObject]:
        paginator = self._client.get_paginator("list_object_versions")
        same_key: list[StoredObject] = []
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Versions", ()):
                found = StoredObject(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=item["LastModified"],
                    version_id=str(item.get("VersionId") or ""),
                )
                if same_key and same_key[0].key != found.key:
                    # A key's versions come newest first; uploads want them as they arrived.
                    for earlier in reversed(same_key):
                        yield earlier
                    same_key = []
                same_key.append(found)
        for earlier in reversed(same_key):
            yield earlier

    async def head(self, key: str, version_id: str = "") -> StoredObject | None:
        arguments = {"Bucket": self.bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        try:
            answer = await self._client.head_object(**arguments)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
                return None
            raise
        return StoredObject(
            key=key,
            size=int(answer["ContentLength"]),
            etag=str(answer.get("ETag", "")).strip('"'),
            last_modified=answer["LastModified"],
            version_id=str(answer.get("VersionId") or version_id or ""),
        )

    async def chunks(self, stored: StoredObject, chunk_bytes: int = READ_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The object's bytes, read as they are consumed; the exact version listed, never a newer one."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": stored.key}
        if stored.version_id:
            arguments["VersionId"] = stored.version_id
        elif stored.etag:
            # An unversioned key overwritten since it was listed is another upload.
            arguments["IfMatch"] = f'"{stored.etag}"'
        try:
            answer = await self._client.get_object(**arguments)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NoSuchVersion", "PreconditionFailed", "412"):
                raise ObjectGone(stored.key) from None
            raise
        # Reading runs ahead of the consumer by a few pieces, so the network
        # and the parsing of the previous piece overlap; memory stays bounded.
        pieces: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(READ_AHEAD_PIECES)
        reader = asyncio.create_task(_read_ahead(answer["Body"], chunk_bytes, pieces))
        try:
            while (piece := await pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def put(self, key: str, body: bytes, content_type: str = "text/csv") -> StoredObject:
        answer = await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        stored = await self.head(key, str(answer.get("VersionId") or ""))
        if stored is None:
            raise ObjectGone(key)
        return stored

    async def delete(self, stored: StoredObject) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": stored.key}
        if stored.version_id:
            arguments["VersionId"] = stored.version_id
        await self._client.delete_object(**arguments)

    async def move(self, stored: StoredObject, destination: str) -> None:
        """Copies the object under `destination`, then removes the original."""
        source: dict[str, str] = {"Bucket": self.bucket, "Key": stored.key}
        if stored.version_id:
            source["VersionId"] = stored.version_id
        try:
            await self._client.copy_object(Bucket=self.bucket, Key=destination, CopySource=source)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NoSuchVersion"):
                return  # already moved by an earlier attempt
            raise
        await self.delete(stored)

    async def presigned_put(self, key: str, expires_seconds: int) -> str:
        url: str = await self._client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
        )
        return url

    async def presigned_get(self, key: str, *, expires_seconds: int = 3600, file_name: str | None = None) -> str:
        """A URL that downloads the object without credentials until it expires.

        With `file_name`, the store answers with a Content-Disposition that makes
        browsers save the download under that name rather than the key's last segment.
        """
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if file_name is not None:
            params["ResponseContentDisposition"] = _attachment(file_name)
        url: str = await self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)
        return url

    async def upload_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> int:
        """Writes the bytes of `chunks` as one object and returns how many there were.

        Memory stays at a few parts' worth (one in flight, one being gathered)
        plus the chunk at hand, whatever the object's size. A stream that fits in one
        part is one PUT; a longer one is a multipart upload of `part_bytes`
        parts (all equal but the last: some S3-compatible stores require it),
        so the largest object is `part_bytes` x 10,000. If anything fails or
        the caller is cancelled, the multipart upload is aborted, so neither an
        object nor stored parts are left behind, and the error propagates.
        """
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's smallest part), got {part_bytes}")
        upload = _MultipartUpload(self._client, self.bucket, key, content_type)
        pending: list[bytes | memoryview] = []
        held = 0
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                view = memoryview(chunk)
                # A part leaves only once a byte beyond it has arrived, so the
                # last part is never empty and a one-part stream stays one PUT.
                while held + len(view) > part_bytes:
                    fill = part_bytes - held
                    pending.append(view[:fill])
                    view = view[fill:]
                    part = b"".join(pending)
                    pending, held = [], 0
                    await upload.send(part)
                if view:
                    # A tail is copied, so a huge chunk is not kept alive for its last bytes.
                    pending.append(chunk if len(view) == len(chunk) else bytes(view))
                    held += len(view)
            rest = b"".join(pending)
            if upload.started:
                await upload.complete(rest)
            else:
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=rest, ContentType=content_type)
        except BaseException:
            await upload.abort()
            raise
        return total


class _MultipartUpload:
    """One multipart upload, started by its first part, with at most one part in flight."""

    def __init__(self, client: Any, bucket: str, key: str, content_type: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._next_number = 1
        self._sending: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._upload_id is not None

    async def send(self, body: bytes) -> None:
        """Starts sending the next part; returns once the previous one is stored."""
        if self._next_number > MAX_PARTS:
            raise ValueError(f"the object needs more than {MAX_PARTS} parts; upload it with larger parts")
        if self._upload_id is None:
            answer = await self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=self._content_type
            )
            self._upload_id = str(answer["UploadId"])
        await self._wait()
        # Sending overlaps with gathering the next part, which is where the time goes.
        self._sending = asyncio.create_task(self._upload_part(self._next_number, body))
        self._next_number += 1

    async def complete(self, last: bytes) -> None:
        if last:
            await self.send(last)
        await self._wait()
        await self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )

    async def abort(self) -> None:
        """Drops every stored part; a store error is only logged, so the error that led here is the one reported."""
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            await asyncio.wait([sending])
            if not sending.cancelled():
                sending.exception()  # retrieved, so asyncio does not report it as lost
        if self._upload_id is None:
            return
        try:
            await self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except _TRANSFER_ERRORS as error:
            # Its parts stay stored (and billed) until a lifecycle rule for
            # incomplete multipart uploads removes them.
            log.warning("could not abort multipart upload %s of %s: %s", self._upload_id, self._key, error)

    async def _wait(self) -> None:
        if self._sending is not None:
            await self._sending
            self._sending = None

    async def _upload_part(self, number: int, body: bytes) -> None:
        answer = await self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})


def _attachment(file_name: str) -> str:
    """A Content-Disposition value that saves a download as `file_name` (RFC 6266).

    Browsers that read `filename*` get the name exactly, in UTF-8; the plain
    `filename` is an ASCII stand-in for the others. Control characters are
    dropped, as a header value cannot carry them.
    """
    name = "".join(c for c in file_name if c.isprintable())
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="")
    return value


async def _read_ahead(stream: Any, chunk_bytes: int, pieces: asyncio.Queue[bytes | BaseException | None]) -> None:
    """Fills `pieces` with ~chunk_bytes pieces of the body, then None; a failure is passed on as the item."""
    try:
        async with stream as body:
            # The socket hands over a few kilobytes at a time; the parser works
            # best on large pieces, so reads gather into one before it is queued.
            pending = bytearray()
            while True:
                piece: bytes = await body.read(chunk_bytes - len(pending))
                if piece:
                    pending += piece
                if pending and (not piece or len(pending) >= chunk_bytes):
                    await pieces.put(bytes(pending))
                    pending.clear()
                if not piece:
                    break
    except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as error:
        # Handed to the consumer, which raises it where it reads.
        await pieces.put(error)
        return
    await pieces.put(None)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def client_config(settings: S3Settings) -> dict[str, Any]:
    """Keyword arguments for an S3 (or IAM) client of this store."""
    style = settings.addressing_style
    if style == "auto" and settings.endpoint_url:
        # Self-hosted stores rarely have wildcard DNS for virtual-hosted buckets.
        style = "path"
    arguments: dict[str, Any] = {
        "region_name": settings.region,
        "config": Config(
            s3={"addressing_style": style},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=settings.connect_timeout_seconds,
            signature_version="s3v4",
        ),
    }
    if settings.endpoint_url:
        arguments["endpoint_url"] = settings.endpoint_url
    if settings.access_key_id and settings.secret_access_key:
        arguments["aws_access_key_id"] = settings.access_key_id
        arguments["aws_secret_access_key"] = settings.secret_access_key
    return arguments


@contextlib.asynccontextmanager
async def open_store(settings: S3Settings) -> AsyncIterator[ObjectStore]:
    """The store's client, open for the life of the process."""
    session = get_session()
    async with session.create_client("s3", **client_config(settings)) as client:
        tracing.instrument_s3(client)
        yield ObjectStore(client, settings.bucket)


@contextlib.asynccontextmanager
async def open_queue(settings: S3Settings, queue_url: str | None) -> AsyncIterator[Any]:
    """An SQS client for the bucket's event notifications, or None without a queue."""
    if not queue_url:
        yield None
        return
    arguments = client_config(settings)
    arguments.pop("config")
    async with get_session().create_client("sqs", **arguments) as client:
        yield client
