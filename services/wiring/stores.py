"""The upload bucket: the configured S3 store, or the embedded S3 server `dcp up` starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import asyncpg

from services._runtime.embedded_s3 import EmbeddedS3
from services._runtime.ports import EMBEDDED_S3_HOST
from services._runtime.s3 import ObjectStore, open_store
from services._runtime.settings import S3Settings, Settings
from services.schema.keys import EmbeddedKeys, KeyIssuer, key_issuer, new_access_key_pair
from services.wiring.parts import schema_parts


@contextlib.asynccontextmanager
async def upload_store(settings: S3Settings) -> AsyncIterator[ObjectStore]:
    """The configured store's bucket, created if missing."""
    async with open_store(settings) as store:
        await store.ensure_bucket(settings.region)
        await store.keep_versions()
        yield store


@dataclass(frozen=True)
class Uploads:
    """The upload bucket as `dcp up` uses it, and who hands out DCP services' keys to it."""

    store: ObjectStore
    settings: S3Settings
    """Endpoint and key the platform uses; for the embedded server, the ones it was started with."""
    keys: KeyIssuer
    embedded: EmbeddedS3 | None
    """The embedded server, when no store is configured."""


@contextlib.asynccontextmanager
async def uploads_for_up(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Uploads]:
    """The configured store, or an embedded S3 server started in a process of its own.

    The embedded server forgets keys when it stops, so every active DCP
    service's key is registered with it again before anything uses it.
    """
    s3 = settings.s3
    if s3.endpoint_url is not None:
        async with upload_store(s3) as store, key_issuer(s3) as keys:
            yield Uploads(store, s3, keys, None)
        return
    platform_key = (
        (s3.access_key_id, s3.secret_access_key)
        if s3.access_key_id and s3.secret_access_key
        # A key of this run only: nobody can have learnt it from an earlier one.
        else new_access_key_pair()
    )
    server = EmbeddedS3(
        bucket=s3.bucket,
        platform_key=platform_key,
        data_dir=settings.data_dir / "s3",
        host=EMBEDDED_S3_HOST,
        port=s3.embedded_port,
    )
    endpoint = await _started(server)
    try:
        s3 = replace(s3, endpoint_url=endpoint, access_key_id=platform_key[0], secret_access_key=platform_key[1])
        embedded_keys = EmbeddedKeys(server)
        await schema_parts(settings, pool, embedded_keys).catalog.restore_upload_keys()
        async with upload_store(s3) as store:
            yield Uploads(store, s3, embedded_keys, server)
    finally:
        await asyncio.to_thread(server.stop)


async def _started(server: EmbeddedS3) -> str:
    """`server.start()`, which a cancellation cuts short: the server process is ended, never left behind."""
    starting = asyncio.ensure_future(asyncio.to_thread(server.start))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The thread cannot be cancelled; ending the process makes its wait end.
        server.abort()
        await asyncio.wait({starting})
        if not starting.cancelled():
            starting.exception()  # an error of the abort itself; retrieved so it is not reported
        await asyncio.to_thread(server.stop)
        raise
