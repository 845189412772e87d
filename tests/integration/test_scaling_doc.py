"""docs/scaling.md names every table's Citus role, and every distributed table's key starts with its column."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
ROW = re.compile(r"^\| `(?P<table>\w+\.\w+)` \| (?P<kind>reference|distributed|local) \| (?:`(?P<column>\w+)`)? *\|")


def documented() -> dict[str, tuple[str, str | None]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            rows[match["table"]] = (match["kind"], match["column"])
    return rows


async def test_every_table_is_documented_with_a_key_starting_at_its_distribution_column(pool: asyncpg.Pool) -> None:
    tables = await pool.fetch(
        """
        SELECT n.nspname || '.' || c.relname AS name,
               (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = c.oid AND i.indisprimary) AS first_key_column
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('catalog', 'profiles', 'aliases', 'imports') AND c.relkind IN ('r', 'p')
        """
    )
    doc = documented()
    live = {row["name"]: row["first_key_column"] for row in tables}
    assert set(live) == set(doc), f"undocumented: {set(live) - set(doc)}; gone: {set(doc) - set(live)}"
    for name, (kind, column) in doc.items():
        assert live[name] is not None, f"{name} has no primary key"
        if kind == "distributed":
            assert column is not None, f"{name} is distributed by no column"
            assert live[name] == column, f"{name}'s primary key starts with {live[name]}, not {column}"
        else:
            assert column is None, f"{name} is {kind} and has no distribution column"
