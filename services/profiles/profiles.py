"""Profile rules: reads, partial merges, erasure, batch merges, the consolidated view."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from services._runtime.errors import InvalidArgument, NotFound
from services._runtime.identity import Identity
from services.domain.batches import (
    MAX_BATCH_ERRORS,
    BatchChunk,
    BatchHeader,
    BatchResult,
    ProgressReport,
    RowChecker,
    Values,
    check_batch,
    refuse_archived,
    table_key_hint,
    text_columns,
)
from services.domain.catalog import ServiceSnapshot, TableInfo
from services.domain.customer_ids import customer_id_problem
from services.domain.values import validate_update
from services.profiles.repository import ProfilesRepository
from services.schema.client import RegistryClient

MAX_KEYS_PER_WRITE = 1000
MAX_BATCH_READ = 1000


class ProfileView(NamedTuple):
    """One customer's values in one table, by attribute name in registration order."""

    # A named tuple rather than a frozen dataclass: a view is built per profile answered, four per
    # consolidated read, and a frozen dataclass sets each field through object.__setattr__.

    dcp_service_id: int
    datasource_id: int
    customer_id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class LinkedValues:
    """An Optimizely user's links and the stored values of the profiles they name."""

    links: Mapping[int, str]
    """Table id -> the customer id linked to the user in that table."""
    stored: Mapping[tuple[int, str], Values]
    """Values by (table id, customer id) of the user's Optimizely-table profile and of
    every linked profile that has any; pairs of tables the view leaves out may be there too."""


class LinkedProfiles(Protocol):
    """Where the consolidated view finds a user's links (the aliases service's) and their profiles."""

    async def linked(
        self, identity: Identity, service_id: int, optimizely_table_id: int, optimizely_user_id: str
    ) -> LinkedValues: ...


def _readable(table: TableInfo, stored: Values) -> dict[str, Any]:
    """Stored values of active attributes, by name, in registration order."""
    return {name: stored[key] for key, name in table.shown if key in stored}


class Profiles:
    def __init__(self, repository: ProfilesRepository, registry: RegistryClient, linked: LinkedProfiles) -> None:
        self._repo = repository
        self._registry = registry
        self._linked = linked

    async def _table(self, identity: Identity, service_id: int, table_id: int) -> tuple[ServiceSnapshot, TableInfo]:
        service = await self._registry.service(identity, service_id)
        if table_id not in service.tables:
            # A table created a moment ago may not be in the cached snapshot yet.
            service = await self._registry.fresh_service(identity, service_id)
        return service, service.table(table_id)

    async def _reading(
        self, identity: Identity, service: ServiceSnapshot, stored: Iterable[tuple[int, Values]]
    ) -> ServiceSnapshot:
        """The snapshot to read stored values with: a fresh one when they name attributes it has not seen.

        Another replica may have stored a value of an attribute registered after
        this snapshot was taken; hiding it until the snapshot expires would
        make a profile look different depending on which replica answers.
        """
        for table_id, values in stored:
            table = service.tables.get(table_id)
            if table is not None and not table.knows_all(values):
                return await self._registry.fresh_service(identity, service.id)
        return service

    async def get(self, identity: Identity, service_id: int, table_id: int, customer_id: str) -> ProfileView:
        service, _ = await self._table(identity, service_id, table_id)
        stored = await self._repo.get(table_id, customer_id) or {}
        service = await self._reading(identity, service, [(table_id, stored)])
        visible = _readable(service.table(table_id), stored)
        if not visible:
            raise NotFound(
                f"customer {customer_id!r} has no values in table {table_id}",
                metadata={"resource": "profile", "id": customer_id},
            )
        return ProfileView(service_id, table_id, customer_id, visible)

    async def get_many(
        self, identity: Identity, service_id: int, table_id: int, customer_ids: Sequence[str]
    ) -> list[ProfileView]:
        if len(customer_ids) > MAX_BATCH_READ:
            raise InvalidArgument.field("customer_ids", f"at most {MAX_BATCH_READ} per call, got {len(customer_ids)}")
        service, _ = await self._table(identity, service_id, table_id)
        stored = await self._repo.get_many([(table_id, c) for c in dict.fromkeys(customer_ids)])
        service = await self._reading(identity, service, [(table_id, values) for values in stored.values()])
        table = service.table(table_id)
        views = []
        for customer_id in dict.fromkeys(customer_ids):
            visible = _readable(table, stored.get((table_id, customer_id), {}))
            if visible:
                views.append(ProfileView(service_id, table_id, customer_id, visible))
        return views

    async def _writable_table(
        self, identity: Identity, service_id: int, table_id: int
    ) -> tuple[ServiceSnapshot, TableInfo]:
        service, table = await self._table(identity, service_id, table_id)
        refuse_archived(service, table)
        return service, table

    async def merge(
        self, identity: Identity, service_id: int, table_id: int, customer_id: str, data: Mapping[str, Any]
    ) -> ProfileView:
        if len(data) > MAX_KEYS_PER_WRITE:
            raise InvalidArgument.field("data", f"at most {MAX_KEYS_PER_WRITE} attributes per write, got {len(data)}")
        service, table = await self._writable_table(identity, service_id, table_id)
        problem = customer_id_problem(customer_id, pii_guard=service.pii_guard)
        if problem:
            raise InvalidArgument.field("customer_id", problem)
        if any(name not in table.by_name for name in data):
            # An attribute registered a moment ago is writable at once.
            service = await self._registry.fresh_service(identity, service_id)
            table = service.table(table_id)
        specs = {name: attribute.spec for name, attribute in table.by_name.items()}
        canonical = validate_update(specs, data, pii_guard=service.pii_guard, unknown_key=table_key_hint(table))
        changes = {str(table.by_name[name].id): value for name, value in canonical.items()}
        stored = await self._repo.merge(table_id, customer_id, changes)
        service = await self._reading(identity, service, [(table_id, stored)])
        return ProfileView(service_id, table_id, customer_id, _readable(service.table(table_id), stored))

    async def delete(self, identity: Identity, service_id: int, table_id: int, customer_id: str) -> None:
        await self._table(identity, service_id, table_id)
        await self._repo.delete(table_id, customer_id)

    async def merge_stream(
        self,
        identity: Identity,
        header: BatchHeader,
        chunks: AsyncIterator[BatchChunk],
        *,
        max_errors: int = MAX_BATCH_ERRORS,
        on_progress: ProgressReport | None = None,
    ) -> BatchResult:
        """Validates every row like a single write and merges the valid ones in one transaction.

        Rows are staged as they arrive, so memory stays flat however many come;
        `on_progress` hears the counts so far after each chunk.
        """
        # A batch is long enough that a fresh look at the registry costs nothing.
        service = await self._registry.fresh_service(identity, header.service_id)
        if header.validate_only:
            return await check_batch(service, header, chunks, max_errors=max_errors, on_progress=on_progress)
        table = service.table(header.table_id)
        refuse_archived(service, table)
        columns = text_columns(table, header.columns)
        rows = RowChecker(table, columns, pii_guard=service.pii_guard, max_errors=max_errors)
        async with self._repo.staged_merge(table.id, header.idempotency_key) as stage:
            async for chunk in chunks:
                rows.rejected_by_caller += chunk.rejected_by_caller
                staged = [*rows.typed(chunk.rows), *rows.text(chunk.text_rows)]
                # Once an all-or-nothing batch has a bad row, staging more is wasted work.
                if not (header.all_or_nothing and rows.any_rejected):
                    await stage.add(staged, clears=rows.cleared)
                if on_progress is not None:
                    on_progress(rows.progress())
            result = rows.result()
            if header.all_or_nothing and rows.any_rejected:
                result.rows_stored = 0
                return result
            await stage.apply(result.rows_stored)
            result.already_applied = stage.already_applied
        return result

    async def consolidated(
        self, identity: Identity, service_id: int, optimizely_user_id: str, *, optimizely_table_id: int | None = None
    ) -> list[ProfileView]:
        """The Optimizely table's profile first, then each aliased table's in table-id order."""
        service, keys, stored = await self.consolidated_values(
            identity, service_id, optimizely_user_id, optimizely_table_id=optimizely_table_id
        )
        views = []
        for table_id, customer_id in keys:
            visible = _readable(service.tables[table_id], stored.get(table_id, {}))
            if visible:
                views.append(ProfileView(service_id, table_id, customer_id, visible))
        return views

    async def consolidated_values(
        self, identity: Identity, service_id: int, optimizely_user_id: str, *, optimizely_table_id: int | None = None
    ) -> tuple[ServiceSnapshot, list[tuple[int, str]], dict[int, Values]]:
        """One user's stored values per active table, as stored (keyed by attribute id).

        Also returns the snapshot they were read with and the (table, customer)
        pairs in consolidated order; audiences are evaluated on these values.
        """
        service = await self._registry.service(identity, service_id)
        if optimizely_table_id is not None and optimizely_table_id != service.optimizely_table_id:
            raise NotFound(
                f"table {optimizely_table_id} is not the Optimizely table of DCP service {service_id}",
                metadata={"resource": "table", "id": str(optimizely_table_id)},
            )
        found = await self._linked.linked(identity, service_id, service.optimizely_table_id, optimizely_user_id)
        links, stored = found.links, found.stored
        if any(table_id not in service.tables for table_id in links):
            service = await self._registry.fresh_service(identity, service_id)
        keys: list[tuple[int, str]] = []
        if service.optimizely_table_id:
            keys.append((service.optimizely_table_id, optimizely_user_id))
        for table_id in sorted(links):
            info = service.tables.get(table_id)
            if info is not None and not info.archived and not info.is_optimizely:
                keys.append((table_id, links[table_id]))
        service = await self._reading(identity, service, [(t, values) for (t, _), values in stored.items()])
        by_table = {
            table_id: stored[(table_id, customer_id)]
            for table_id, customer_id in keys
            if (table_id, customer_id) in stored
        }
        return service, keys, by_table
