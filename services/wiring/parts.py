"""Each service's pieces, built from settings and the clients of what it talks to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from grpc import aio

from dcp.profiles.v1 import profiles_service_pb2_grpc
from dcp.schema.v1 import schema_service_pb2_grpc
from services._runtime import metrics
from services._runtime.auth import CallerResolver, OAuthVerifier
from services._runtime.identity import AssertionSigner
from services._runtime.interceptors import HandledReport
from services._runtime.local_calls import LocalCalls
from services._runtime.s3 import ObjectStore
from services._runtime.server import ServiceBinding
from services._runtime.settings import Settings
from services.domain.batches import BatchMerger
from services.imports import repository as imports_repository
from services.imports.checking import FileChecker
from services.imports.intake import Intake
from services.imports.processing import Importer
from services.imports.uploads import TableDirectory, UploadHistory
from services.imports.worker import ImportWorker
from services.profiles import repository as profiles_repository
from services.profiles import servicer as profiles_servicer
from services.profiles.client import LocalBatchMerger, RemoteBatchMerger
from services.profiles.export_repository import ExportsRepository
from services.profiles.exports import Exports
from services.profiles.membership import Membership
from services.profiles.profiles import LinkedProfiles, Profiles
from services.profiles.targeting import Targeting
from services.schema import repository as schema_repository
from services.schema import servicer as schema_servicer
from services.schema.audience_client import AudienceDirectory
from services.schema.audiences import Audiences
from services.schema.catalog import Catalog
from services.schema.client import ImportTargetsClient, RegistryClient
from services.schema.credentials import Credentials
from services.schema.keys import KeyIssuer
from services.schema.sealing import Keyring
from services.schema.stored_secrets import StoredSecrets


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
    linked: LinkedProfiles,
) -> ProfilesParts:
    """`linked` is how the consolidated view reaches the aliases service's links (see `services.profiles.links`)."""
    profiles = Profiles(profiles_repository.ProfilesRepository(pool), registry, linked)
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
    merger: BatchMerger,
    queue: Any = None,
    on_finished: Callable[..., None] = metrics.import_finished,
) -> ImportParts:
    """`merger` hands rows to the profiles service: `remote_merger` or `colocated_merger`."""
    schema_stub = schema_service_pb2_grpc.SchemaServiceStub(schema_channel)
    registry = RegistryClient(schema_stub, signer, ttl_seconds=settings.registry_cache_seconds)
    repository = imports_repository.ImportsRepository(pool)
    importer = Importer(store, registry, merger, settings.imports)
    intake = Intake(store, repository, ImportTargetsClient(schema_stub, signer))
    worker = ImportWorker(intake, importer, repository, store, settings.imports, queue=queue, on_finished=on_finished)
    # Files posted to `validate` are checked in worker processes when the worker runs in one too.
    checker = FileChecker(registry, settings.imports) if settings.imports.worker_processes else None
    history = UploadHistory(repository, TableDirectory(schema_stub, signer).owned_table, store, checker or importer)
    return ImportParts(history, worker, checker)


def remote_merger(profiles_channel: aio.Channel, signer: AssertionSigner) -> BatchMerger:
    """The batch merge of a profiles service in another process."""
    return RemoteBatchMerger(profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel), signer)


def colocated_merger(
    profiles: Profiles, resolver: CallerResolver, signer: AssertionSigner, *, on_handled: HandledReport | None = None
) -> BatchMerger:
    """The batch merge of the profiles domain in this process, handled as a call of its gRPC server.

    `resolver` is the one that server verifies callers with; `on_handled`
    hears each finished call when the server's metrics are kept elsewhere.
    """
    return LocalBatchMerger(profiles, LocalCalls(resolver, signer, on_handled=on_handled))
