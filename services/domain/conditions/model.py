"""Audience conditions as checked values: the one shape the evaluator and the SQL compiler read.

A saved audience keeps its conditions as the JSON the user sent; they are
parsed into this tree against the attribute registry whenever they are saved
(strictly: every leaf must name an active attribute) and whenever they are
used (leniently: a leaf whose attribute or table was archived since can no
longer hold, exactly as if the value were missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.domain.datatypes import Datatype, DatetimeFormat

MAX_DEPTH = 10
MAX_LEAVES = 100
MAX_IN_VALUES = 1000
MAX_WITHIN_LAST_DAYS = 36_500

OPERATORS = ("and", "or", "not")
MATCH_TYPES = (
    "exists",
    "exact",
    "substring",
    "in",
    "gt",
    "ge",
    "lt",
    "le",
    "between",
    "before",
    "after",
    "within_last",
)


@dataclass(frozen=True)
class AttributeRef:
    """The attribute a leaf reads, as the registry describes it."""

    datasource_id: int
    attribute_id: int
    datatype: Datatype | None
    """None when the attribute cannot be read (see `usable`)."""
    format: DatetimeFormat | None = None
    usable: bool = True
    """False when the attribute or its table was archived after the audience was saved: the leaf never holds."""

    @property
    def key(self) -> str:
        """How stored profiles key this attribute's value."""
        return str(self.attribute_id)


@dataclass(frozen=True)
class Leaf:
    """One attribute condition, its value in canonical stored form.

    value by match type: exists → None; exact, substring, gt, ge, lt, le,
    before, after → one value; in → a tuple of values; between → (low, high);
    within_last → a positive int of days.
    """

    path: str  # where it sits in the user's JSON, e.g. "conditions[1][2]"
    attribute: AttributeRef
    match_type: str
    value: Any


@dataclass(frozen=True)
class Group:
    """and / or over one or more operands; not over exactly one."""

    path: str
    operator: str
    operands: tuple[Node, ...]


Node = Leaf | Group
