"""Profile rules: reads, partial merges, erasure, batch merges, the consolidated view."""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services._runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services._runtime.identity import Identity
from services.profiles import pii
from services.profiles.repository import ProfilesRepository, Values
from services.profiles.validation import (
    SKIP,
    AttributeSpec,
    ValueProblem,
    check_json_value,
    column_parser,
    validate_update,
)
from services.schema.client import RegistryClient, ServiceSnapshot, TableInfo

MAX_KEYS_PER_WRITE = 1000
MAX_CUSTOMER_ID_LENGTH = 255
MAX_BATCH_READ = 1000


@dataclass(frozen=True)
class ProfileView:
    """One customer's values in one table, by attribute name in registration order."""

    dcp_service_id: int
    datasource_id: int
    customer_id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class BatchRow:
    row_number: int
    customer_id: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class TextRows:
    """Rows of text, flat: row i is row_numbers[i], and its customer id then one
    cell per column of the batch at cells[i * (1 + columns)]; "" leaves an attribute unchanged."""

    row_numbers: Sequence[int] = ()
    cells: Sequence[str] = ()


@dataclass(frozen=True)
class BatchHeader:
    """What the first message of a batch says about all of it."""

    service_id: int
    table_id: int
    all_or_nothing: bool = False
    idempotency_key: str = ""
    columns: Sequence[str] = ()
    """Attribute names of text rows' cells."""
    validate_only: bool = False
    """Report what would happen; store nothing."""


@dataclass(frozen=True)
class BatchChunk:
    rows: Sequence[BatchRow] = ()
    text_rows: TextRows = field(default_factory=TextRows)
    rejected_by_caller: int = 0


@dataclass(frozen=True)
class RowError:
    row_number: int
    field: str
    message: str
    value: str = ""


@dataclass(frozen=True)
class BatchProgress:
    """How far a batch merge has come: rows checked so far, of which valid (stored when it commits) and refused."""

    rows_received: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0


ProgressReport = Callable[[BatchProgress], None]
"""Told the counts so far each time the rows of a chunk have been checked."""


@dataclass
class BatchResult:
    rows_received: int = 0
    rows_stored: int = 0
    rows_rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    already_applied: bool = False


ERROR_VALUE_CHARS = 200
MAX_BATCH_ERRORS = 10_000


# Looks up an Optimizely user's links: table id -> customer id.
AliasLookup = Callable[[Identity, int, str], Awaitable[Mapping[int, str]]]


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def customer_id_problem(customer_id: str, *, pii_guard: bool) -> str | None:
    if not customer_id or not customer_id.strip():
        return "is required and must not be blank"
    if len(customer_id) > MAX_CUSTOMER_ID_LENGTH:
        return f"must be at most {MAX_CUSTOMER_ID_LENGTH} characters"
    if _CONTROL_CHARACTER.search(customer_id):
        return "must not contain control characters"
    if pii_guard:
        found = pii.detect(customer_id)
        if found:
            return pii.refusal(found)
    return None


def table_key_hint(table: TableInfo) -> Callable[[str], str]:
    """Why a key is not an attribute name, pointing at the name when an id was sent."""

    def hint(key: str) -> str:
        if key.isascii() and key.isdigit() and int(key) in table.by_id:
            return f"is an attribute id; use the attribute's name {table.by_id[int(key)].spec.name!r}"
        return "is not an active attribute of this table"

    return hint


def _readable(table: TableInfo, stored: Values) -> dict[str, Any]:
    """Stored values of active attributes, by name, in registration order."""
    visible: dict[str, Any] = {}
    for attribute_id, attribute in sorted(table.by_id.items()):
        key = str(attribute_id)
        if key in stored:
            visible[attribute.spec.name] = stored[key]
    return visible


class Profiles:
    def __init__(
        self, repository: ProfilesRepository, registry: RegistryClient, aliases: AliasLookup | None = None
    ) -> None:
        """Without `aliases`, links are read from the aliases service's published view in the shared database."""
        self._repo = repository
        self._registry = registry
        self._aliases = aliases

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
        _refuse_archived(service, table)
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
        _refuse_archived(service, table)
        columns = _text_columns(table, header.columns)
        rows = _RowChecker(table, columns, pii_guard=service.pii_guard, max_errors=max_errors)
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
        if self._aliases is None:
            links, stored = await self._repo.consolidated(service_id, service.optimizely_table_id, optimizely_user_id)
        else:
            links = dict(await self._aliases(identity, service_id, optimizely_user_id))
            stored = {}
        if any(table_id not in service.tables for table_id in links):
            service = await self._registry.fresh_service(identity, service_id)
        keys: list[tuple[int, str]] = []
        if service.optimizely_table_id:
            keys.append((service.optimizely_table_id, optimizely_user_id))
        for table_id in sorted(links):
            info = service.tables.get(table_id)
            if info is not None and not info.archived and not info.is_optimizely:
                keys.append((table_id, links[table_id]))
        if self._aliases is not None:
            stored = await self._repo.get_many(keys)
        service = await self._reading(identity, service, [(t, values) for (t, _), values in stored.items()])
        by_table = {
            table_id: stored[(table_id, customer_id)]
            for table_id, customer_id in keys
            if (table_id, customer_id) in stored
        }
        return service, keys, by_table


async def check_batch(
    service: ServiceSnapshot,
    header: BatchHeader,
    chunks: AsyncIterator[BatchChunk],
    *,
    max_errors: int = MAX_BATCH_ERRORS,
    on_progress: ProgressReport | None = None,
) -> BatchResult:
    """What merging these rows would store and refuse, with the same rules as a merge, storing nothing.

    Needs no database: a process that only checks files runs it on a snapshot of the service.
    """
    table = service.table(header.table_id)
    _refuse_archived(service, table)
    rows = _RowChecker(table, _text_columns(table, header.columns), pii_guard=service.pii_guard, max_errors=max_errors)
    async for chunk in chunks:
        rows.rejected_by_caller += chunk.rejected_by_caller
        rows.typed(chunk.rows)
        rows.text(chunk.text_rows)
        if on_progress is not None:
            on_progress(rows.progress())
    return rows.result()


def _refuse_archived(service: ServiceSnapshot, table: TableInfo) -> None:
    if table.archived or service.archived:
        raise FailedPrecondition(
            f"table {table.id} is archived; its profiles can no longer be written", reason="RESOURCE_ARCHIVED"
        )


def _text_columns(table: TableInfo, names: Sequence[str]) -> list[tuple[str, AttributeSpec]]:
    """(stored key, spec) per column; every column must name an active attribute, once."""
    hint = table_key_hint(table)
    violations = [(f"columns.{name}", hint(name)) for name in names if name not in table.by_name]
    duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    violations += [(f"columns.{name}", "appears more than once") for name in duplicates]
    if violations:
        raise InvalidArgument("the batch's columns are not all attributes of this table", violations=violations)
    return [(str(table.by_name[name].id), table.by_name[name].spec) for name in names]


def _cut(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= ERROR_VALUE_CHARS else text[: ERROR_VALUE_CHARS - 1] + "…"


class _RowChecker:
    """Validates a batch's rows, keeping counts and the first errors."""

    def __init__(
        self, table: TableInfo, columns: list[tuple[str, AttributeSpec]], *, pii_guard: bool, max_errors: int
    ) -> None:
        self._table = table
        self._keys = [key for key, _ in columns]
        self._names = [spec.name for _, spec in columns]
        self._column_parsers = [column_parser(spec, pii_guard=pii_guard) for _, spec in columns]
        self._pii_guard = pii_guard
        self._max_errors = max_errors
        self._hint = table_key_hint(table)
        self._received = 0
        self._stored = 0
        self._rejected = 0
        self._errors: list[RowError] = []
        self.rejected_by_caller = 0
        self.cleared = False
        """Whether any accepted row clears a value (text rows never do)."""

    @property
    def any_rejected(self) -> bool:
        return self._rejected > 0 or self.rejected_by_caller > 0

    def _error(self, row_number: int, field_name: str, message: str, value: Any = "") -> None:
        if len(self._errors) < self._max_errors:
            self._errors.append(RowError(row_number, field_name, message, _cut(value)))

    def _customer_ok(self, row_number: int, customer_id: str) -> bool:
        problem = customer_id_problem(customer_id, pii_guard=self._pii_guard)
        if problem:
            self._error(row_number, "customerId", problem, customer_id)
        return problem is None

    def typed(self, rows: Iterable[BatchRow]) -> list[tuple[int, str, Values]]:
        staged: list[tuple[int, str, Values]] = []
        for row in rows:
            self._received += 1
            good = self._customer_ok(row.row_number, row.customer_id)
            changes: Values = {}
            for name, value in row.data.items():
                attribute = self._table.by_name.get(name)
                if attribute is None:
                    self._error(row.row_number, name, self._hint(name))
                    good = False
                    continue
                try:
                    if value is None:
                        changes[str(attribute.id)] = None
                        self.cleared = True
                    else:
                        changes[str(attribute.id)] = check_json_value(attribute.spec, value, pii_guard=self._pii_guard)
                except ValueProblem as problem:
                    self._error(row.row_number, name, str(problem), value)
                    good = False
            self._count(good, staged, row.row_number, row.customer_id, changes)
        return staged

    def _customer_problems(self, customers: Sequence[str]) -> list[tuple[int, str]]:
        """(index, reason) of each bad customer id; clean columns are checked all at once."""
        together = "".join(customers)
        if (
            customers
            and max(map(len, customers)) <= MAX_CUSTOMER_ID_LENGTH
            and "" not in set(map(str.strip, customers))
            and not _CONTROL_CHARACTER.search(together)
            and not (self._pii_guard and pii.detect("\n".join(customers)))
        ):
            return []
        problems = []
        for index, customer_id in enumerate(customers):
            problem = customer_id_problem(customer_id, pii_guard=self._pii_guard)
            if problem:
                problems.append((index, problem))
        return problems

    def text(self, rows: TextRows) -> list[tuple[int, str, Values]]:
        """Validates text rows column by column, which is several times faster than cell by cell."""
        numbers = list(rows.row_numbers)
        stride = 1 + len(self._keys)
        cells = list(rows.cells)
        if len(cells) != stride * len(numbers):
            raise InvalidArgument.field(
                "text_cells", f"must hold {stride} cells (customer id and one per column) for each row number"
            )
        customers = cells[0::stride]
        # (row index, column position, field, reason, value); the customer id is column -1.
        problems: list[tuple[int, int, str, str, str]] = [
            (index, -1, "customerId", reason, customers[index]) for index, reason in self._customer_problems(customers)
        ]
        columns: list[list[Any]] = []
        has_skips = False
        for position, parse in enumerate(self._column_parsers):
            column = cells[position + 1 :: stride]
            values, bad = parse(column)
            problems += [(index, position, self._names[position], reason, column[index]) for index, reason in bad]
            columns.append(values)
            has_skips = has_skips or SKIP in values
        problems.sort()
        rejected = {problem[0] for problem in problems}
        for index, _, name, reason, value in problems:
            self._error(numbers[index], name, reason, value)
        keys = self._keys
        staged: list[tuple[int, str, Values]] = []
        first_seq = self._received
        rows_of_values: Iterable[tuple[Any, ...]] = (
            zip(*columns, strict=True) if columns else itertools.repeat((), len(numbers))
        )
        for index, row_values in enumerate(rows_of_values):
            if index in rejected:
                continue
            if has_skips:
                changes = {key: value for key, value in zip(keys, row_values, strict=True) if value is not SKIP}
            else:
                changes = dict(zip(keys, row_values, strict=True))
            if changes:
                staged.append((first_seq + index + 1, customers[index], changes))
        self._received += len(numbers)
        self._rejected += len(rejected)
        self._stored += len(numbers) - len(rejected)
        return staged

    def _count(
        self, good: bool, staged: list[tuple[int, str, Values]], row_number: int, customer_id: str, changes: Values
    ) -> None:
        if good:
            self._stored += 1
            if changes:
                staged.append((self._received, customer_id, changes))
        else:
            self._rejected += 1

    def progress(self) -> BatchProgress:
        return BatchProgress(rows_received=self._received, rows_valid=self._stored, rows_rejected=self._rejected)

    def result(self) -> BatchResult:
        return BatchResult(
            rows_received=self._received,
            rows_stored=self._stored,
            rows_rejected=self._rejected,
            errors=list(self._errors),
        )
