"""The import worker: the process that applies uploaded files, and how its parent starts it.

Inflating, parsing, validating and storing a file is CPU work that lasts
seconds or minutes. The processes that answer requests (`dcp up`, `dcp serve
imports`) therefore do none of it: they start `dcp import-worker` as a child
(see `services._runtime.supervisor`), which works through the bucket on its
own event loop and reports each finished upload to its parent for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from grpc import aio

from dcp.schema.v1 import schema_service_pb2_grpc
from services._runtime import metrics, supervisor
from services._runtime.s3 import open_queue
from services._runtime.server import wait_for_stop_signal
from services._runtime.settings import S3Settings, Settings
from services._runtime.supervisor import ChildProcess
from services.imports.worker import ImportWorker
from services.platform import grpc_channel, identity_signer, import_parts, opened_pool, upload_store
from services.profiles import repository as profiles_repository
from services.profiles.profiles import Profiles
from services.schema.client import RegistryClient

log = logging.getLogger(__name__)

IMPORT_WORKER_ARGV = (sys.executable, "-m", "services.cli", "import-worker")


def store_wiring(s3: S3Settings) -> dict[str, str]:
    """The store as this process reaches it (the embedded one included), for a child process."""
    wiring = {"DCP_S3_BUCKET": s3.bucket, "DCP_S3_REGION": s3.region}
    if s3.endpoint_url:
        wiring["DCP_S3_ENDPOINT_URL"] = s3.endpoint_url
    if s3.access_key_id and s3.secret_access_key:
        wiring["DCP_S3_ACCESS_KEY_ID"] = s3.access_key_id
        wiring["DCP_S3_SECRET_ACCESS_KEY"] = s3.secret_access_key
    return wiring


def _worker_finished(event: dict[str, Any]) -> None:
    if event.get("event") == "import_finished":
        metrics.import_finished(
            str(event["status"]),
            rows_imported=int(event["rows_imported"]),
            rows_rejected=int(event["rows_rejected"]),
            lag_seconds=float(event["lag_seconds"]),
        )


async def start_import_worker_process(settings: Settings, wiring: Mapping[str, str]) -> ChildProcess:
    """The import worker in a child process; `wiring` names what it connects to (database, schema, store)."""
    env = {**os.environ, **wiring}
    if settings.identity_key:
        env["DCP_IDENTITY_KEY"] = settings.identity_key
    child = ChildProcess("import worker", IMPORT_WORKER_ARGV, env, on_event=_worker_finished)
    await child.start()
    return child


def _report_finished(status: str, *, rows_imported: int, rows_rejected: int, lag_seconds: float) -> None:
    supervisor.report(
        "import_finished",
        status=status,
        rows_imported=rows_imported,
        rows_rejected=rows_rejected,
        lag_seconds=lag_seconds,
    )
    supervisor.release_memory()


async def run_import_worker(settings: Settings) -> None:
    """The child process: applies uploads until its parent stops it or goes away.

    It merges rows through the profiles service when DCP_PROFILES_ADDRESS is set,
    else directly into the shared database (as `dcp up` does in one process).
    """
    supervisor.stop_with_parent()
    supervisor.run_in_background()
    if not settings.database_url or not settings.schema_address:
        raise SystemExit("dcp import-worker needs DCP_DATABASE_URL and DCP_SCHEMA_ADDRESS")
    signer = identity_signer(settings, allow_generated=False)
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(opened_pool(settings.database_url, settings))
        schema_channel = await stack.enter_async_context(grpc_channel(settings.schema_address))
        store = await stack.enter_async_context(upload_store(settings.s3))
        queue = await stack.enter_async_context(open_queue(settings.s3, settings.imports.queue_url))
        profiles: Profiles | None = None
        profiles_channel: aio.Channel | None = None
        if settings.profiles_address:
            profiles_channel = await stack.enter_async_context(grpc_channel(settings.profiles_address))
        else:
            registry = RegistryClient(
                schema_service_pb2_grpc.SchemaServiceStub(schema_channel),
                signer,
                ttl_seconds=settings.registry_cache_seconds,
            )
            profiles = Profiles(profiles_repository.ProfilesRepository(pool), registry, None)
        parts = import_parts(
            settings.with_overrides(imports=replace(settings.imports, worker_processes=False)),
            pool,
            signer,
            store,
            schema_channel=schema_channel,
            profiles_channel=profiles_channel,
            profiles=profiles,
            queue=queue,
            on_finished=_report_finished,
        )
        worker = asyncio.create_task(parts.worker.run(), name="imports-worker")
        gone = asyncio.create_task(supervisor.parent_gone(), name="parent-watch")
        stop = asyncio.create_task(wait_for_stop_signal(), name="stop-signal")
        outgrown = asyncio.create_task(
            _outgrown(parts.worker, settings.imports.worker_max_growth_bytes, settings.imports.poll_seconds),
            name="memory-watch",
        )
        supervisor.report(supervisor.READY_EVENT)
        tasks = (worker, gone, stop, outgrown)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # An import cut short rolls back and is taken up again by the next worker.
            await asyncio.gather(*tasks, return_exceptions=True)
        if outgrown.done() and not outgrown.cancelled():
            supervisor.report(supervisor.RENEW_EVENT)
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            raise worker.exception()  # type: ignore[misc]


async def _outgrown(worker: ImportWorker, max_growth: int, interval: float) -> None:
    """Returns once the worker is idle and has grown `max_growth` bytes past its size at start.

    Freed memory that glibc and Python keep after a large file would otherwise
    stay with the worker until the next one; a fresh process starts small.
    """
    start = supervisor.resident_bytes()
    if not max_growth or not start:
        await asyncio.Event().wait()
    while True:
        await asyncio.sleep(interval)
        if not worker.busy and supervisor.resident_bytes() - start > max_growth:
            log.info(
                "the import worker has grown from %d to %d MiB while idle; a fresh one takes over",
                start >> 20,
                supervisor.resident_bytes() >> 20,
            )
            return
