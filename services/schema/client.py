"""What other services need of the registry, fetched over gRPC and cached briefly.

Profiles and aliases check every request against a service's tables and
attributes. Asking the schema service each time would double the latency of a
profile read, so a snapshot per (account, service) is kept for at most
`ttl_seconds` (one second by default): an archived attribute or table is
refused within that time, and a name or stored attribute id the snapshot does
not know triggers one immediate refresh, so a newly registered attribute is
writable and readable at once on every replica.

A snapshot's age counts from when its fetch began, since it can miss any
change made after that moment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

import grpc

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.caching import REFRESH_AHEAD, Fetches, joined
from services._runtime.calls import relayed
from services._runtime.errors import DcpError, NotFound
from services._runtime.identity import (
    AssertionSigner,
    CredentialKind,
    Identity,
    Scope,
    internal_identity,
)
from services._runtime.interceptors import REQUEST_ID_METADATA_KEY, outgoing_metadata, request_id
from services._runtime.paging import all_pages
from services.domain.catalog import DEFAULT_BLOCKED_CUSTOMER_IDS, ActiveAttribute, ServiceSnapshot, TableInfo
from services.domain.datatypes import AttributeSpec, Datatype, DatetimeFormat

DATATYPE_FROM_PROTO = {resources_pb2.Datatype.Value(f"DATATYPE_{kind.name}"): kind for kind in Datatype}
"""The wire's datatype enum and the domain's, paired by name, so a new datatype needs no mapping of its own."""
DATATYPE_TO_PROTO = {kind: number for number, kind in DATATYPE_FROM_PROTO.items()}
FORMAT_FROM_PROTO = {
    resources_pb2.DatetimeFormat.Value(f"DATETIME_FORMAT_{kind.name}"): kind for kind in DatetimeFormat
}
FORMAT_TO_PROTO = {kind: number for number, kind in FORMAT_FROM_PROTO.items()}
_LOCATORS = {
    resources_pb2.LOCATOR_TYPE_COOKIE: "cookie",
    resources_pb2.LOCATOR_TYPE_QUERY_PARAMETER: "query parameter",
    resources_pb2.LOCATOR_TYPE_JS_VARIABLE: "js_variable",
    resources_pb2.LOCATOR_TYPE_UID: "uid",
}


def _table_info(table: resources_pb2.Table) -> TableInfo:
    active = [
        ActiveAttribute(
            id=a.id,
            spec=AttributeSpec(
                name=a.name, datatype=DATATYPE_FROM_PROTO[a.datatype], format=FORMAT_FROM_PROTO.get(a.format)
            ),
        )
        for a in table.attributes
        if not a.archived
    ]
    return TableInfo(
        id=table.id,
        name=table.name,
        archived=table.archived,
        is_optimizely=table.is_optimizely,
        locator_type=_LOCATORS.get(table.keyfield_locator_type, "uid"),
        locator_name=table.keyfield_locator_name if table.HasField("keyfield_locator_name") else None,
        by_name={a.spec.name: a for a in active},
        by_id={a.id: a for a in active},
        known_keys=frozenset(str(a.id) for a in table.attributes),
        import_mode=_IMPORT_MODES.get(table.import_mode, "partial"),
    )


def table_info_from_proto(table: resources_pb2.Table) -> TableInfo:
    """A table as profiles, aliases and imports see it."""
    return _table_info(table)


class RegistryClient:
    """Cached, per-account snapshots of DCP services, from the schema service."""

    def __init__(
        self,
        stub: schema_service_pb2_grpc.SchemaServiceAsyncStub,
        signer: AssertionSigner,
        *,
        ttl_seconds: float = 1.0,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._ttl = ttl_seconds
        self._snapshots: dict[tuple[int, int], ServiceSnapshot] = {}
        self._fetches: Fetches[tuple[int, int], ServiceSnapshot] = Fetches()

    async def service(self, identity: Identity, service_id: int, *, max_age: float | None = None) -> ServiceSnapshot:
        """The service's snapshot, no older than `max_age` (default: the TTL)."""
        key = (identity.account_id, service_id)
        limit = self._ttl if max_age is None else max_age
        now = time.monotonic()
        cached = self._snapshots.get(key)
        if cached is not None and now - cached.fetched_at <= limit:
            if max_age is None and now - cached.fetched_at > limit * REFRESH_AHEAD and not self._fetches.running(key):
                # Fetched again while this one still serves: steady traffic never waits for a snapshot.
                self._fetch_in_background(key, identity, service_id, now)
            return cached
        # A caller that needs a newer look than the one in flight starts its own.
        pending = self._fetches.current(key, started_after=now - limit) or self._fetch_in_background(
            key, identity, service_id, now
        )
        return await joined(pending)

    def _fetch_in_background(
        self, key: tuple[int, int], identity: Identity, service_id: int, started_at: float
    ) -> asyncio.Future[ServiceSnapshot]:
        return self._fetches.start(
            key, self._fetch_and_keep(key, identity, service_id, started_at), started_at=started_at
        )

    async def _fetch_and_keep(
        self, key: tuple[int, int], identity: Identity, service_id: int, started_at: float
    ) -> ServiceSnapshot:
        snapshot = await self._fetch(identity, service_id, started_at=started_at)
        newest = self._snapshots.get(key)
        if newest is not None and newest.tables == snapshot.tables:
            # Unchanged tables stay the same object, so what was worked out from them (an audience's
            # compiled conditions) is known to still hold without comparing them again.
            snapshot = dataclasses.replace(snapshot, tables=newest.tables)
        if newest is None or newest.fetched_at <= snapshot.fetched_at:
            self._snapshots[key] = snapshot
        return snapshot

    async def service_of_table(self, identity: Identity, table_id: int) -> int:
        """The DCP service a table belongs to; NOT_FOUND for a table of no service of the caller's."""
        try:
            table = await self._stub.GetTable(
                schema_service_pb2.GetTableRequest(dcp_datasource_id=table_id),
                metadata=outgoing_metadata(self._signer, identity),
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema", instead={grpc.StatusCode.NOT_FOUND: missing_table(table_id)}) from None
        return table.dcp_service_id

    async def fresh_service(self, identity: Identity, service_id: int) -> ServiceSnapshot:
        """A snapshot fetched now: for names the cached one does not know."""
        return await self.service(identity, service_id, max_age=0.0)

    async def _fetch(self, identity: Identity, service_id: int, *, started_at: float) -> ServiceSnapshot:
        metadata = outgoing_metadata(self._signer, identity)
        try:
            service = await self._stub.GetDcpService(
                schema_service_pb2.GetDcpServiceRequest(dcp_service_id=service_id), metadata=metadata
            )
            tables: dict[int, TableInfo] = {}
            async for page in all_pages(
                lambda token: self._stub.ListTables(
                    schema_service_pb2.ListTablesRequest(dcp_service_id=service_id, page_size=1000, page_token=token),
                    metadata=metadata,
                )
            ):
                tables.update((t.id, _table_info(t)) for t in page.tables)
        except grpc.aio.AioRpcError as error:
            missing = NotFound(
                f"DCP service {service_id} does not exist", metadata={"resource": "DCP service", "id": str(service_id)}
            )
            raise relayed(error, "schema", instead={grpc.StatusCode.NOT_FOUND: missing}) from None
        optimizely = next((t.id for t in tables.values() if t.is_optimizely), 0)
        return ServiceSnapshot(
            id=service.id,
            account_id=service.account_id,
            archived=service.archived,
            tables=tables,
            fetched_at=started_at,
            optimizely_table_id=optimizely,
            pii_guard=service.guards.pii_guard if service.guards.HasField("pii_guard") else True,
            alias_blocked_customer_ids=frozenset(service.guards.alias_blocked_customer_ids)
            if service.HasField("guards")
            else frozenset(DEFAULT_BLOCKED_CUSTOMER_IDS),
            alias_max_users_per_customer_id=service.guards.alias_max_users_per_customer_id or 100,
        )


def missing_table(table_id: int) -> NotFound:
    """NOT_FOUND for a table id the caller sent: the schema service's own answer may name another resource."""
    return NotFound(f"table {table_id} does not exist", metadata={"resource": "table", "id": str(table_id)})


class RemoteAuthenticator:
    """Verifies credentials through the schema service's AuthService (for services in other processes)."""

    def __init__(self, stub: schema_service_pb2_grpc.AuthServiceAsyncStub) -> None:
        self._stub = stub

    async def authenticate(self, token: str) -> Identity:
        try:
            response = await self._stub.Authenticate(
                schema_service_pb2.AuthenticateRequest(token=token),
                metadata=((REQUEST_ID_METADATA_KEY, request_id.get()),),
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        identity = response.identity
        return Identity(
            account_id=identity.account_id,
            scopes=frozenset(Scope(s) for s in identity.scopes),
            credential_kind=CredentialKind(identity.credential_kind),
            subject=identity.subject,
        )


@dataclass(frozen=True)
class ImportTarget:
    """A table that uploaded files may be meant for, whichever account owns it."""

    table_id: int
    service_id: int
    account_id: int
    s3_path: str
    """"dcp/{service_id}/{table_id}": the prefix its files arrive under."""
    import_mode: str
    """"partial" or "all_or_nothing"."""
    archived: bool
    """The table or its service is archived."""


# An unset mode comes from a schema service older than the setting, which
# applied every file partially.
_IMPORT_MODES = {
    resources_pb2.IMPORT_MODE_UNSPECIFIED: "partial",
    resources_pb2.IMPORT_MODE_PARTIAL: "partial",
    resources_pb2.IMPORT_MODE_ALL_OR_NOTHING: "all_or_nothing",
}


class ImportTargetsClient:
    """Every account's tables, for the imports service to map uploaded files to."""

    def __init__(
        self,
        stub: schema_service_pb2_grpc.SchemaServiceAsyncStub,
        signer: AssertionSigner,
        *,
        subject: str = "imports",
        page_size: int = 5000,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._identity = internal_identity(subject)
        self._page_size = page_size

    async def all(self) -> list[ImportTarget]:
        """Every table, archived ones included, in id order."""
        targets: list[ImportTarget] = []
        try:
            async for page in all_pages(
                lambda token: self._stub.ListImportTargets(
                    schema_service_pb2.ListImportTargetsRequest(page_size=self._page_size, page_token=token),
                    # Signed per page: a long listing must not outlive its assertion.
                    metadata=outgoing_metadata(self._signer, self._identity),
                )
            ):
                targets.extend(_import_target(t) for t in page.targets)
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        return targets


def _import_target(message: schema_service_pb2.ImportTarget) -> ImportTarget:
    mode = _IMPORT_MODES.get(message.import_mode)
    if mode is None:
        # Guessing could store rows the table's owner asked to keep out.
        raise DcpError(f"table {message.dcp_datasource_id} has import mode {message.import_mode}, unknown here")
    return ImportTarget(
        table_id=message.dcp_datasource_id,
        service_id=message.dcp_service_id,
        account_id=message.account_id,
        s3_path=message.s3_path,
        import_mode=mode,
        archived=message.archived,
    )
