"""The attribute datatypes and what one attribute accepts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Datatype(StrEnum):
    STRING = "string"
    BOOL = "bool"
    LONG = "long"
    DOUBLE = "double"
    DATETIME = "datetime"


class DatetimeFormat(StrEnum):
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
