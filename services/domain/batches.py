"""Batches of rows for one table, and the checks every row passes before it is stored.

A batch comes from an uploaded file or a bulk call. Each row is checked with
the rules a single write obeys; a checked batch says what would be stored and,
for each refused row, why. Both the profiles service (which stores batches) and
the imports service (which checks files before anything is stored) use this.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services._runtime.errors import FailedPrecondition, InvalidArgument
from services._runtime.identity import Identity
from services.domain.catalog import ServiceSnapshot, TableInfo
from services.domain.customer_ids import customer_id_problem, customer_id_problems
from services.domain.datatypes import AttributeSpec
from services.domain.values import SKIP, ValueProblem, column_parser, rule_for

Values = dict[str, Any]
"""Stored values of one profile, keyed by attribute id."""


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


@dataclass(frozen=True)
class RowError:
    """Why one row was refused: the field at fault ("" for the whole row), the reason, and what was sent."""

    row_number: int
    field: str
    message: str
    value: str = ""

    @classmethod
    def about(cls, row_number: int, field: str, message: str, value: Any = "") -> RowError:
        """The error with the value shown as text, cut short: a refused cell can be megabytes."""
        text = value if isinstance(value, str) else repr(value)
        if len(text) > ERROR_VALUE_CHARS:
            text = text[: ERROR_VALUE_CHARS - 1] + "…"
        return cls(row_number, field, message, text)


MAX_BATCH_ERRORS = 10_000


def table_key_hint(table: TableInfo) -> Callable[[str], str]:
    """Why a key is not an attribute name, pointing at the name when an id was sent."""

    def hint(key: str) -> str:
        if key.isascii() and key.isdigit() and int(key) in table.by_id:
            return f"is an attribute id; use the attribute's name {table.by_id[int(key)].spec.name!r}"
        return "is not an active attribute of this table"

    return hint


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
    refuse_archived(service, table)
    rows = RowChecker(table, text_columns(table, header.columns), pii_guard=service.pii_guard, max_errors=max_errors)
    async for chunk in chunks:
        rows.rejected_by_caller += chunk.rejected_by_caller
        rows.typed(chunk.rows)
        rows.text(chunk.text_rows)
        if on_progress is not None:
            on_progress(rows.progress())
    return rows.result()


def refuse_archived(service: ServiceSnapshot, table: TableInfo) -> None:
    if table.archived or service.archived:
        raise FailedPrecondition(
            f"table {table.id} is archived; its profiles can no longer be written", reason="RESOURCE_ARCHIVED"
        )


class BatchMerger(Protocol):
    """A batch merge of the profiles service, whether reached over gRPC, in this process, or only checked."""

    async def merge_stream(
        self,
        identity: Identity,
        header: BatchHeader,
        chunks: AsyncIterator[BatchChunk],
        *,
        on_progress: ProgressReport | None = None,
    ) -> BatchResult: ...


def column_problems(table: TableInfo, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The rule of a batch's or a file's columns: each names an active attribute, once.

    Returns the names that are not active attributes and the names given more than once.
    """
    unknown = [name for name in dict.fromkeys(names) if name not in table.by_name]
    duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    return unknown, duplicates


def text_columns(table: TableInfo, names: Sequence[str]) -> list[tuple[str, AttributeSpec]]:
    """(stored key, spec) per column, or InvalidArgument naming each column that breaks `column_problems`."""
    hint = table_key_hint(table)
    unknown, duplicates = column_problems(table, names)
    violations = [(f"columns.{name}", hint(name)) for name in unknown]
    violations += [(f"columns.{name}", "appears more than once") for name in duplicates]
    if violations:
        raise InvalidArgument("the batch's columns are not all attributes of this table", violations=violations)
    return [(str(table.by_name[name].id), table.by_name[name].spec) for name in names]


class RowChecker:
    """Validates a batch's rows, keeping counts and the first errors."""

    def __init__(
        self, table: TableInfo, columns: list[tuple[str, AttributeSpec]], *, pii_guard: bool, max_errors: int
    ) -> None:
        self._table = table
        self._keys = [key for key, _ in columns]
        self._names = [spec.name for _, spec in columns]
        self._column_parsers = [column_parser(spec, pii_guard=pii_guard) for _, spec in columns]
        # Typed rows check each value by its attribute's rule, looked up once per attribute.
        self._json_rules = {name: rule_for(a.spec, pii_guard=pii_guard).json for name, a in table.by_name.items()}
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
            self._errors.append(RowError.about(row_number, field_name, message, value))

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
                        changes[str(attribute.id)] = self._json_rules[name](value)
                except ValueProblem as problem:
                    self._error(row.row_number, name, str(problem), value)
                    good = False
            self._count(good, staged, row.row_number, row.customer_id, changes)
        return staged

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
            (index, -1, "customerId", reason, customers[index])
            for index, reason in customer_id_problems(customers, pii_guard=self._pii_guard)
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
