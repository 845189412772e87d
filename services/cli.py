"""The `dcp` command: run the platform, one service, migrations, accounts and tokens."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from grpc import aio

from gateway.app import GatewayClients
from services import import_worker, platform
from services._runtime import logs, metrics, tracing
from services._runtime.errors import DcpError
from services._runtime.s3 import ObjectStore, open_queue
from services._runtime.server import wait_for_stop_signal
from services._runtime.settings import Settings
from services._runtime.supervisor import ChildProcess
from services.schema.credentials import parse_token_kind
from services.schema.keyfile import read_keys, replace_keys
from services.schema.keys import key_issuer
from services.schema.sealing import SecretsKey, new_key
from services.schema.stored_secrets import BATCH_SIZE


def _settings(options: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {}
    if getattr(options, "data_dir", None):
        overrides["data_dir"] = Path(options.data_dir).expanduser()
    if getattr(options, "http_port", None) is not None:
        overrides["http_port"] = options.http_port
    if getattr(options, "grpc_port", None) is not None:
        overrides["grpc_port"] = options.grpc_port
    return settings.with_overrides(**overrides)


async def _up(settings: Settings) -> None:
    settings = platform.with_secrets_key(settings, allow_generated=True)
    with platform.database(settings) as (url, embedded):
        async with platform.opened_pool(url, settings) as pool, platform.restarting(embedded):
            await platform.migrate_all(pool)
            parts = platform.schema_parts(settings, pool)
            first_token = await platform.ensure_first_account(parts.credentials, settings.data_dir)
            if settings.identity_key is None:
                # The import worker process verifies and signs with the same key as this one.
                settings = settings.with_overrides(identity_key=secrets.token_urlsafe(48))
            signer = platform.identity_signer(settings, allow_generated=False)
            in_child = settings.imports.worker_processes
            async with (
                platform.uploads_for_up(settings, pool) as uploads,
                open_queue(uploads.settings, settings.imports.queue_url) as queue,
            ):
                suite = await platform.start_suite(
                    settings,
                    pool,
                    signer,
                    store=uploads.store,
                    queue=queue,
                    keys=uploads.keys,
                    import_worker=not in_child,
                    store_for_console=uploads.settings,
                )
                worker: ChildProcess | None = None
                try:
                    if in_child:
                        worker = await import_worker.start_import_worker_process(
                            settings,
                            {
                                "DCP_DATABASE_URL": url,
                                "DCP_SCHEMA_ADDRESS": suite.grpc_address,
                                **import_worker.store_wiring(uploads.settings),
                            },
                        )
                    await _serve_suite(settings, suite, uploads, first_token, worker)
                finally:
                    if worker is not None:
                        await worker.stop(settings.shutdown_grace_seconds)
                    await suite.stop(settings.shutdown_grace_seconds)


async def _serve_suite(
    settings: Settings,
    suite: platform.Suite,
    uploads: platform.Uploads,
    first_token: str | None,
    worker: ChildProcess | None,
) -> None:
    print(f"Open DCP is running (data dir {settings.data_dir})", flush=True)
    print(f"  console: {suite.http_url}/console/", flush=True)
    print(f"  REST: {suite.http_url}/experiment/v1/ and {suite.http_url}/api/", flush=True)
    print(f"  gRPC: {suite.grpc_address}", flush=True)
    database = "DCP_DATABASE_URL" if settings.database_url else "embedded PostgreSQL"
    print(f"  database: {database}", flush=True)
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
    key_file = settings.data_dir / platform.SECRETS_KEY_FILE
    sealing = "DCP_SECRETS_KEY" if settings.secrets_key not in read_keys(key_file) else f"{key_file}; back it up"
    print(f"  S3 secret keys sealed at rest with the key from {sealing}", flush=True)
    if worker is not None:
        print(f"  imports: applied by a worker process (pid {worker.pid})", flush=True)
    if first_token:
        print(f"  first account 'default' created; its classic token (also in {settings.data_dir / 'token'}):")
        print(f"    {first_token}", flush=True)
    await wait_for_stop_signal()
    print("stopping...", flush=True)


def _require(value: str | None, variable: str, service: str) -> str:
    if not value:
        raise SystemExit(f"dcp serve {service} needs {variable}")
    return value


async def _serve(settings: Settings, service: str) -> None:
    if service == "gateway":
        schema_address = _require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service)
        async with AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(platform.grpc_channel(address))
                for address in (
                    schema_address,
                    settings.profiles_address or schema_address,
                    settings.aliases_address or schema_address,
                    settings.imports_address or schema_address,
                )
            ]
            gateway = await platform.start_gateway(settings, GatewayClients.over(*channels))
            print(f"gateway serving REST on http://{settings.http_host}:{gateway.port}", flush=True)
            await wait_for_stop_signal()
            await gateway.stop()
        return
    database_url = _require(settings.database_url, "DCP_DATABASE_URL", service)
    signer = platform.identity_signer(settings, allow_generated=False)
    if service == "schema":
        settings = platform.with_secrets_key(settings, allow_generated=False)
    async with platform.opened_pool(database_url, settings) as pool, AsyncExitStack() as stack:
        await platform.migrate_all(pool)
        stop: Callable[[float], Awaitable[None]] | None = None
        if service == "schema":
            keys = await stack.enter_async_context(key_issuer(settings.s3))
            server = await platform.start_schema_server(settings, pool, signer, keys)
        elif service == "imports":
            schema = await stack.enter_async_context(
                platform.grpc_channel(_require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service))
            )
            profiles = await stack.enter_async_context(
                platform.grpc_channel(_require(settings.profiles_address, "DCP_PROFILES_ADDRESS", service))
            )
            store = await stack.enter_async_context(platform.upload_store(settings.s3))
            queue = await stack.enter_async_context(open_queue(settings.s3, settings.imports.queue_url))
            in_child = settings.imports.worker_processes
            imports = await platform.start_imports_server(
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
                platform.grpc_channel(_require(settings.schema_address, "DCP_SCHEMA_ADDRESS", service))
            )
            aliases: aio.Channel | None = None
            export_store: ObjectStore | None = None
            if service == "profiles":
                aliases = await stack.enter_async_context(
                    platform.grpc_channel(_require(settings.aliases_address, "DCP_ALIASES_ADDRESS", service))
                )
                # Exports are written to the upload bucket.
                export_store = await stack.enter_async_context(platform.upload_store(settings.s3))
            server = await platform.start_remote_server(
                settings, pool, signer, service, schema_channel=schema, aliases_channel=aliases, store=export_store
            )
        await server.mark_serving()
        server.watch_database(
            pool, interval=settings.db_health_interval_seconds, timeout=settings.db_health_timeout_seconds
        )
        print(f"{service} service serving gRPC on {settings.grpc_host}:{server.port}", flush=True)
        await wait_for_stop_signal()
        await (stop or server.stop)(settings.shutdown_grace_seconds)


async def _with_credentials(settings: Settings, action: Callable[[platform.SchemaParts], Awaitable[None]]) -> None:
    with platform.database_url(settings) as url:
        async with platform.opened_pool(url, settings.with_overrides(db_pool_min_size=0, db_pool_max_size=2)) as pool:
            await platform.migrate_all(pool)
            await action(platform.schema_parts(settings, pool))


async def _migrate(settings: Settings) -> None:
    with platform.database_url(settings) as url:
        async with platform.opened_pool(url, settings.with_overrides(db_pool_min_size=0, db_pool_max_size=2)) as pool:
            applied = await platform.migrate_all(pool)
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
    from_data_dir = settings.secrets_key is None
    settings = platform.with_secrets_key(settings, allow_generated=True, create=False)
    path = settings.data_dir / platform.SECRETS_KEY_FILE
    if settings.secrets_key is None:
        raise SystemExit(
            f"dcp secrets rotate needs the current key: set DCP_SECRETS_KEY (`dcp up` keeps its own in {path})"
        )
    new_text = _read_new_key(key_file)
    new = SecretsKey.parse(new_text, source="the new key")
    with platform.database_url(settings) as url:
        async with platform.opened_pool(url, settings.with_overrides(db_pool_min_size=0, db_pool_max_size=2)) as pool:
            await platform.migrate_all(pool)
            rotation = await platform.schema_parts(settings, pool).secrets.rotate(new, batch_size=batch_size)
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


def _batch_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcp", description="Open DCP: self-hostable Dynamic Customer Profiles.")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--data-dir", help="embedded database and first token (default: DCP_DATA_DIR)")
        return sub

    up = with_data_dir(commands.add_parser("up", help="run every service and the gateway in one process"))
    up.add_argument("--http-port", type=int, help="REST port (default: DCP_HTTP_PORT or 8080)")
    up.add_argument("--grpc-port", type=int, help="gRPC port (default: DCP_GRPC_PORT or 50051)")
    serve = commands.add_parser("serve", help="run one service alone (Kubernetes)")
    serve.add_argument("service", choices=platform.SERVICES)
    commands.add_parser(
        "import-worker",
        help="apply uploaded files; started by `dcp up` and `dcp serve imports` as their child process",
    )
    with_data_dir(commands.add_parser("migrate", help="apply database migrations"))

    accounts = commands.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", required=True)
    with_data_dir(accounts.add_parser("create", help="create an account")).add_argument("name")
    with_data_dir(accounts.add_parser("list", help="list accounts"))

    tokens = commands.add_parser("tokens", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = with_data_dir(tokens.add_parser("create", help="issue a token; it is shown once"))
    create.add_argument("--account", type=int, required=True, help="account id")
    create.add_argument("--kind", default="classic", choices=("classic", "personal"))
    create.add_argument("--label", help="what the token is for")
    revoke = with_data_dir(tokens.add_parser("revoke", help="revoke a token"))
    revoke.add_argument("token_id", type=int)
    listing = with_data_dir(tokens.add_parser("list", help="list an account's tokens"))
    listing.add_argument("--account", type=int, required=True)

    sealing = commands.add_parser("secrets", help="the key that seals S3 secret keys in the database")
    sealing_actions = sealing.add_subparsers(dest="action", required=True)
    sealing_actions.add_parser("new-key", help="print a fresh key for DCP_SECRETS_KEY")
    rotate = with_data_dir(
        sealing_actions.add_parser(
            "rotate", help="seal every stored S3 secret key with a new key, read from standard input"
        )
    )
    rotate.add_argument("--new-key-file", help="read the new key from this file instead")
    rotate.add_argument(
        "--batch-size", type=_batch_size, default=BATCH_SIZE, help=f"rows per transaction (default {BATCH_SIZE})"
    )
    return parser


async def _run(options: argparse.Namespace) -> None:
    settings = _settings(options)
    if options.command in ("up", "serve", "import-worker"):
        logs.configure(log_format=settings.log_format, level=settings.log_level)
    if options.command == "up":
        async with tracing.traced(settings, "dcp"):
            await _up(settings)
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
    elif options.command == "import-worker":
        async with tracing.traced(settings, "dcp-import-worker"):
            await import_worker.run_import_worker(settings)
    elif options.command == "migrate":
        await _migrate(settings)
    elif options.command == "accounts":

        async def accounts_action(parts: platform.SchemaParts) -> None:
            if options.action == "create":
                account = await parts.credentials.create_account(options.name)
                print(f"account {account.id} created: {account.name}")
            else:
                for account in await parts.credentials.list_accounts():
                    print(f"{account.id}\t{account.name}\t{account.created.isoformat()}")

        await _with_credentials(settings, accounts_action)
    elif options.command == "tokens":

        async def tokens_action(parts: platform.SchemaParts) -> None:
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


def main(argv: list[str] | None = None) -> None:
    options = _parser().parse_args(argv)
    try:
        asyncio.run(_run(options))
    except DcpError as error:
        details = "; ".join(f"{field}: {reason}" for field, reason in error.violations)
        raise SystemExit(f"dcp: {error.message}{' (' + details + ')' if details else ''}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
