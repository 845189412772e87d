"""The attribute datatypes and what one attribute accepts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Datatype(StrEnum):
    # Hashed as the text it equals, in C: Enum's own hash is Python code, paid
    # for every value checked when rules are looked up by datatype.
    __hash__ = str.__hash__

    STRING = "string"
    BOOL = "bool"
    LONG = "long"
    DOUBLE = "double"
    DATETIME = "datetime"


class DatetimeFormat(StrEnum):
    __hash__ = str.__hash__

    DATE = "yyyy-mm-dd"
    DATETIME = "yyyy-mm-ddThh:mm:ssZ"
    EPOCH = "epoch"


@dataclass(frozen=True)
class AttributeSpec:
    """What a table's active attribute accepts."""

    name: str
    datatype: Datatype
    format: DatetimeFormat | None = None
    """Exactly for datetime attributes."""
