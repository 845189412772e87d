"""Profiles as export files: CSV that the importer reads back unchanged, or JSON Lines.

Both encoders turn one batch of rows into bytes and keep nothing between
batches, so an export's memory follows its batch size, not its length.

CSV follows the importer's reading rules (`services.imports.parsing`,
`services.domain.values`) exactly: a header `customerId,<columns>`,
then one line per profile, lines ending in LF, UTF-8 without a byte order
mark. A value is written in the spelling the importer turns back into the
same canonical value:

- strings as they are; a cell is quoted (RFC 4180, `"` doubled) only when it
  holds a comma, a quote, CR or LF, or starts with a space (the importer's
  reader skips spaces after a delimiter unless the field is quoted).
  Trailing spaces and other whitespace need no quotes: nothing strips them.
- bools as `true` / `false`;
- longs and epoch milliseconds as decimal integers;
- doubles in the shortest spelling that round-trips (orjson's: `0.1`,
  `1e+20`, `-0.0`, `0.000025`, `5e-324`), which the importer's number
  syntax accepts and `float()` turns back into the same double. A double that comes back from jsonb as an
  integer (1e18 is stored as `1000000000000000000`) is written as that
  integer, which the importer reads as the same double.
- datetimes in their stored text (`yyyy-mm-dd`, `yyyy-mm-ddThh:mm:ssZ`);
- a missing value (None) as an empty cell, which leaves the attribute
  unchanged on import.

Known limit: an empty string is a valid stored value, but CSV has no way to
tell it from an empty cell, which the importer reads as "leave unchanged"
(`""` reads as an empty cell too). It is written as an empty cell, so a
re-import keeps whatever the attribute holds at that time (into a fresh
table: no value). JSON Lines keeps empty strings apart from missing values.

Speed: an export is compared with PostgreSQL's own `COPY ... TO STDOUT`, so
the CSV encoder works a column at a time with C-level operations (`map`,
`str.join`, substring tests) and falls back to per-cell Python work only for
a column that needs it: one with a cell to quote, or values of mixed kinds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any

import orjson

CUSTOMER_ID_COLUMN = "customerId"

# Anything the importer's reader would not give back verbatim when unquoted.
_NEEDS_QUOTES = re.compile(r'[",\r\n]|^ ')
_EMPTY_FOR_NONE = {None: ""}
_EMPTY_FOR_NULL = {"null": ""}
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_BOOL_TEXT = {True: "true", False: "false", None: ""}
_NONE = type(None)
_TEXT_KINDS = frozenset({str, _NONE})
_NUMBER_KINDS = frozenset({int, float, _NONE})
_BOOL_KINDS = frozenset({bool, _NONE})
# orjson's integer range; beyond it only doubles can appear (longs are 64-bit).
_JSON_INT_MIN = -(2**63)
_JSON_INT_MAX = 2**64 - 1


class CsvEncoder:
    """Rows of one table's columns as CSV lines: `header()` once, then `encode(batch)` per batch."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns: tuple[str, ...] = tuple(columns)

    def header(self) -> bytes:
        return (",".join(map(_quote_cell, (CUSTOMER_ID_COLUMN, *self.columns))) + "\n").encode()

    def encode(self, rows: Iterable[tuple[str, Sequence[Any]]]) -> bytes:
        """CSV lines for `rows` of (customer id, canonical values in column order, None for missing)."""
        batch = rows if isinstance(rows, list) else list(rows)
        if not batch:
            return b""
        value_rows = list(map(_SECOND, batch))
        width = len(self.columns)
        if set(map(len, value_rows)) != {width}:
            raise ValueError(f"every row must hold {width} values, one per column")
        # Columns by itemgetter rather than zip(*rows): zip's per-row iterators
        # wake the garbage collector, which then costs more than the copying.
        texts = [_text_column(list(map(_FIRST, batch)))]
        texts += [_text_column(list(map(itemgetter(index), value_rows))) for index in range(width)]
        lines = "\n".join(map(",".join, zip(*texts, strict=True)))
        return (lines + "\n").encode()


class JsonLinesEncoder:
    """Rows as JSON Lines: one object a line, values in their canonical JSON types."""

    def encode(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        batch = list(rows)
        dumps = orjson.dumps
        option = orjson.OPT_APPEND_NEWLINE
        try:
            return b"".join([dumps(row, default=_json_default, option=option) for row in batch])
        except orjson.JSONEncodeError:
            # Rare: an integer beyond orjson's 64-bit range, which can only be a
            # double read back as an integer; its canonical form is the float.
            return b"".join([dumps(_as_doubles(row), default=_json_default, option=option) for row in batch])


def _text_column(values: list[Any]) -> list[str]:
    """The cells of one column; `values` is a fresh list, which may come back as the result."""
    kinds = set(map(type, values))
    if kinds <= _TEXT_KINDS:
        return _quoted(list(map(_EMPTY_FOR_NONE.get, values, values)) if _NONE in kinds else values)
    if kinds <= _NUMBER_KINDS:
        return _numbers(values, kinds)
    if kinds <= _BOOL_KINDS:
        return list(map(_BOOL_TEXT.__getitem__, values))
    return list(map(_cell, values))


def _numbers(values: list[Any], kinds: set[type]) -> list[str]:
    """Numbers in orjson's spelling: shortest round-trip, like repr, and several times faster for doubles."""
    try:
        texts = orjson.dumps(values).decode()[1:-1].split(",")
    except orjson.JSONEncodeError:
        # An integer past 64 bits (a double read back as an integer).
        return list(map(_cell, values))
    if _NONE in kinds or float in kinds:
        # orjson writes None, inf and nan all as null; only None may be there.
        nulls = texts.count("null")
        if nulls:
            if nulls != values.count(None):
                raise ValueError("inf and nan are not storable values and cannot be exported")
            texts = list(map(_EMPTY_FOR_NULL.get, texts, texts))
    return texts


def _quoted(texts: list[str]) -> list[str]:
    """The cells, each quoted if it must be (in place); one pass over the joined column finds that none must."""
    joined = "\n".join(texts)
    if (
        '"' in joined
        or "," in joined
        or "\r" in joined
        or joined.startswith(" ")
        or "\n " in joined
        or joined.count("\n") != len(texts) - 1
    ):
        # Found in C; only the cells that need quotes cost a Python step.
        for index in compress(range(len(texts)), map(_NEEDS_QUOTES.search, texts)):
            texts[index] = '"' + texts[index].replace('"', '""') + '"'
    return texts


def _quote_cell(text: str) -> str:
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _cell(value: Any) -> str:
    """One value of any canonical kind, for columns whose kinds are mixed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote_cell(str.__str__(value))
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        text = float.__repr__(value)
        if "n" in text:
            raise ValueError("inf and nan are not storable values and cannot be exported")
        return text
    raise TypeError(f"a {type(value).__name__} is not a profile value and cannot be exported")


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a {type(value).__name__} is not a profile value and cannot be exported")


def _as_doubles(value: Any) -> Any:
    """`value` with every integer orjson cannot write turned into the double it stands for."""
    if isinstance(value, Mapping):
        return {key: _as_doubles(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_doubles(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _JSON_INT_MIN <= value <= _JSON_INT_MAX:
        return float(value)
    return value
