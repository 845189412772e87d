"""The shared value validator: what a profile write or an import row may hold."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services._runtime.errors import InvalidArgument
from services.domain.datatypes import AttributeSpec, Datatype, DatetimeFormat
from services.domain.values import (
    LONG_MAX,
    LONG_MIN,
    SKIP,
    ValueProblem,
    check_json_value,
    column_parser,
    parse_cell,
    validate_update,
)

STRING = AttributeSpec("name", Datatype.STRING)
BOOL = AttributeSpec("flag", Datatype.BOOL)
LONG = AttributeSpec("ltv", Datatype.LONG)
DOUBLE = AttributeSpec("score", Datatype.DOUBLE)
DATE = AttributeSpec("day", Datatype.DATETIME, DatetimeFormat.DATE)
DATETIME = AttributeSpec("at", Datatype.DATETIME, DatetimeFormat.DATETIME)
EPOCH = AttributeSpec("ms", Datatype.DATETIME, DatetimeFormat.EPOCH)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (STRING, "jeans"),
        (STRING, ""),
        (STRING, "x" * 4096),
        (BOOL, True),
        (BOOL, False),
        (LONG, 10),
        (LONG, LONG_MIN),
        (LONG, LONG_MAX),
        (DOUBLE, 1.5),
        (DATE, "2024-02-29"),
        (DATETIME, "2024-02-29T23:59:59Z"),
        (EPOCH, 1457385393173),
        (EPOCH, 0),
    ],
)
def test_values_that_fit_are_kept_as_written(spec: AttributeSpec, value: Any) -> None:
    stored = check_json_value(spec, value)
    assert stored == value
    assert type(stored) is type(value)


@pytest.mark.parametrize(
    ("spec", "value", "reason"),
    [
        (STRING, 5, "must be a string"),
        (STRING, "x" * 4097, "at most 4096"),
        (STRING, "a\x00b", "NUL"),
        (BOOL, "true", "true or false"),
        (BOOL, 1, "true or false"),
        (LONG, 1.5, "must be an integer"),
        (LONG, 10.0, "must be an integer"),
        (LONG, True, "must be an integer"),
        (LONG, "10", "must be an integer"),
        (LONG, LONG_MAX + 1, "64-bit"),
        (LONG, LONG_MIN - 1, "64-bit"),
        (DOUBLE, math.inf, "finite"),
        (DOUBLE, math.nan, "finite"),
        (DOUBLE, False, "must be a number"),
        (DOUBLE, "1.5", "must be a number"),
        (DATE, "2023-02-29", "not a real date"),
        (DATE, "2024-2-9", "yyyy-mm-dd"),
        (DATE, "2024-02-29T00:00:00Z", "yyyy-mm-dd"),
        (DATE, "2024-02-29\n", "yyyy-mm-dd"),
        (DATE, "\u0662\u0660\u0662\u0664-01-01", "yyyy-mm-dd"),
        (DATETIME, "2024-02-29T10:00:00Z\n", "yyyy-mm-ddThh:mm:ssZ"),
        (DATETIME, "2024-02-29T24:00:00Z", "not a real date-time"),
        (DATETIME, "2024-02-29T10:00:00+01:00", "yyyy-mm-ddThh:mm:ssZ"),
        (DATETIME, "2024-02-29T10:00:00.123Z", "yyyy-mm-ddThh:mm:ssZ"),
        (EPOCH, 1.5, "epoch milliseconds"),
        (EPOCH, "1457385393173", "epoch milliseconds"),
        (EPOCH, 10**15, "between years"),
    ],
)
def test_values_that_do_not_fit_are_refused_with_the_reason(spec: AttributeSpec, value: Any, reason: str) -> None:
    with pytest.raises(ValueProblem, match=reason):
        check_json_value(spec, value)


def test_an_update_with_any_bad_key_is_refused_whole_naming_each_key() -> None:
    attributes = {"ltv": LONG, "day": DATE}
    with pytest.raises(InvalidArgument) as refused:
        validate_update(attributes, {"ltv": "ten", "day": "2024-01-01", "unknown": 1})
    assert dict(refused.value.violations) == {
        "data.ltv": "must be an integer, got a string",
        "data.unknown": "is not an active attribute of this table",
    }


def test_doubles_are_stored_as_doubles_whether_written_with_a_fraction_or_not() -> None:
    assert type(check_json_value(DOUBLE, 10)) is float
    assert check_json_value(DOUBLE, 10) == 10.0


def test_null_clears_a_value() -> None:
    assert validate_update({"ltv": LONG}, {"ltv": None}) == {"ltv": None}


@pytest.mark.parametrize(
    ("spec", "cell", "expected"),
    [
        (BOOL, "TRUE", True),
        (BOOL, "False", False),
        (LONG, "-42", -42),
        (DOUBLE, "2.5", 2.5),
        (DOUBLE, "7", 7.0),
        (DOUBLE, "1e3", 1000.0),
        (EPOCH, "1457385393173", 1457385393173),
        (DATE, "2024-01-31", "2024-01-31"),
        (STRING, "Height: 6'1\"", "Height: 6'1\""),
    ],
)
def test_csv_cells_parse_to_the_same_values_as_json(spec: AttributeSpec, cell: str, expected: Any) -> None:
    assert parse_cell(spec, cell) == expected


@pytest.mark.parametrize(
    ("spec", "cell"),
    [
        (BOOL, "t"),
        (BOOL, "1"),
        (LONG, "1.0"),
        (LONG, "ten"),
        (LONG, "1_000"),
        (LONG, "\u0661\u0662"),
        (DOUBLE, "nan"),
        (DOUBLE, "inf"),
        (DOUBLE, "1_0.5"),
        (DOUBLE, "\u0661.5"),
        (DOUBLE, "1e999"),
        (EPOCH, "2024-01-01"),
        (STRING, "jane@example.com"),
        (STRING, "4111 1111 1111 1111"),
    ],
)
def test_csv_cells_that_do_not_fit_are_refused(spec: AttributeSpec, cell: str) -> None:
    with pytest.raises(ValueProblem):
        parse_cell(spec, cell)


@given(st.integers(min_value=LONG_MIN, max_value=LONG_MAX))
def test_every_64_bit_integer_round_trips_through_json_and_csv(number: int) -> None:
    assert check_json_value(LONG, number) == number
    assert parse_cell(LONG, str(number)) == number


@given(st.integers(min_value=LONG_MAX + 1) | st.integers(max_value=LONG_MIN - 1))
def test_integers_beyond_64_bits_are_refused(number: int) -> None:
    with pytest.raises(ValueProblem):
        check_json_value(LONG, number)


@given(st.dates())
def test_every_real_date_is_accepted_in_its_format(day: Any) -> None:
    text = day.isoformat()
    assert check_json_value(DATE, text) == text
    assert parse_cell(DATE, text) == text


@given(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32))
def test_a_date_is_accepted_exactly_when_the_calendar_has_it(year: int, month: int, day: int) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}"
    try:
        datetime.date(year, month, day)
    except ValueError:
        with pytest.raises(ValueProblem, match="not a real date"):
            parse_cell(DATE, text)
    else:
        assert parse_cell(DATE, text) == text


_CELL_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-12",
            " 7 ",
            "+3",
            "1_000",
            "9223372036854775808",
            "1.5",
            ".5",
            "5.",
            "1e3",
            "1e999",
            "nan",
            "true",
            "FALSE",
            "yes",
            "2024-02-29",
            "2023-02-29",
            "2024-01-01T00:00:00Z",
            "1457385393173",
            "a\nb",
            "12\n34",
            "jane@example.com",
            "123-45-6789",
            "4111 1111 1111 1111",
            "\u0661\u0662",
            "x\x00y",
            "x" * 4097,
            "Height: 6'1\"",
        ]
    ),
    st.text(max_size=12),
)


@pytest.mark.parametrize("spec", [STRING, BOOL, LONG, DOUBLE, DATE, DATETIME, EPOCH], ids=lambda s: s.name)
@given(cells=st.lists(_CELL_TEXT, max_size=12))
def test_a_column_parses_exactly_as_its_cells_one_by_one(spec: AttributeSpec, cells: list[str]) -> None:
    values, problems = column_parser(spec)(cells)
    expected_values: list[Any] = []
    expected_problems: list[tuple[int, str]] = []
    for index, cell in enumerate(cells):
        if not cell:
            expected_values.append(SKIP)
            continue
        try:
            expected_values.append(parse_cell(spec, cell))
        except ValueProblem as problem:
            expected_values.append(SKIP)
            expected_problems.append((index, str(problem)))
    assert problems == expected_problems
    assert [type(v) for v in values] == [type(v) for v in expected_values]
    assert [v for v in values if v is not SKIP] == [v for v in expected_values if v is not SKIP]
