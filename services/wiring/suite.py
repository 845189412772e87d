"""What each serving process of `dcp up` runs: every service on one gRPC server, and the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc import aio
from starlette.requests import Request
from starlette.responses import Response

from dcp.schema.v1 import schema_service_pb2_grpc
from gateway.app import GatewayClients
from services._runtime import tracing
from services._runtime.auth import CallerResolver
from services._runtime.identity import AssertionSigner
from services._runtime.in_process import InProcessChannel
from services._runtime.interceptors import ServerInterceptor
from services._runtime.ports import PortSharing
from services._runtime.s3 import ObjectStore
from services._runtime.server import RunningServer, prepare_server
from services._runtime.settings import S3Settings, Settings
from services.aliases import repository as aliases_repository
from services.aliases import servicer as aliases_servicer
from services.aliases.aliases import Aliases
from services.imports import servicer as imports_servicer
from services.profiles import repository as profiles_repository
from services.profiles.exports import Exports
from services.profiles.links import PublishedLinks
from services.profiles.profiles import Profiles
from services.profiles.targeting import Targeting
from services.schema.client import RegistryClient
from services.schema.keys import KeyIssuer
from services.wiring.gateway import RunningGateway, start_gateway
from services.wiring.parts import (
    ImportParts,
    SchemaParts,
    colocated_merger,
    import_parts,
    profiles_parts,
    schema_bindings,
    schema_parts,
)


@dataclass
class Suite:
    """Every service in one process on one gRPC port, and optionally the gateway."""

    grpc: RunningServer
    grpc_address: str
    channel: aio.Channel
    in_process: InProcessChannel
    """What the gateway and the services here call each other through, without the wire."""
    schema: SchemaParts
    profiles: Profiles
    aliases: Aliases
    gateway: RunningGateway | None
    targeting: Targeting | None = None
    exports: Exports | None = None
    worker: asyncio.Task[None] | None = None
    export_runner: asyncio.Task[None] | None = None
    imports: ImportParts | None = None
    private_dir: Path | None = None
    """Holds the socket of the server's private listener, when its port is shared."""

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
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def _dial_address(host: str, port: int) -> str:
    # A wildcard listener is reached through loopback from inside the process.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    sharing: PortSharing = PortSharing.ALONE,
    once_only: bool = True,
    metrics_endpoint: Callable[[Request], Awaitable[Response]] | None = None,
) -> Suite:
    """Starts every service on one server, wired to each other through it.

    Without a store the imports service is left out: nothing else needs S3.
    Without `import_worker` no upload is applied here: a worker process does it.
    With `sharing`, other serving processes listen on the same ports; the
    services here and the gateway then call this process's own server through a
    private listener, never a sibling through the shared port. `once_only` work
    (sealing stored secrets, taking over unfinished exports) is for one process
    of the platform.
    """
    parts = schema_parts(settings, pool, keys)
    if once_only:
        await parts.secrets.seal_at_start()
    resolver = CallerResolver(signer, parts.credentials)
    private_dir = Path(tempfile.mkdtemp(prefix="dcp-")) if sharing.reuse_port else None
    try:
        prepared = prepare_server(
            resolver=resolver,
            address=f"{settings.grpc_host}:{settings.grpc_port}",
            sharing=sharing,
            private_address=None if private_dir is None else f"unix:{private_dir / 'grpc.sock'}",
        )
    except BaseException:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
        raise
    address = _dial_address(settings.grpc_host, prepared.port)
    own_address = address if private_dir is None else f"unix:{private_dir / 'grpc.sock'}"
    channel = grpc.aio.insecure_channel(own_address, interceptors=tracing.client_interceptors())
    # The gateway and the services call each other here without the wire, handled as the server handles calls.
    in_process = InProcessChannel(channel, ServerInterceptor(resolver))
    try:
        schema_stub = schema_service_pb2_grpc.SchemaServiceStub(in_process)
        registry = RegistryClient(schema_stub, signer, ttl_seconds=settings.registry_cache_seconds)
        aliases = Aliases(aliases_repository.AliasesRepository(pool), registry)
        # On one database the consolidated view reads links and profiles in one query.
        linked = PublishedLinks(profiles_repository.ProfilesRepository(pool))
        profile_parts = profiles_parts(
            settings, pool, signer, store, schema_stub=schema_stub, registry=registry, linked=linked
        )
        imports = (
            import_parts(
                settings,
                pool,
                signer,
                store,
                schema_channel=channel,
                # Rows reach the profiles domain as they are, through the server's call handling.
                merger=colocated_merger(profile_parts.profiles, resolver, signer),
                queue=queue,
            )
            if store is not None
            else None
        )
        bindings = [
            *schema_bindings(parts, signer),
            *profile_parts.bindings(),
            *aliases_servicer.bindings(aliases),
            *(imports_servicer.bindings(imports.history) if imports is not None else []),
        ]
        server = await prepared.start(bindings)
        for binding in bindings:
            in_process.serve(binding.register)
        gateway = (
            await start_gateway(
                settings,
                GatewayClients.over(in_process),
                store_for_console=store_for_console,
                sharing=sharing,
                metrics_endpoint=metrics_endpoint,
            )
            if with_gateway
            else None
        )
    except BaseException:
        await prepared.server.stop(None)
        await channel.close(grace=None)
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
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
        export_runner=asyncio.create_task(profile_parts.exports.run(), name="export-runner") if once_only else None,
        grpc=server,
        grpc_address=address,
        channel=channel,
        schema=parts,
        profiles=profile_parts.profiles,
        aliases=aliases,
        gateway=gateway,
        in_process=in_process,
        private_dir=private_dir,
    )
