"""What each `dcp` command does (the command line itself is `services.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from grpc import aio

from gateway.app import GatewayClients
from services import cli, import_worker, replicas
from services._runtime import logs, metrics, tracing
from services._runtime.embedded_s3 import EmbeddedS3Error
from services._runtime.errors import DcpError
from services._runtime.ports import PortSharing, PortUnavailable
from services._runtime.s3 import ObjectStore, open_queue
from services._runtime.server import started_for_good, wait_for_stop_signal
from services._runtime.settings import Settings, default_data_dir
from services._runtime.stopping import Stopped, StopSignals
from services._runtime.supervisor import ChildFailed, ChildProcess
from services.schema.credentials import parse_token_kind
from services.schema.keyfile import read_keys, replace_keys
from services.schema.keys import key_issuer
from services.schema.sealing import SecretsKey, new_key
from services.wiring import embedded_postgres
from services.wiring.connections import grpc_channel, migrate_all, opened_pool
from services.wiring.embedded_postgres import (
    EmbeddedPostgresError,
    NoDatabase,
    database_for_up,
    holds_database,
    restarting,
)
from services.wiring.gateway import start_gateway
from services.wiring.keys import SECRETS_KEY_FILE, ensure_first_account, identity_signer, with_secrets_key
from services.wiring.parts import SchemaParts, schema_parts
from services.wiring.separate import start_imports_server, start_remote_server, start_schema_server
from services.wiring.stores import Uploads, upload_store, uploads_for_up
from services.wiring.suite import Suite, start_suite

# Exit status of a command stopped by a signal before it was done, as shells report one killed by it.
SIGNALLED = 128


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (every platform but Windows): the standard loop otherwise."""
    try:
        import uvloop  # noqa: PLC0415 - optional on platforms without it
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(options: argparse.Namespace, settings: Settings) -> int:
    """Runs the parsed command; returns the exit status, after saying on stderr why it is not 0."""
    name = cli.command_name(options)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_run(options, settings))
    except Stopped as stopped:
        return SIGNALLED + stopped.signum
    except KeyboardInterrupt:
        return SIGNALLED + signal.SIGINT
    except PortUnavailable as error:
        cli.fail(cli.port_problem(name, error))
    except NoDatabase as error:
        cli.fail(no_database(name, error.data_dir, options))
    except EmbeddedPostgresError as error:
        cli.fail(
            f"{name}: {error}; choose another data dir with --data-dir or DCP_DATA_DIR,"
            " or a database of your own with DCP_DATABASE_URL"
        )
    except EmbeddedS3Error as error:
        cli.fail(f"{name}: {error}")
    except ChildFailed as error:
        cli.fail(str(error))
    except DcpError as error:
        cli.fail(cli.dcp_error(error))
    else:
        return 0
    return 1


def no_database(name: str, data_dir: Path, options: argparse.Namespace) -> str:
    if getattr(options, "data_dir", None):
        source = "given by --data-dir"
    elif os.environ.get("DCP_DATA_DIR", "").strip():
        source = "from DCP_DATA_DIR"
    else:
        source = "the default data dir"
    return (
        f"{name}: no Open DCP database in {data_dir} ({source}), and this command makes none;"
        " point it at the data dir of your `dcp up` with --data-dir DIR or DCP_DATA_DIR"
        " (its start-up line `admin:` shows the command), or at the platform's database with DCP_DATABASE_URL"
    )


def _on_stop_signal(count: int) -> None:
    print("stopping..." if count == 1 else "still stopping...", flush=True)


async def _up(settings: Settings, stop: StopSignals) -> None:
    """Starts the platform step by step, serves until a stop, then stops what started in reverse order.

    A stop during start-up cuts the step under way short (see StopSignals.step)
    and ends with Stopped; steps that must not be cut (starting the embedded
    PostgreSQL, creating the first account, binding the servers) run to their
    end first.
    """
    async with AsyncExitStack() as stack:
        url, embedded = await stack.enter_async_context(database_for_up(settings))
        settings = with_secrets_key(settings, allow_generated=True)
        pool = await stop.step(stack.enter_async_context(opened_pool(url, settings)))
        await stack.enter_async_context(restarting(embedded))
        await stop.step(migrate_all(pool))
        parts = schema_parts(settings, pool)
        first_token = await ensure_first_account(parts.credentials, settings.data_dir)
        first_account = (await parts.credentials.list_accounts())[0].id
        if settings.identity_key is None:
            # The import worker process verifies and signs with the same key as this one.
            settings = settings.with_overrides(identity_key=secrets.token_urlsafe(48))
        signer = identity_signer(settings, allow_generated=False)
        in_child = settings.imports.worker_processes
        uploads = await stop.step(stack.enter_async_context(uploads_for_up(settings, pool)))
        queue = await stop.step(stack.enter_async_context(open_queue(uploads.settings, settings.imports.queue_url)))
        stop.raise_if_requested()
        processes = replicas.plan(settings)
        counts = metrics.PlatformCounts() if processes.count > 1 else None
        suite = await start_suite(
            settings,
            pool,
            signer,
            store=uploads.store,
            queue=queue,
            keys=uploads.keys,
            import_worker=not in_child,
            store_for_console=uploads.settings,
            sharing=PortSharing.FIRST if counts is not None else PortSharing.ALONE,
            metrics_endpoint=None if counts is None else metrics.endpoint_of(counts.text),
        )
        stack.push_async_callback(suite.stop, settings.shutdown_grace_seconds)
        worker: ChildProcess | None = None
        if in_child:
            worker = await stop.step(
                import_worker.start_import_worker_process(
                    settings,
                    {
                        "DCP_DATABASE_URL": url,
                        "DCP_SCHEMA_ADDRESS": suite.grpc_address,
                        **import_worker.store_wiring(uploads.settings),
                    },
                )
            )
            stack.push_async_callback(worker.stop, settings.shutdown_grace_seconds)
        serving: list[ChildProcess] = []
        if counts is not None:
            assert suite.gateway is not None
            link = await stack.enter_async_context(replicas.primary_link(counts, uploads.keys))
            wiring = {
                **replicas.replica_wiring(
                    settings, database_url=url, http_port=suite.gateway.port, grpc_port=suite.grpc.port
                ),
                **import_worker.store_wiring(uploads.settings),
            }
            serving = await stop.step(
                replicas.start_replicas(settings, processes.count - 1, wiring, link=link, counts=counts)
            )
            # Stopped first, within the grace, before the primary's own parts.
            stack.push_async_callback(replicas.stop_replicas, serving, settings.shutdown_grace_seconds)
        stop.raise_if_requested()
        _print_running(
            settings,
            suite,
            uploads,
            first_token=first_token,
            first_account=first_account,
            worker=worker,
            serving=[os.getpid(), *(replica.pid for replica in serving if replica.pid is not None)],
            processes_note=processes.note,
        )
        started_for_good()
        await stop.wait()


def admin_line(settings: Settings, account: int) -> str:
    """The CLI command that manages this platform, with the data dir unless it is the default one."""
    command = f"dcp tokens create --account {account}"
    data_dir = settings.data_dir.absolute()
    if data_dir != default_data_dir().absolute():
        command += f" --data-dir {shlex.quote(str(data_dir))}"
    if settings.database_url:
        # The URL may hold a password: it is named, not shown.
        command += "  # with DCP_DATABASE_URL set as here"
    return command


def _print_running(
    settings: Settings,
    suite: Suite,
    uploads: Uploads,
    *,
    first_token: str | None,
    first_account: int,
    worker: ChildProcess | None,
    serving: list[int],
    processes_note: str | None,
) -> None:
    print(f"Open DCP is running (data dir {settings.data_dir})", flush=True)
    print(f"  console: {suite.http_url}/console/", flush=True)
    print(f"  REST: {suite.http_url}/experiment/v1/ and {suite.http_url}/api/", flush=True)
    print(f"  API reference: {suite.http_url}/docs (OpenAPI 3.1: {suite.http_url}/openapi.json)", flush=True)
    print(f"  gRPC: {suite.grpc_address}", flush=True)
    pids = ", ".join(str(pid) for pid in serving)
    print(f"  processes: {len(serving)} serving (pid{'s' if len(serving) > 1 else ''} {pids})", flush=True)
    if processes_note is not None:
        print(f"    {processes_note}", flush=True)
    database = "DCP_DATABASE_URL" if settings.database_url else "embedded PostgreSQL"
    print(f"  database: {database}", flush=True)
    print(f"  admin: {admin_line(settings, first_account)}", flush=True)
    s3 = uploads.settings
    if uploads.embedded is not None:
        print(
            f"  S3: embedded, {s3.endpoint_url} bucket {s3.bucket} (process {uploads.embedded.pid};"
            " its objects are gone when it stops)",
            flush=True,
        )
        print("    every request must be signed; a DCP service's key reaches only its own prefix", flush=True)
        if not (settings.s3.access_key_id and settings.s3.secret_access_key):
            print(
                "    the platform's key is made anew each start;"
                " set DCP_S3_ACCESS_KEY_ID and DCP_S3_SECRET_ACCESS_KEY to choose one",
                flush=True,
            )
        else:
            print(f"    the platform's key: DCP_S3_ACCESS_KEY_ID ({s3.access_key_id})", flush=True)
    else:
        print(f"  S3: {s3.endpoint_url} bucket {s3.bucket}", flush=True)
    key_file = settings.data_dir / SECRETS_KEY_FILE
    sealing = "DCP_SECRETS_KEY" if settings.secrets_key not in read_keys(key_file) else f"{key_file}; back it up"
    print(f"  S3 secret keys sealed at rest with the key from {sealing}", flush=True)
    if worker is not None:
        print(f"  imports: applied by a worker process (pid {worker.pid})", flush=True)
    if first_token:
        print(f"  first account 'default' created; its classic token (also in {settings.data_dir / 'token'}):")
        print(f"    {first_token}", flush=True)


def _require(value: str | None, variable: str, service: str) -> str:
    if not value:
        raise SystemExit(f"dcp serve {service} needs {variable}")
    return value


async def _serve(settings: Settings, service: str) -> None:
    if service == "gateway":
        schema_address = _require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service)
        async with AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(grpc_channel(address))
                for address in (
                    schema_address,
                    settings.profiles_address or schema_address,
                    settings.aliases_address or schema_address,
                    settings.imports_address or schema_address,
                )
            ]
            gateway = await start_gateway(settings, GatewayClients.over(*channels))
            print(f"gateway serving REST on http://{settings.http_host}:{gateway.port}", flush=True)
            started_for_good()
            await wait_for_stop_signal()
            await gateway.stop()
        return
    database_url = _require(settings.database_url, "DCP_DATABASE_URL", service)
    signer = identity_signer(settings, allow_generated=False)
    if service == "schema":
        settings = with_secrets_key(settings, allow_generated=False)
    async with opened_pool(database_url, settings) as pool, AsyncExitStack() as stack:
        await migrate_all(pool)
        stop: Callable[[float], Awaitable[None]] | None = None
        if service == "schema":
            keys = await stack.enter_async_context(key_issuer(settings.s3))
            server = await start_schema_server(settings, pool, signer, keys)
        elif service == "imports":
            schema = await stack.enter_async_context(
                grpc_channel(_require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service))
            )
            profiles = await stack.enter_async_context(
                grpc_channel(_require(settings.profiles_address, "DCP_PROFILES_ADDRESS", service))
            )
            store = await stack.enter_async_context(upload_store(settings.s3))
            queue = await stack.enter_async_context(open_queue(settings.s3, settings.imports.queue_url))
            in_child = settings.imports.worker_processes
            imports = await start_imports_server(
                settings,
                pool,
                signer,
                store,
                schema_channel=schema,
                profiles_channel=profiles,
                queue=queue,
                import_worker=not in_child,
            )
            server = imports.server
            stop = imports.stop
            if in_child:
                # The child inherits this process's settings: database, schema, profiles and store.
                worker = await import_worker.start_import_worker_process(settings, {})
                stack.push_async_callback(worker.stop, settings.shutdown_grace_seconds)
        else:
            schema = await stack.enter_async_context(
                grpc_channel(_require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service))
            )
            aliases: aio.Channel | None = None
            export_store: ObjectStore | None = None
            if service == "profiles":
                aliases = await stack.enter_async_context(
                    grpc_channel(_require(settings.aliases_address, "DCP_ALIASES_ADDRESS", service))
                )
                # Exports are written to the upload bucket.
                export_store = await stack.enter_async_context(upload_store(settings.s3))
            server = await start_remote_server(
                settings, pool, signer, service, schema_channel=schema, aliases_channel=aliases, store=export_store
            )
        await server.mark_serving()
        server.watch_database(
            pool, interval=settings.db_health_interval_seconds, timeout=settings.db_health_timeout_seconds
        )
        print(f"{service} service serving gRPC on {settings.grpc_host}:{server.port}", flush=True)
        started_for_good()
        await wait_for_stop_signal()
        await (stop or server.stop)(settings.shutdown_grace_seconds)


def _admin_settings(settings: Settings) -> Settings:
    return settings.with_overrides(db_pool_min_size=0, db_pool_max_size=2)


async def _with_credentials(settings: Settings, action: Callable[[SchemaParts], Awaitable[None]]) -> None:
    with embedded_postgres.database_url(settings, create=False) as url:
        async with opened_pool(url, _admin_settings(settings)) as pool:
            await migrate_all(pool)
            await action(schema_parts(settings, pool))


async def _migrate(settings: Settings) -> None:
    with embedded_postgres.database_url(settings, create=False) as url:
        async with opened_pool(url, _admin_settings(settings)) as pool:
            applied = await migrate_all(pool)
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")


def _read_new_key(key_file: str | None) -> str:
    if key_file:
        text = Path(key_file).expanduser().read_text()
    elif sys.stdin.isatty():
        text = getpass.getpass("new secrets key: ")
    else:
        text = sys.stdin.readline()
    if not text.strip():
        raise SystemExit("no new key was given: `dcp secrets new-key > new.key && dcp secrets rotate < new.key`")
    return text.strip()


async def _rotate_secrets(settings: Settings, key_file: str | None, batch_size: int) -> None:
    if not settings.database_url and not holds_database(settings.data_dir):
        # Before asking for keys: the likelier mistake is the directory.
        raise NoDatabase(settings.data_dir)
    from_data_dir = settings.secrets_key is None
    settings = with_secrets_key(settings, allow_generated=True, create=False)
    path = settings.data_dir / SECRETS_KEY_FILE
    if settings.secrets_key is None:
        raise SystemExit(
            f"dcp secrets rotate needs the current key: set DCP_SECRETS_KEY (`dcp up` keeps its own in {path})"
        )
    new_text = _read_new_key(key_file)
    new = SecretsKey.parse(new_text, source="the new key")
    with embedded_postgres.database_url(settings, create=False) as url:
        async with opened_pool(url, _admin_settings(settings)) as pool:
            await migrate_all(pool)
            rotation = await schema_parts(settings, pool).secrets.rotate(new, batch_size=batch_size)
    print(
        f"re-encrypted {rotation.reencrypted} of {rotation.rows} stored S3 secret key(s);"
        f" every one is now sealed with key id {rotation.key_id}"
    )
    old_keys = [settings.secrets_key, *settings.secrets_previous_keys]
    if from_data_dir:
        # The old key stays listed: a `dcp up` still running seals new rows with it until it restarts.
        await asyncio.to_thread(replace_keys, path, [new_text, *(k for k in old_keys if k != new_text)])
        print(f"the new key now seals in {path}; restart `dcp up` to use it")
        return
    print(
        "next: set DCP_SECRETS_KEY to the new key on every replica, and keep the old key in"
        " DCP_SECRETS_PREVIOUS_KEYS until every replica runs with the new one; then run `dcp secrets rotate`"
        " once more with the new key (it seals what replicas still on the old key wrote meanwhile) and drop the"
        " old key. Giving every replica the new key in DCP_SECRETS_PREVIOUS_KEYS before rotating keeps reads"
        " working while the replicas restart."
    )


async def _run(options: argparse.Namespace, settings: Settings) -> None:
    if options.command in ("up", "serve", "import-worker", "replica"):
        logs.configure(log_format=settings.log_format, level=settings.log_level)
    if options.command == "up":
        with StopSignals(_on_stop_signal).installed() as stop:
            async with tracing.traced(settings, "dcp"):
                await _up(settings, stop)
    elif options.command == "serve":
        # The gateway's REST port serves /metrics as well; a port of its own lets one scrape config fit every service.
        host = settings.http_host if options.service == "gateway" else settings.grpc_host
        async with (
            tracing.traced(settings, f"dcp-{options.service}"),
            metrics.serving(host, settings.metrics_port) as metrics_port,
        ):
            if metrics_port is not None:
                print(f"{options.service} metrics on http://{host}:{metrics_port}/metrics", flush=True)
            await _serve(settings, options.service)
    elif options.command == "replica":
        async with tracing.traced(settings, "dcp"):
            await replicas.run_replica(settings, Path(options.primary))
    elif options.command == "import-worker":
        async with tracing.traced(settings, "dcp-import-worker"):
            await import_worker.run_import_worker(settings)
    elif options.command == "migrate":
        await _migrate(settings)
    elif options.command == "accounts":

        async def accounts_action(parts: SchemaParts) -> None:
            if options.action == "create":
                account = await parts.credentials.create_account(options.name)
                print(f"account {account.id} created: {account.name}")
            else:
                for account in await parts.credentials.list_accounts():
                    print(f"{account.id}\t{account.name}\t{account.created.isoformat()}")

        await _with_credentials(settings, accounts_action)
    elif options.command == "tokens":

        async def tokens_action(parts: SchemaParts) -> None:
            if options.action == "create":
                issued = await parts.credentials.issue_token(
                    options.account, parse_token_kind(options.kind), options.label
                )
                print(
                    f"token {issued.token.id} ({issued.token.kind.value}) for account {options.account}; "
                    "it is shown only now:",
                    file=sys.stderr,
                )
                print(issued.secret)
            elif options.action == "revoke":
                token = await parts.credentials.revoke_token(options.token_id)
                print(f"token {token.id} revoked")
            else:
                for token in await parts.credentials.list_tokens(options.account):
                    state = f"revoked {token.revoked_at.isoformat()}" if token.revoked_at else "active"
                    print(f"{token.id}\t{token.kind.value}\t{state}\t{token.label or ''}")

        await _with_credentials(settings, tokens_action)
    elif options.command == "secrets":
        if options.action == "new-key":
            print(new_key())
        else:
            await _rotate_secrets(settings, options.new_key_file, options.batch_size)
