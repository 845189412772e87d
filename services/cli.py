"""The `dcp` command: run the platform, one service, migrations, accounts and tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from grpc import aio

from gateway.app import GatewayClients
from services import platform
from services._runtime import logs, metrics, tracing
from services._runtime.errors import DcpError
from services._runtime.s3 import ObjectStore, open_queue
from services._runtime.server import wait_for_stop_signal
from services._runtime.settings import S3Settings, Settings
from services.schema.credentials import parse_token_kind
from services.schema.keys import key_issuer


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
    with platform.database(settings) as (url, embedded):
        async with platform.opened_pool(url, settings) as pool, platform.restarting(embedded):
            await platform.migrate_all(pool)
            parts = platform.schema_parts(settings, pool)
            first_token = await platform.ensure_first_account(parts.credentials, settings.data_dir)
            signer = platform.identity_signer(settings, allow_generated=True)
            async with (
                platform.upload_store(settings.s3, embedded=True) as (store, s3),
                open_queue(s3, settings.imports.queue_url) as queue,
                key_issuer(s3) as keys,
            ):
                suite = await platform.start_suite(settings, pool, signer, store=store, queue=queue, keys=keys)
                await _serve_suite(settings, suite, s3, first_token)


async def _serve_suite(settings: Settings, suite: platform.Suite, s3: S3Settings, first_token: str | None) -> None:
    try:
        print(f"Open DCP is running (data dir {settings.data_dir})", flush=True)
        print(f"  REST: {suite.http_url}/experiment/v1/ and {suite.http_url}/api/", flush=True)
        print(f"  gRPC: {suite.grpc_address}", flush=True)
        database = "DCP_DATABASE_URL" if settings.database_url else "embedded PostgreSQL"
        print(f"  database: {database}", flush=True)
        if settings.s3.endpoint_url is None:
            print(f"  S3: embedded, {s3.endpoint_url} bucket {s3.bucket} (objects live in memory)", flush=True)
            print(f"    access key {s3.access_key_id}  secret {s3.secret_access_key}", flush=True)
        else:
            print(f"  S3: {s3.endpoint_url} bucket {s3.bucket}", flush=True)
        if first_token:
            print(f"  first account 'default' created; its classic token (also in {settings.data_dir / 'token'}):")
            print(f"    {first_token}", flush=True)
        await wait_for_stop_signal()
        print("stopping...", flush=True)
    finally:
        await suite.stop(settings.shutdown_grace_seconds)


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
            store, _ = await stack.enter_async_context(platform.upload_store(settings.s3, embedded=False))
            queue = await stack.enter_async_context(open_queue(settings.s3, settings.imports.queue_url))
            imports = await platform.start_imports_server(
                settings, pool, signer, store, schema_channel=schema, profiles_channel=profiles, queue=queue
            )
            server = imports.server
            stop = imports.stop
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
                export_store, _ = await stack.enter_async_context(platform.upload_store(settings.s3, embedded=False))
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
    return parser


async def _run(options: argparse.Namespace) -> None:
    settings = _settings(options)
    if options.command in ("up", "serve"):
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
