"""The one validator of attribute values, shared by profile writes and imports.

A value is checked against its attribute's datatype and format and comes back
in canonical form, or the whole update is refused with one violation per bad
key. JSON values (REST and gRPC) and CSV cells (imports) arrive differently
but end in the same checks, so an import row and an API write accept exactly
the same data.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services._runtime.errors import InvalidArgument
from services.profiles import pii

MAX_STRING_LENGTH = 4096
LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
# Epoch milliseconds from year 1 to year 9999, the range of ISO dates.
EPOCH_MS_MIN = -62_135_596_800_000
EPOCH_MS_MAX = 253_402_300_799_999

# ASCII digits only, matched whole: `$` alone would let a trailing newline through.
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)
_INTEGER_TEXT = re.compile(r"[+-]?\d+", re.ASCII)
_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


@dataclass(frozen=True)
class AttributeSpec:
    """What a table's active attribute accepts."""

    name: str
    datatype: str  # string | bool | long | double | datetime
    format: str | None = None  # for datetime: yyyy-mm-dd | yyyy-mm-ddThh:mm:ssZ | epoch


class ValueProblem(ValueError):
    """Why one value does not fit its attribute."""


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


def check_json_value(spec: AttributeSpec, value: Any, *, pii_guard: bool = True) -> Any:
    """The canonical stored form of a JSON value, or ValueProblem."""
    kind = spec.datatype
    if kind == "string":
        if not isinstance(value, str):
            raise ValueProblem(f"must be a string, got {describe(value)}")
        if len(value) > MAX_STRING_LENGTH:
            raise ValueProblem(f"must be at most {MAX_STRING_LENGTH} characters, got {len(value)}")
        if "\x00" in value:
            raise ValueProblem("must not contain NUL characters")
        if pii_guard:
            found = pii.detect(value)
            if found:
                raise ValueProblem(pii.refusal(found))
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueProblem(f"must be true or false, got {describe(value)}")
        return value
    if kind == "long":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueProblem(f"must be an integer, got {describe(value)}")
        if not LONG_MIN <= value <= LONG_MAX:
            raise ValueProblem("must fit in a signed 64-bit integer")
        return value
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueProblem(f"must be a number, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ValueProblem("must be a finite number") from None
        if not math.isfinite(number):
            raise ValueProblem("must be a finite number")
        # Canonical form: an IEEE-754 double, so 10 and 10.0 are the same value.
        return number
    if kind == "datetime":
        if spec.format == "epoch":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueProblem(f"must be an integer of epoch milliseconds, got {describe(value)}")
            if not EPOCH_MS_MIN <= value <= EPOCH_MS_MAX:
                raise ValueProblem("must be epoch milliseconds between years 1 and 9999")
            return value
        if not isinstance(value, str):
            raise ValueProblem(f"must be a string in the format {spec.format}, got {describe(value)}")
        problem = _date_problem(value) if spec.format == "yyyy-mm-dd" else _datetime_problem(value)
        if problem:
            raise ValueProblem(problem)
        return value
    raise ValueProblem(f"has an unknown datatype {kind!r}")


def parse_cell(spec: AttributeSpec, text: str, *, pii_guard: bool = True) -> Any:
    """The canonical form of a CSV cell; an empty cell is never passed here."""
    return cell_parser(spec, pii_guard=pii_guard)(text)


def cell_parser(spec: AttributeSpec, *, pii_guard: bool = True) -> Callable[[str], Any]:
    """A parser of one column's cells, chosen once per column rather than per cell.

    It applies exactly the checks of `check_json_value` to the value the text
    spells; imports call it millions of times, so each kind gets its own path.
    """
    kind = spec.datatype
    if kind == "string":
        return functools.partial(_string_cell, pii_guard=pii_guard)
    if kind == "bool":
        return _bool_cell
    if kind == "long":
        return _long_cell
    if kind == "double":
        return _double_cell
    if kind == "datetime" and spec.format == "epoch":
        return _epoch_cell
    if kind == "datetime":
        problem = _date_problem if spec.format == "yyyy-mm-dd" else _datetime_problem
        return functools.partial(_datetime_cell, problem=problem)
    raise ValueProblem(f"has an unknown datatype {kind!r}")


def _string_cell(text: str, *, pii_guard: bool) -> str:
    if len(text) > MAX_STRING_LENGTH:
        raise ValueProblem(f"must be at most {MAX_STRING_LENGTH} characters, got {len(text)}")
    if "\x00" in text:
        raise ValueProblem("must not contain NUL characters")
    if pii_guard:
        found = pii.detect(text)
        if found:
            raise ValueProblem(pii.refusal(found))
    return text


def _bool_cell(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueProblem(f"must be true or false, got {_quote(text)}")


def _integer_cell(text: str, *, expected: str, low: int, high: int, out_of_range: str) -> int:
    stripped = text.strip()
    if not _INTEGER_TEXT.fullmatch(stripped):
        raise ValueProblem(f"must be {expected}, got {_quote(text)}")
    value = int(stripped)
    if not low <= value <= high:
        raise ValueProblem(out_of_range)
    return value


_long_cell = functools.partial(
    _integer_cell,
    expected="an integer",
    low=LONG_MIN,
    high=LONG_MAX,
    out_of_range="must fit in a signed 64-bit integer",
)
_epoch_cell = functools.partial(
    _integer_cell,
    expected="an integer of epoch milliseconds",
    low=EPOCH_MS_MIN,
    high=EPOCH_MS_MAX,
    out_of_range="must be epoch milliseconds between years 1 and 9999",
)


def _double_cell(text: str) -> float:
    stripped = text.strip()
    if not _NUMBER_TEXT.fullmatch(stripped):
        raise ValueProblem(f"must be a number, got {_quote(text)}")
    number = float(stripped)
    if not math.isfinite(number):
        raise ValueProblem("must be a finite number")
    return number


def _datetime_cell(text: str, *, problem: Callable[[str], str | None]) -> str:
    stripped = text.strip()
    found = problem(stripped)
    if found:
        raise ValueProblem(found)
    return stripped


class _Skip:
    """An empty cell: the attribute stays as it is."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Any = _Skip()
_INTEGER_COLUMN = re.compile(r"(?:[ \t]*[+-]?\d+[ \t]*)?(?:\n(?:[ \t]*[+-]?\d+[ \t]*)?)*", re.ASCII)
_NUMBER_COLUMN = re.compile(
    r"(?:[ \t]*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[ \t]*)?"
    r"(?:\n(?:[ \t]*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[ \t]*)?)*",
    re.ASCII,
)
ColumnParser = Callable[[Sequence[str]], tuple[list[Any], list[tuple[int, str]]]]


def column_parser(spec: AttributeSpec, *, pii_guard: bool = True) -> ColumnParser:
    """A parser of a whole column of cells at once: values (SKIP for empty cells) and (index, reason) problems.

    It accepts exactly what `cell_parser` accepts, cell by cell; a column that
    passes the checks done on all of it together skips the per-cell work,
    which is most of an import's time. Any doubt falls back to cell by cell.
    """
    parse_one = cell_parser(spec, pii_guard=pii_guard)
    whole = _whole_column(spec, pii_guard=pii_guard)

    def parse(cells: Sequence[str]) -> tuple[list[Any], list[tuple[int, str]]]:
        values = whole(cells) if whole is not None else None
        if values is not None:
            return values, []
        values = []
        problems: list[tuple[int, str]] = []
        for index, cell in enumerate(cells):
            if not cell:
                values.append(SKIP)
                continue
            try:
                values.append(parse_one(cell))
            except ValueProblem as problem:
                values.append(SKIP)
                problems.append((index, str(problem)))
        return values, problems

    return parse


def _joined_lines(cells: Sequence[str]) -> str | None:
    """The cells one per line, or None when a cell holds a line break itself."""
    joined = "\n".join(cells)
    return joined if joined.count("\n") == len(cells) - 1 else None


def _whole_column(spec: AttributeSpec, *, pii_guard: bool) -> Callable[[Sequence[str]], list[Any] | None] | None:
    kind = spec.datatype
    if kind == "long" or (kind == "datetime" and spec.format == "epoch"):
        low, high = (LONG_MIN, LONG_MAX) if kind == "long" else (EPOCH_MS_MIN, EPOCH_MS_MAX)

        def integers(cells: Sequence[str]) -> list[Any] | None:
            joined = _joined_lines(cells)
            if joined is None or not _INTEGER_COLUMN.fullmatch(joined):
                return None
            values = [int(cell) if cell else SKIP for cell in cells]
            present = [value for value in values if value is not SKIP]
            if present and (min(present) < low or max(present) > high):
                return None
            return values

        return integers
    if kind == "double":

        def numbers(cells: Sequence[str]) -> list[Any] | None:
            joined = _joined_lines(cells)
            if joined is None or not _NUMBER_COLUMN.fullmatch(joined):
                return None
            values = [float(cell) if cell else SKIP for cell in cells]
            if not all(map(math.isfinite, (value for value in values if value is not SKIP))):
                return None
            return values

        return numbers
    if kind == "string":

        def strings(cells: Sequence[str]) -> list[Any] | None:
            if not cells or max(map(len, cells)) > MAX_STRING_LENGTH:
                return None
            joined = "\n".join(cells)
            # No personal-data pattern spans a line break, so one look at the
            # joined column finds exactly what a look at each cell would.
            if "\x00" in joined or (pii_guard and pii.detect(joined)):
                return None
            return [cell or SKIP for cell in cells]

        return strings
    if kind == "datetime":
        parse_one = cell_parser(spec, pii_guard=pii_guard)

        def datetimes(cells: Sequence[str]) -> list[Any] | None:
            # Exports repeat dates: each distinct text is checked once.
            known: dict[str, Any] = {"": SKIP}
            for text in set(cells):
                if text:
                    try:
                        known[text] = parse_one(text)
                    except ValueProblem:
                        return None
            return [known[cell] for cell in cells]

        return datetimes
    return None


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
