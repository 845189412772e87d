"""The one validator of attribute values, shared by profile writes and imports.

Each datatype's rule is stated once, as one `ValueRule`: its limits, its
spelling in text and its messages. The same rule checks a JSON value (REST and
gRPC), a CSV cell and a whole column of cells, so an import row and an API
write accept exactly the same data, and changing a rule changes all three.
A value comes back in canonical form, or with the reason it does not fit.
"""

from __future__ import annotations

import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services._runtime.errors import InvalidArgument
from services.domain import pii
from services.domain.datatypes import AttributeSpec, Datatype, DatetimeFormat

MAX_STRING_LENGTH = 4096
LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
# Epoch milliseconds from year 1 to year 9999, the range of ISO dates.
EPOCH_MS_MIN = -62_135_596_800_000
EPOCH_MS_MAX = 253_402_300_799_999

# ASCII digits only, matched whole: `$` alone would let a trailing newline through.
_INTEGER_TEXT = r"[+-]?\d+"
_NUMBER_TEXT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)


class ValueProblem(ValueError):
    """Why one value does not fit its attribute."""


class _Skip:
    """An empty cell: the attribute stays as it is."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Any = _Skip()


class Stored(StrEnum):
    """How a canonical value is held in a profile's JSON, which decides how it compares."""

    TEXT = "text"
    """A JSON string, compared by code point."""
    BOOLEAN = "boolean"
    INTEGER = "integer"
    """A JSON number compared exactly, however large."""
    FLOAT = "float"
    """A JSON number compared as an IEEE double."""


class ValueRule(ABC):
    """What one datatype accepts, applied to each way a value arrives, and how its values are held."""

    @property
    @abstractmethod
    def stored(self) -> Stored:
        """How the canonical values are held."""

    @property
    def temporal(self) -> bool:
        """Whether values name instants, so that conditions may ask how long ago."""
        return False

    @abstractmethod
    def json(self, value: Any) -> Any:
        """The canonical form of a JSON value, or ValueProblem."""

    @abstractmethod
    def cell(self, text: str) -> Any:
        """The canonical form of a non-empty CSV cell, or ValueProblem."""

    def column(self, cells: Sequence[str]) -> list[Any] | None:
        """Every cell's value (SKIP for empty ones) when the whole column is clearly good, else None.

        Checking a column at once is most of an import's speed; None sends it
        cell by cell, which finds the same values and says what is wrong.
        """
        return None


@dataclass(frozen=True)
class _Text(ValueRule):
    max_length: int
    pii_guard: bool

    @property
    def stored(self) -> Stored:
        return Stored.TEXT

    def json(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueProblem(f"must be a string, got {describe(value)}")
        return self.cell(value)

    def cell(self, text: str) -> str:
        if len(text) > self.max_length:
            raise ValueProblem(f"must be at most {self.max_length} characters, got {len(text)}")
        if "\x00" in text:
            raise ValueProblem("must not contain NUL characters")
        if self.pii_guard:
            found = pii.detect(text)
            if found:
                raise ValueProblem(pii.refusal(found))
        return text

    def column(self, cells: Sequence[str]) -> list[Any] | None:
        if not cells or max(map(len, cells)) > self.max_length:
            return None
        # No personal-data pattern spans a line break, so one look at the
        # joined column finds exactly what a look at each cell would.
        joined = "\n".join(cells)
        if "\x00" in joined or (self.pii_guard and pii.detect(joined)):
            return None
        return [cell or SKIP for cell in cells]


@dataclass(frozen=True)
class _Booleans(ValueRule):
    @property
    def stored(self) -> Stored:
        return Stored.BOOLEAN

    def json(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueProblem(f"must be true or false, got {describe(value)}")
        return value

    def cell(self, text: str) -> bool:
        lowered = text.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
        raise ValueProblem(f"must be true or false, got {_quote(text)}")


class _Numbers(ValueRule):
    """Numbers between two bounds, spelt in text by one pattern."""

    def __init__(
        self,
        expected: str,
        *,
        spelling: str,
        kind: type[int] | type[float],
        low: float,
        high: float,
        out_of_range: str,
        temporal: bool = False,
    ) -> None:
        self._stored = Stored.INTEGER if kind is int else Stored.FLOAT
        self._temporal = temporal
        self.expected = expected
        self.kind = kind
        self.low = low
        self.high = high
        self.out_of_range = out_of_range
        self._json_kinds: tuple[type[int] | type[float], ...] = (int,) if kind is int else (int, float)
        self._spelling = re.compile(spelling, re.ASCII)
        # The same spelling, one cell per line, each with blanks around it or empty.
        one = rf"(?:[ \t]*(?:{spelling})[ \t]*)?"
        self._column_spelling = re.compile(rf"{one}(?:\n{one})*", re.ASCII)

    @property
    def stored(self) -> Stored:
        return self._stored

    @property
    def temporal(self) -> bool:
        return self._temporal

    def json(self, value: Any) -> int | float:
        if type(value) is self.kind:  # the usual case, already canonical (a bool's type is bool, never int)
            number = value
        elif isinstance(value, bool) or not isinstance(value, self._json_kinds):
            raise ValueProblem(f"must be {self.expected}, got {describe(value)}")
        else:
            try:
                number = self.kind(value)
            except OverflowError:
                raise ValueProblem(self.out_of_range) from None
        # Written so that NaN, which compares false with everything, is out of range too.
        if not self.low <= number <= self.high:
            raise ValueProblem(self.out_of_range)
        return number

    def cell(self, text: str) -> int | float:
        stripped = text.strip()
        if not self._spelling.fullmatch(stripped):
            raise ValueProblem(f"must be {self.expected}, got {_quote(text)}")
        return self._bounded(self.kind(stripped))

    def _bounded(self, number: int | float) -> int | float:
        # Written so that NaN, which compares false with everything, is out of range too.
        if not self.low <= number <= self.high:
            raise ValueProblem(self.out_of_range)
        return number

    def column(self, cells: Sequence[str]) -> list[Any] | None:
        joined = _joined_lines(cells)
        if joined is None or not self._column_spelling.fullmatch(joined):
            return None
        kind = self.kind
        values = [kind(cell) if cell else SKIP for cell in cells]
        present = [value for value in values if value is not SKIP]
        if present and (min(present) < self.low or max(present) > self.high):
            return None
        return values


@dataclass(frozen=True)
class _Calendar(ValueRule):
    format: DatetimeFormat
    problem: Callable[[str], str | None]

    @property
    def stored(self) -> Stored:
        return Stored.TEXT

    @property
    def temporal(self) -> bool:
        return True

    def json(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueProblem(f"must be a string in the format {self.format}, got {describe(value)}")
        return self._checked(value)

    def cell(self, text: str) -> str:
        return self._checked(text.strip())

    def _checked(self, text: str) -> str:
        found = self.problem(text)
        if found:
            raise ValueProblem(found)
        return text

    def column(self, cells: Sequence[str]) -> list[Any] | None:
        # Exports repeat dates: each distinct text is checked once.
        known: dict[str, Any] = {"": SKIP}
        for text in set(cells):
            if text:
                try:
                    known[text] = self.cell(text)
                except ValueProblem:
                    return None
        return [known[cell] for cell in cells]


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _calendar_problem(year: int, month: int, day: int) -> str | None:
    """Why y-m-d is no day of the calendar; plain arithmetic, as imports check millions of dates."""
    if year < 1:
        return "year 0 is out of range"
    if not 1 <= month <= 12:
        return "month must be in 1..12"
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= (29 if month == 2 and leap else _DAYS_IN_MONTH[month - 1]):
        return "day is out of range for month"
    return None


def _date_problem(text: str) -> str | None:
    match = _DATE.fullmatch(text)
    if not match:
        return "must be a date in the format yyyy-mm-dd"
    problem = _calendar_problem(int(match[1]), int(match[2]), int(match[3]))
    return f"is not a real date: {problem}" if problem else None


def _datetime_problem(text: str) -> str | None:
    match = _DATETIME.fullmatch(text)
    if not match:
        return "must be a UTC date-time in the format yyyy-mm-ddThh:mm:ssZ"
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    problem = _calendar_problem(year, month, day)
    if problem is None and hour > 23:
        problem = "hour must be in 0..23"
    if problem is None and minute > 59:
        problem = "minute must be in 0..59"
    if problem is None and second > 59:
        problem = "second must be in 0..59"
    return f"is not a real date-time: {problem}" if problem else None


_RuleKey = tuple[str, str | None]


def _rules(*, pii_guard: bool) -> dict[_RuleKey, ValueRule]:
    """Every datatype's rule; a new datatype or a changed limit is one entry here."""
    return {
        (Datatype.STRING, None): _Text(MAX_STRING_LENGTH, pii_guard=pii_guard),
        (Datatype.BOOL, None): _Booleans(),
        (Datatype.LONG, None): _Numbers(
            "an integer",
            spelling=_INTEGER_TEXT,
            kind=int,
            low=LONG_MIN,
            high=LONG_MAX,
            out_of_range="must fit in a signed 64-bit integer",
        ),
        (Datatype.DOUBLE, None): _Numbers(
            "a number",
            spelling=_NUMBER_TEXT,
            kind=float,
            low=-sys.float_info.max,
            high=sys.float_info.max,
            out_of_range="must be a finite number",
        ),
        (Datatype.DATETIME, DatetimeFormat.DATE): _Calendar(DatetimeFormat.DATE, _date_problem),
        (Datatype.DATETIME, DatetimeFormat.DATETIME): _Calendar(DatetimeFormat.DATETIME, _datetime_problem),
        (Datatype.DATETIME, DatetimeFormat.EPOCH): _Numbers(
            "an integer of epoch milliseconds",
            spelling=_INTEGER_TEXT,
            kind=int,
            low=EPOCH_MS_MIN,
            high=EPOCH_MS_MAX,
            out_of_range="must be epoch milliseconds between years 1 and 9999",
            temporal=True,
        ),
    }


_RULES = {True: _rules(pii_guard=True), False: _rules(pii_guard=False)}


def rule_for(spec: AttributeSpec, *, pii_guard: bool = True) -> ValueRule:
    """The rule of an attribute's values; `pii_guard` refuses text that looks like personal data."""
    # Looked up for every value of a write: the common datatypes take the shortest way.
    rule = _RULES[pii_guard].get((spec.datatype, spec.format))
    return rule if rule is not None else rule_of(spec.datatype, spec.format, pii_guard=pii_guard)


def rule_of(datatype: Datatype, format: DatetimeFormat | None, *, pii_guard: bool = True) -> ValueRule:
    """The rule of a datatype (and its format, for datetime); ValueProblem for one this platform does not know."""
    rule = _RULES[pii_guard].get((datatype, format if datatype == Datatype.DATETIME else None))
    if rule is None:
        raise ValueProblem(f"has an unknown datatype {datatype!r}")
    return rule


def check_json_value(spec: AttributeSpec, value: Any, *, pii_guard: bool = True) -> Any:
    """The canonical stored form of a JSON value, or ValueProblem."""
    return rule_for(spec, pii_guard=pii_guard).json(value)


def parse_cell(spec: AttributeSpec, text: str, *, pii_guard: bool = True) -> Any:
    """The canonical form of a CSV cell; an empty cell is never passed here."""
    return rule_for(spec, pii_guard=pii_guard).cell(text)


def cell_parser(spec: AttributeSpec, *, pii_guard: bool = True) -> Callable[[str], Any]:
    """A parser of one column's cells, chosen once per column rather than per cell."""
    return rule_for(spec, pii_guard=pii_guard).cell


ColumnParser = Callable[[Sequence[str]], tuple[list[Any], list[tuple[int, str]]]]


def column_parser(spec: AttributeSpec, *, pii_guard: bool = True) -> ColumnParser:
    """A parser of a whole column of cells at once: values (SKIP for empty cells) and (index, reason) problems."""
    rule = rule_for(spec, pii_guard=pii_guard)

    def parse(cells: Sequence[str]) -> tuple[list[Any], list[tuple[int, str]]]:
        values = rule.column(cells)
        if values is not None:
            return values, []
        values = []
        problems: list[tuple[int, str]] = []
        for index, cell in enumerate(cells):
            if not cell:
                values.append(SKIP)
                continue
            try:
                values.append(rule.cell(cell))
            except ValueProblem as problem:
                values.append(SKIP)
                problems.append((index, str(problem)))
        return values, problems

    return parse


def _joined_lines(cells: Sequence[str]) -> str | None:
    """The cells one per line, or None when a cell holds a line break itself."""
    joined = "\n".join(cells)
    return joined if joined.count("\n") == len(cells) - 1 else None


def validate_update(
    attributes: Mapping[str, AttributeSpec],
    data: Mapping[str, Any],
    *,
    pii_guard: bool = True,
    unknown_key: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Checks a whole partial update: every key must be an active attribute.

    Returns name → canonical value, with None for values to clear. Raises one
    InvalidArgument listing every bad key, so nothing is stored.
    """
    violations: list[tuple[str, str]] = []
    canonical: dict[str, Any] = {}
    for name, value in data.items():
        spec = attributes.get(name)
        if spec is None:
            reason = unknown_key(name) if unknown_key else "is not an active attribute of this table"
            violations.append((f"data.{name}", reason))
            continue
        if value is None:
            canonical[name] = None
            continue
        try:
            canonical[name] = check_json_value(spec, value, pii_guard=pii_guard)
        except ValueProblem as problem:
            violations.append((f"data.{name}", str(problem)))
    if violations:
        raise InvalidArgument(
            "the profile was not stored: " + "; ".join(f"{field} {reason}" for field, reason in violations),
            violations=violations,
        )
    return canonical


def describe(value: Any) -> str:
    """A JSON value's kind in words, for messages that say what was sent instead."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a floating-point number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
