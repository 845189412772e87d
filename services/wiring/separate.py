"""What `dcp serve <service>` runs: one service alone, reaching the others over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from grpc import aio

from dcp.aliases.v1 import aliases_service_pb2_grpc
from dcp.schema.v1 import schema_service_pb2_grpc
from services._runtime.auth import CallerResolver
from services._runtime.identity import AssertionSigner
from services._runtime.s3 import ObjectStore
from services._runtime.server import RunningServer, ServiceBinding, build_server
from services._runtime.settings import Settings
from services.aliases import repository as aliases_repository
from services.aliases import servicer as aliases_servicer
from services.aliases.aliases import Aliases
from services.aliases.client import AliasesClient
from services.imports import servicer as imports_servicer
from services.profiles import repository as profiles_repository
from services.profiles.exports import Exports
from services.profiles.links import AskedLinks
from services.schema.client import RegistryClient, RemoteAuthenticator
from services.schema.credentials import Credentials
from services.schema.keys import KeyIssuer
from services.wiring.parts import (
    ImportParts,
    import_parts,
    profiles_parts,
    remote_merger,
    schema_bindings,
    schema_parts,
)


async def start_grpc(
    settings: Settings, bindings: Sequence[ServiceBinding], credentials: Credentials, signer: AssertionSigner
) -> RunningServer:
    resolver = CallerResolver(signer, credentials)
    return await build_server(bindings, resolver=resolver, address=f"{settings.grpc_host}:{settings.grpc_port}")


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
            linked=AskedLinks(lookup, profiles_repository.ProfilesRepository(pool)),
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
        settings,
        pool,
        signer,
        store,
        schema_channel=schema_channel,
        merger=remote_merger(profiles_channel, signer),
        queue=queue,
    )
    authenticator = RemoteAuthenticator(schema_service_pb2_grpc.AuthServiceStub(schema_channel))
    server = await build_server(
        imports_servicer.bindings(parts.history),
        resolver=CallerResolver(signer, authenticator),
        address=f"{settings.grpc_host}:{settings.grpc_port}",
    )
    worker = asyncio.create_task(parts.worker.run(), name="imports-worker") if import_worker else None
    return RunningImports(server, parts, worker)
