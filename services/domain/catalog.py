"""The registry as the other rooms read it: a DCP service's tables and their active attributes."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services._runtime.errors import NotFound
from services.domain.datatypes import AttributeSpec

DEFAULT_BLOCKED_CUSTOMER_IDS = ("", "null", "undefined", "0", "anonymous")
"""Placeholder customer ids that a new DCP service never links."""


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

    @functools.cached_property
    def shown(self) -> tuple[tuple[str, str], ...]:
        """(stored key, name) of each active attribute, in registration order: how a profile is shown."""
        return tuple((str(attribute_id), attribute.spec.name) for attribute_id, attribute in sorted(self.by_id.items()))


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
    alias_blocked_customer_ids: frozenset[str] = frozenset(DEFAULT_BLOCKED_CUSTOMER_IDS)
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
