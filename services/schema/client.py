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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
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
from services.profiles.validation import AttributeSpec

_DATATYPES = {
    resources_pb2.DATATYPE_STRING: "string",
    resources_pb2.DATATYPE_BOOL: "bool",
    resources_pb2.DATATYPE_LONG: "long",
    resources_pb2.DATATYPE_DOUBLE: "double",
    resources_pb2.DATATYPE_DATETIME: "datetime",
}
_FORMATS = {
    resources_pb2.DATETIME_FORMAT_DATE: "yyyy-mm-dd",
    resources_pb2.DATETIME_FORMAT_DATETIME: "yyyy-mm-ddThh:mm:ssZ",
    resources_pb2.DATETIME_FORMAT_EPOCH: "epoch",
}
_LOCATORS = {
    resources_pb2.LOCATOR_TYPE_COOKIE: "cookie",
    resources_pb2.LOCATOR_TYPE_QUERY_PARAMETER: "query parameter",
    resources_pb2.LOCATOR_TYPE_JS_VARIABLE: "js_variable",
    resources_pb2.LOCATOR_TYPE_UID: "uid",
}


DEFAULT_BLOCKED_CUSTOMER_IDS = frozenset({"", "null", "undefined", "0", "anonymous"})


@dataclass(frozen=True)
class ActiveAttribute:
    id: int
    spec: AttributeSpec


@dataclass(frozen=True)
class TableInfo:
    """A table as profiles and aliases see it: its locator and active attributes."""

    id: int
    name: str
    archived: bool
    is_optimizely: bool
    locator_type: str
    locator_name: str | None
    by_name: Mapping[str, ActiveAttribute]
    by_id: Mapping[int, ActiveAttribute]
    known_keys: frozenset[str] = frozenset()
    """Every attribute id of the table as stored profiles key it, archived ones included."""
    import_mode: str = "partial"
    """How an uploaded file with bad rows is applied: "partial" or "all_or_nothing"."""

    def knows_all(self, stored_keys: Iterable[str]) -> bool:
        """Whether every stored attribute key was registered before this snapshot."""
        return self.known_keys.issuperset(stored_keys)


@dataclass(frozen=True)
class ServiceSnapshot:
    """One DCP service's tables, as of `fetched_at` (monotonic seconds)."""

    id: int
    account_id: int
    archived: bool
    tables: Mapping[int, TableInfo]
    fetched_at: float
    optimizely_table_id: int = field(default=0)
    pii_guard: bool = True
    """Refuse values that look like personal data."""
    alias_blocked_customer_ids: frozenset[str] = DEFAULT_BLOCKED_CUSTOMER_IDS
    """Lower-cased placeholder values that are never linked."""
    alias_max_users_per_customer_id: int = 100
    """How many Optimizely users one customer id may link to."""

    def table(self, table_id: int) -> TableInfo:
        """The table, or NOT_FOUND when it is not one of this service's."""
        info = self.tables.get(table_id)
        if info is None:
            raise NotFound(
                f"table {table_id} does not exist in DCP service {self.id}",
                metadata={"resource": "table", "id": str(table_id)},
            )
        return info


def _table_info(table: resources_pb2.Table) -> TableInfo:
    active = [
        ActiveAttribute(
            id=a.id,
            spec=AttributeSpec(name=a.name, datatype=_DATATYPES[a.datatype], format=_FORMATS.get(a.format)),
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
        self._refreshing: dict[tuple[int, int], tuple[float, asyncio.Future[ServiceSnapshot]]] = {}

    async def service(self, identity: Identity, service_id: int, *, max_age: float | None = None) -> ServiceSnapshot:
        """The service's snapshot, no older than `max_age` (default: the TTL)."""
        key = (identity.account_id, service_id)
        limit = self._ttl if max_age is None else max_age
        now = time.monotonic()
        cached = self._snapshots.get(key)
        if cached is not None and now - cached.fetched_at <= limit:
            return cached
        pending = self._refreshing.get(key)
        if pending is not None and now - pending[0] <= limit:
            return await asyncio.shield(pending[1])
        # One fetch per service at a time, however many requests are waiting;
        # a caller that needs a newer look than the one in flight starts its own.
        future: asyncio.Future[ServiceSnapshot] = asyncio.get_running_loop().create_future()
        self._refreshing[key] = (now, future)
        try:
            snapshot = await self._fetch(identity, service_id, started_at=now)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here, so an unawaited future never warns
            raise
        else:
            future.set_result(snapshot)
            newest = self._snapshots.get(key)
            if newest is None or newest.fetched_at <= snapshot.fetched_at:
                self._snapshots[key] = snapshot
            return snapshot
        finally:
            if self._refreshing.get(key, (0.0, None))[1] is future:
                del self._refreshing[key]

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
            else DEFAULT_BLOCKED_CUSTOMER_IDS,
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
