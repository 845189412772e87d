"""Export encoders: a CSV export read by the importer's own parser gives back every stored value."""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.domain.datatypes import AttributeSpec, Datatype, DatetimeFormat
from services.domain.values import (
    EPOCH_MS_MAX,
    EPOCH_MS_MIN,
    LONG_MAX,
    LONG_MIN,
    MAX_STRING_LENGTH,
    SKIP,
    check_json_value,
    column_parser,
)
from services.imports.parsing import CsvStream, Record
from services.profiles.export_format import CsvEncoder, JsonLinesEncoder

Row = tuple[str, list[Any]]

# Text a CSV writer can get wrong: separators, quotes, line breaks of every
# kind, spaces the reader might strip, a BOM, and characters beyond ASCII.
_TRICKY = st.sampled_from(
    [
        *(",", '"', '""', "a,b", 'say "hi"', "=1+1"),
        *("\n", "\r", "\r\n", "\n\r", "\u2028", "\x85"),
        *(" ", "  lead", "trail  ", "\tTab", "\ufeff"),
        *("é", "中文", "😀"),
        *("null", "true", "1e20", "-0"),
    ]
)
# Stored text is always valid UTF-8 (it arrived as JSON, protobuf or UTF-8 CSV): no surrogates.
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
_STRING = st.lists(_TRICKY | _TEXT, max_size=4).map("".join).filter(lambda s: len(s) <= MAX_STRING_LENGTH)
_CUSTOMER_ID = _STRING.filter(bool)


def _utc(moment: datetime.datetime) -> str:
    # strftime does not pad years before 1000 on every platform.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


# What a double column may hold as read back from jsonb: any finite float,
# and whole numbers that come back as integers, up to 1e20-sized ones and beyond 64 bits.
_DOUBLE = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e20, 1e-7])
    | st.sampled_from([10**20, -(10**20), 10**18, 2**63, 2**64, 2**70, 10**308])
    | st.integers(min_value=-(2**70), max_value=2**70)
)

SPECS_AND_VALUES: dict[str, tuple[AttributeSpec, st.SearchStrategy[Any]]] = {
    "string": (AttributeSpec("s", Datatype.STRING), _STRING),
    "bool": (AttributeSpec("b", Datatype.BOOL), st.booleans()),
    "long": (
        AttributeSpec("l", Datatype.LONG),
        st.integers(LONG_MIN, LONG_MAX) | st.sampled_from([LONG_MIN, LONG_MAX, 0, -1]),
    ),
    "double": (AttributeSpec("d", Datatype.DOUBLE), _DOUBLE),
    "date": (AttributeSpec("day", Datatype.DATETIME, DatetimeFormat.DATE), st.dates().map(datetime.date.isoformat)),
    "datetime": (AttributeSpec("at", Datatype.DATETIME, DatetimeFormat.DATETIME), st.datetimes().map(_utc)),
    "epoch": (
        AttributeSpec("ms", Datatype.DATETIME, DatetimeFormat.EPOCH),
        st.integers(EPOCH_MS_MIN, EPOCH_MS_MAX) | st.sampled_from([EPOCH_MS_MIN, EPOCH_MS_MAX]),
    ),
}


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[str], list[AttributeSpec], list[Row]]:
    """Column names (as tricky as values), their specs, and rows of values or None."""
    kinds = draw(st.lists(st.sampled_from(sorted(SPECS_AND_VALUES)), max_size=9))
    names = draw(
        st.lists(
            _CUSTOMER_ID.filter(lambda n: n.strip().lower() != "customerid"),
            min_size=len(kinds),
            max_size=len(kinds),
            unique=True,
        )
    )
    specs = [SPECS_AND_VALUES[kind][0] for kind in kinds]
    cells = [st.none() | SPECS_AND_VALUES[kind][1] for kind in kinds]
    rows = draw(st.lists(st.tuples(_CUSTOMER_ID, st.tuples(*cells).map(list)), min_size=1, max_size=12))
    return names, specs, rows


async def _chunks(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _import_read(data: bytes, chunk: int) -> list[Record]:
    """The records as the importer reads them from an object of these bytes."""
    async with aclosing(_chunks(data, chunk)) as source:
        stream = CsvStream(source, key="exports/profiles.csv", batch_rows=5)
        records = [await stream.header()]
        async for batch in stream:
            records.extend(batch)
    return records


def _canonical(spec: AttributeSpec, value: Any) -> Any:
    """What the store holds for a value (SKIP for a cell that changes nothing)."""
    if value is None or value == "":
        return SKIP
    return check_json_value(spec, value, pii_guard=False)


def _same(values: list[Any]) -> list[Any]:
    # Floats by their bits, so -0.0 is not taken for 0.0.
    return [(type(v), v.hex()) if isinstance(v, float) else (type(v), v) for v in values]


async def _round_trip(columns: list[str], specs: list[AttributeSpec], rows: list[Row], *, chunk: int) -> None:
    encoder = CsvEncoder(columns)
    middle = len(rows) // 2
    data = encoder.header() + encoder.encode(rows[:middle]) + encoder.encode(iter(rows[middle:]))

    records = await _import_read(data, chunk)

    assert records[0].fields == ["customerId", *columns]
    body = records[1:]
    assert [r.fields[0] for r in body] == [customer for customer, _ in rows]
    assert all(len(r.fields) == len(columns) + 1 for r in body)
    for position, spec in enumerate(specs):
        parsed, problems = column_parser(spec, pii_guard=False)([r.fields[position + 1] for r in body])
        assert problems == []
        expected = [_canonical(spec, values[position]) for _, values in rows]
        assert _same(parsed) == _same(expected), spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), chunk=st.integers(min_value=1, max_value=97))
async def test_an_exported_csv_reimports_as_the_same_values(
    table: tuple[list[str], list[AttributeSpec], list[Row]], chunk: int
) -> None:
    columns, specs, rows = table
    await _round_trip(columns, specs, rows, chunk=chunk)


@pytest.mark.parametrize("kind", sorted(SPECS_AND_VALUES))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
async def test_a_column_of_one_datatype_reimports_exactly(kind: str, data: st.DataObject) -> None:
    # Whole columns of one kind take the encoder's fast paths (and the importer's).
    spec, values = SPECS_AND_VALUES[kind]
    cells = data.draw(st.lists(values, min_size=1, max_size=40))
    rows = [(f"c{index}", [value]) for index, value in enumerate(cells)]
    await _round_trip([spec.name], [spec], rows, chunk=data.draw(st.sampled_from([1, 7, 4096])))


async def test_cells_are_quoted_only_where_the_reader_needs_it() -> None:
    encoder = CsvEncoder(["note", "vip", "score", "ltv"])
    rows: list[Row] = [
        ("c1", ["plain text ", True, 1e20, 10**20]),
        ("c2", [" leading space", False, -0.0, None]),
        ("c3", ['a "quoted", word', None, 0.1, -5]),
        ("c,4", ["line\nbreak", True, None, 0]),
    ]
    assert encoder.header() == b"customerId,note,vip,score,ltv\n"
    assert encoder.encode(rows) == (
        b"c1,plain text ,true,1e+20,100000000000000000000\n"
        b'c2," leading space",false,-0.0,\n'
        b'c3,"a ""quoted"", word",,0.1,-5\n'
        b'"c,4","line\nbreak",true,,0\n'
    )


async def test_an_empty_string_is_written_as_an_empty_cell_that_leaves_the_value_unchanged() -> None:
    data = CsvEncoder(["note"]).encode([("c1", [""]), ("c2", [None])])
    assert data == b"c1,\nc2,\n"
    records = await _import_read(b"customerId,note\n" + data, 4096)
    parsed, _ = column_parser(AttributeSpec("note", Datatype.STRING))([r.fields[1] for r in records[1:]])
    assert parsed == [SKIP, SKIP]


def test_a_table_without_attributes_exports_customer_ids_alone() -> None:
    encoder = CsvEncoder([])
    assert encoder.header() + encoder.encode([("a", []), (" b", [])]) == b'customerId\na\n" b"\n'


def test_an_empty_batch_is_no_bytes() -> None:
    assert CsvEncoder(["x"]).encode([]) == b""
    assert JsonLinesEncoder().encode([]) == b""


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 values"):
        CsvEncoder(["a", "b"]).encode([("c1", ["x", "y"]), ("c2", ["x"])])


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_doubles_are_refused_rather_than_written_as_text_the_importer_refuses(value: float) -> None:
    with pytest.raises(ValueError, match="inf and nan"):
        CsvEncoder(["score"]).encode([("c1", [1.5]), ("c2", [value]), ("c3", [None])])


def test_a_value_that_is_no_profile_value_is_refused() -> None:
    with pytest.raises(TypeError, match="bytes"):
        CsvEncoder(["x"]).encode([("c1", [b"raw"])])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"customerId": _CUSTOMER_ID},
            optional={
                kind: SPECS_AND_VALUES[kind][1] for kind in ("string", "bool", "long", "date", "datetime", "epoch")
            }
            | {"double": st.floats(allow_nan=False, allow_infinity=False)},
        ),
        max_size=10,
    )
)
def test_json_lines_are_one_object_a_line_with_the_same_values(rows: list[dict[str, Any]]) -> None:
    data = JsonLinesEncoder().encode(rows)

    lines = data.split(b"\n")
    assert lines[-1] == b""
    decoded = [orjson.loads(line) for line in lines[:-1]]
    assert [_same(list(d.values())) for d in decoded] == [_same(list(r.values())) for r in rows]
    assert [list(d) for d in decoded] == [list(r) for r in rows]


def test_json_lines_write_a_double_read_back_as_a_huge_integer_as_that_double() -> None:
    data = JsonLinesEncoder().encode([{"customerId": "c1", "score": 10**20, "ltv": LONG_MAX}])
    assert orjson.loads(data) == {"customerId": "c1", "score": 1e20, "ltv": LONG_MAX}
