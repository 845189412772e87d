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

from dcp.schema.v1 import schema_service_pb2_grpc
from services._runtime import metrics, supervisor
from services._runtime.auth import CallerResolver
from services._runtime.s3 import open_queue
from services._runtime.server import wait_for_stop_signal
from services._runtime.settings import S3Settings, Settings
from services._runtime.supervisor import ChildProcess
from services.domain.batches import BatchMerger
from services.imports.worker import ImportWorker
from services.profiles import repository as profiles_repository
from services.profiles.links import PublishedLinks
from services.profiles.profiles import Profiles
from services.schema.client import RegistryClient, RemoteAuthenticator
from services.wiring.connections import grpc_channel, opened_pool
from services.wiring.keys import identity_signer
from services.wiring.parts import colocated_merger, import_parts, remote_merger
from services.wiring.stores import upload_store

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


def _worker_event(event: dict[str, Any]) -> None:
    if event.get("event") == "import_finished":
        metrics.import_finished(
            str(event["status"]),
            rows_imported=int(event["rows_imported"]),
            rows_rejected=int(event["rows_rejected"]),
            lag_seconds=float(event["lag_seconds"]),
        )
    elif event.get("event") == "grpc_handled":
        metrics.grpc_handled(str(event["type"]), str(event["method"]), str(event["code"]), float(event["seconds"]))


async def start_import_worker_process(settings: Settings, wiring: Mapping[str, str]) -> ChildProcess:
    """The import worker in a child process; `wiring` names what it connects to (database, schema, store)."""
    env = {**os.environ, **wiring}
    if settings.identity_key:
        env["DCP_IDENTITY_KEY"] = settings.identity_key
    child = ChildProcess("import worker", IMPORT_WORKER_ARGV, env, on_event=_worker_event)
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


def _report_handled(grpc_type: str, method: str, code: str, seconds: float) -> None:
    # The parent serves the metrics: the calls this process handles for its server are counted there.
    supervisor.report("grpc_handled", type=grpc_type, method=method, code=code, seconds=seconds)


async def run_import_worker(settings: Settings) -> None:
    """The child process: applies uploads until its parent stops it or goes away.

    It merges rows through the profiles service when DCP_PROFILES_ADDRESS is set,
    else through the profiles domain here, on the shared database, each batch
    handled as a call to its parent's server would be.
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
        merger: BatchMerger
        if settings.profiles_address:
            merger = remote_merger(await stack.enter_async_context(grpc_channel(settings.profiles_address)), signer)
        else:
            schema_stub = schema_service_pb2_grpc.SchemaServiceStub(schema_channel)
            registry = RegistryClient(schema_stub, signer, ttl_seconds=settings.registry_cache_seconds)
            repository = profiles_repository.ProfilesRepository(pool)
            # The calls are the parent server's, so they are checked and counted as its own.
            resolver = CallerResolver(
                signer, RemoteAuthenticator(schema_service_pb2_grpc.AuthServiceStub(schema_channel))
            )
            merger = colocated_merger(
                Profiles(repository, registry, PublishedLinks(repository)), resolver, signer, on_handled=_report_handled
            )
        parts = import_parts(
            settings.with_overrides(imports=replace(settings.imports, worker_processes=False)),
            pool,
            signer,
            store,
            schema_channel=schema_channel,
            merger=merger,
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
        # An import cut short rolls back and is taken up again by the next worker.
        await supervisor.until_first_ends((worker, gone, stop, outgrown))
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
