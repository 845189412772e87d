"""The serving processes of `dcp up` beyond its own: how it starts them, and what each runs.

One Python process answers requests on one core. `dcp up` therefore serves
from several processes (one per usable core but one, by default) that all listen on the
same gRPC and HTTP ports (SO_REUSEPORT), so the kernel spreads connections
over them. The process `dcp up` starts in, the primary, does every once-only
task (the embedded stores, migrations, the first account, the import worker,
taking over unfinished exports) and serves; each replica (`dcp replica`, a
child kept running by `services._runtime.supervisor`) only serves.

A replica asks the primary, over a unix socket only they share (the primary
link), for what the primary alone can do: handing out upload keys (the embedded
S3 server takes keys from the process that started it) and the platform's
metrics, which replicas send it about every second on the supervisor's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services import cli
from services._runtime import metrics, supervisor
from services._runtime.errors import DcpError, Unavailable
from services._runtime.metrics import MetricsUnavailable, PlatformCounts
from services._runtime.ports import PortSharing, PortUnavailable
from services._runtime.server import started_for_good, wait_for_stop_signal
from services._runtime.settings import DEFAULT_MAX_PROCESSES, Settings
from services._runtime.supervisor import ChildProcess
from services.schema.keys import KeyIssuer
from services.wiring.connections import opened_pool
from services.wiring.keys import identity_signer
from services.wiring.stores import upload_store
from services.wiring.suite import start_suite

log = logging.getLogger(__name__)

REPLICA_ARGV = (sys.executable, "-m", "services.cli", "replica")
# How often a replica sends its counts to the primary: what a scrape shows of it is at most this old.
COUNTS_INTERVAL_SECONDS = 1.0
# A question to the primary is a local round trip; one that takes longer finds the primary gone.
LINK_SECONDS = 10.0
METRICS_EVENT = "metrics"


@dataclass(frozen=True)
class ProcessPlan:
    count: int
    """Serving processes to run, the primary included."""
    note: str | None = None
    """Why fewer than asked for run, for the start-up lines."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_processes() -> int:
    """One serving process per usable core but one, at most `DEFAULT_MAX_PROCESSES`.

    The core left over is PostgreSQL's, the import worker's and the embedded
    store's: with every core serving, each statement waits for a core behind
    the serving processes, and on two cores the slowest requests took twice as
    long at full load (bench/rest_bench.py) for a third more requests served.
    """
    return max(1, min(usable_cores() - 1, DEFAULT_MAX_PROCESSES))


def plan(settings: Settings) -> ProcessPlan:
    """How many serving processes `dcp up` runs with these settings."""
    wanted = settings.processes or default_processes()
    if wanted > 1 and settings.rate_limit_per_second > 0 and not settings.redis_url:
        return ProcessPlan(
            1,
            f"one serving process, not {wanted}: rate limits (DCP_RATE_LIMIT_PER_SECOND) are counted in process"
            f" without DCP_REDIS_URL, so each process would allow the full rate; set DCP_REDIS_URL to serve with"
            f" {wanted}",
        )
    return ProcessPlan(wanted)


# The primary's side


@contextlib.asynccontextmanager
async def primary_link(counts: PlatformCounts, keys: KeyIssuer) -> AsyncIterator[Path]:
    """The primary's unix socket for its replicas, in a directory only this user reaches; yields its path."""
    directory = Path(tempfile.mkdtemp(prefix="dcp-"))
    path = directory / "primary.sock"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await _answer(json.loads(line), counts, keys)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError) as error:
            log.warning("a serving process asked something that could not be answered: %s", error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(answer, path=str(path), limit=supervisor.EVENT_LINE_LIMIT)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)


async def _answer(request: dict[str, Any], counts: PlatformCounts, keys: KeyIssuer) -> dict[str, Any]:
    op = request.get("op")
    try:
        if op == "metrics":
            return {"text": counts.exposition().decode()}
        if op == "issue":
            return {"keys": list(await keys.issue(int(request["service_id"])))}
        if op == "revoke":
            await keys.revoke(int(request["service_id"]), str(request["access_key"]))
            return {}
        if op == "restore":
            await keys.restore((int(service), str(key), str(secret)) for service, key, secret in request["keys"])
            return {}
    except DcpError as error:
        return {"error": error.message}
    return {"error": f"unknown question {op!r}"}


async def start_replicas(
    settings: Settings, count: int, wiring: Mapping[str, str], *, link: Path, counts: PlatformCounts
) -> list[ChildProcess]:
    """`count` replicas, each ready to serve; if one cannot start, none is left running and its reason is raised."""
    env = {**os.environ, **wiring}
    replicas: list[ChildProcess] = []
    for number in range(1, count + 1):
        name = f"serving process {number + 1}"

        def on_event(event: dict[str, Any], name: str = name) -> None:
            if event.get("event") == METRICS_EVENT:
                counts.update(name, int(event["pid"]), metrics.families_from(event["families"]))

        replicas.append(ChildProcess(name, [*REPLICA_ARGV, "--primary", str(link)], env, on_event=on_event))
    started = [asyncio.ensure_future(replica.start()) for replica in replicas]
    try:
        await asyncio.gather(*started)
    except BaseException:
        for task in started:
            task.cancel()
        await asyncio.wait(started)
        await stop_replicas(replicas, settings.shutdown_grace_seconds)
        raise
    return replicas


async def stop_replicas(replicas: Iterable[ChildProcess], grace: float) -> None:
    await asyncio.gather(*(replica.stop(grace) for replica in replicas))


def replica_wiring(settings: Settings, *, database_url: str, http_port: int, grpc_port: int) -> dict[str, str]:
    """What a replica needs to serve as the primary does: its database, keys and the ports it got."""
    assert settings.identity_key is not None, "the primary makes an identity key before starting replicas"
    wiring = {
        "DCP_DATABASE_URL": database_url,
        "DCP_DATA_DIR": str(settings.data_dir),
        "DCP_IDENTITY_KEY": settings.identity_key,
        "DCP_HTTP_PORT": str(http_port),
        "DCP_GRPC_PORT": str(grpc_port),
    }
    if settings.secrets_key is not None:
        wiring["DCP_SECRETS_KEY"] = settings.secrets_key
        wiring["DCP_SECRETS_PREVIOUS_KEYS"] = ",".join(settings.secrets_previous_keys)
    return wiring


# A replica's side


class LinkDown(Exception):
    """The primary did not answer."""


class PrimaryLink:
    """Questions to the primary, one connection each (they are rare: a scrape, a new DCP service)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(LINK_SECONDS):
                reader, writer = await asyncio.open_unix_connection(str(self._path), limit=supervisor.EVENT_LINE_LIMIT)
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as error:
            raise LinkDown(f"the first process of `dcp up` did not answer: {error or type(error).__name__}") from error
        if not line:
            raise LinkDown("the first process of `dcp up` closed the connection")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def metrics_text(self) -> bytes:
        try:
            answer = await self.ask({"op": "metrics"})
        except LinkDown as error:
            raise MetricsUnavailable(f"the platform's metrics cannot be gathered now: {error}") from error
        return str(answer["text"]).encode()


class KeysFromPrimary:
    """Upload keys handed out by the primary, which the embedded S3 server takes them from."""

    def __init__(self, link: PrimaryLink) -> None:
        self._link = link

    async def issue(self, service_id: int) -> tuple[str, str]:
        answer = await self._ask({"op": "issue", "service_id": service_id})
        access_key, secret_key = answer["keys"]
        return str(access_key), str(secret_key)

    async def revoke(self, service_id: int, access_key: str) -> None:
        await self._ask({"op": "revoke", "service_id": service_id, "access_key": access_key})

    async def restore(self, keys: Iterable[tuple[int, str, str]]) -> None:
        await self._ask({"op": "restore", "keys": [list(key) for key in keys]})

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._link.ask(request)
        except LinkDown as error:
            log.error("could not reach the first process for an upload key: %s", error)
            raise Unavailable("the upload key could not be handed out; retry later") from error
        if "error" in answer:
            raise Unavailable(str(answer["error"]))
        return answer


async def run_replica(settings: Settings, primary: Path) -> None:
    """The child process: serves on the primary's ports until stopped, or until the primary goes away."""
    supervisor.stop_with_parent()
    if not settings.database_url:
        raise SystemExit("dcp replica needs DCP_DATABASE_URL; `dcp up` starts it with the settings it needs")
    try:
        await _serve_replica(settings, PrimaryLink(primary))
    except PortUnavailable as error:
        supervisor.report(supervisor.FAILED_EVENT, message=cli.port_problem("dcp up", error))
        raise SystemExit(1) from None
    except (DcpError, OSError) as error:
        supervisor.report(supervisor.FAILED_EVENT, message=f"dcp up: a serving process could not start: {error}")
        raise SystemExit(1) from None


async def _serve_replica(settings: Settings, link: PrimaryLink) -> None:
    assert settings.database_url is not None
    signer = identity_signer(settings, allow_generated=False)
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(opened_pool(settings.database_url, settings))
        store = await stack.enter_async_context(upload_store(settings.s3))
        suite = await start_suite(
            settings,
            pool,
            signer,
            store=store,
            keys=KeysFromPrimary(link),
            import_worker=False,
            store_for_console=settings.s3,
            sharing=PortSharing.JOINING,
            once_only=False,
            metrics_endpoint=metrics.endpoint_of(link.metrics_text),
        )
        stack.push_async_callback(suite.stop, settings.shutdown_grace_seconds)
        await _until_stopped(_report_counts)


async def _until_stopped(*work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Says it is ready, runs `work` until a stop signal or until the parent goes away."""
    stop = asyncio.create_task(wait_for_stop_signal(), name="stop-signal")
    gone = asyncio.create_task(supervisor.parent_gone(), name="parent-watch")
    tasks = [stop, gone, *(asyncio.create_task(job()) for job in work)]
    # The signal handlers are in place before the parent may send a signal.
    await asyncio.sleep(0)
    started_for_good()
    supervisor.report(supervisor.READY_EVENT)
    await supervisor.until_first_ends(tasks)


async def _report_counts() -> None:
    while True:
        supervisor.report(METRICS_EVENT, pid=os.getpid(), families=metrics.samples())
        await asyncio.sleep(COUNTS_INTERVAL_SECONDS)
