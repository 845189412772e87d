"""Audience membership in SQL: who of a DCP service's users meets a condition tree.

The one place with SQL for audiences. A tree compiles into one statement whose
predicate states the rules of services/domain/conditions/evaluate.py for stored rows:
each leaf is strictly true or false (a CASE on the value's JSON type, or a
type-strict jsonb equality, so a missing or wrongly typed value is false, never
NULL), strings order under COLLATE "C" (code point order), substring is strpos
(literal, no LIKE patterns), long and epoch values order as numeric, doubles as
float8. Every value is a bind parameter.

Doubles are stored as the shortest text that reads back as the same double,
so equality of those texts as numbers (jsonb equality) and order as float8 both
agree with the evaluator's comparison of Python floats.

The users are the customer ids of the service's Optimizely table and the
Optimizely user ids of its identity links; a user's values in another table T
are those of the customer id their link to T names. Identity links are read
through aliases.published_links, the view the aliases service keeps for such
co-located readers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.domain.conditions.evaluate import holds, window
from services.domain.conditions.model import Group, Leaf, Node
from services.domain.values import Stored, rule_of

_PROFILES = "profiles.profiles"
_LINKS = "aliases.published_links"

# How each datatype's stored value is typed and read for ordering: JSON type, parameter type, extraction.
_READS: dict[Stored, tuple[str, str, str]] = {
    Stored.TEXT: ("string", "text", '({data} ->> {key}) COLLATE "C"'),
    Stored.BOOLEAN: ("boolean", "", ""),
    Stored.INTEGER: ("number", "numeric", "({data} -> {key})::numeric"),
    Stored.FLOAT: ("number", "float8", "({data} -> {key})::float8"),
}
_OPERATORS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "before": "<", "after": ">"}


class Membership:
    """Counts, lists and exports the members of an audience, straight from the stored profiles."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def count(self, service_id: int, optimizely_table_id: int, node: Node | None, *, now: datetime) -> int:
        statement = compile_count(service_id, optimizely_table_id, node, now=now)
        if statement is None:
            return 0
        # fetch, not fetchval: fetchval asks for at most one row, and PostgreSQL
        # runs a statement with a row limit without parallel workers.
        rows = await self._pool.fetch(statement.sql, *statement.args)
        count: int = rows[0][0]
        return count

    async def members(
        self,
        service_id: int,
        optimizely_table_id: int,
        node: Node | None,
        *,
        now: datetime,
        after: str | None,
        limit: int,
    ) -> list[str]:
        """Up to `limit` member ids in code point order, starting after the id `after` (keyset paging)."""
        if limit <= 0:
            return []
        query = _compile(service_id, optimizely_table_id, node, now=now, tables=())
        if query is None:
            return []
        where = list(query.where)
        if after is not None:
            where.append(f'{query.user} COLLATE "C" > {query.params.add(after, "text")}')
        sql = (
            f"SELECT {query.user} FROM {query.source} WHERE {' AND '.join(where)}"
            f' ORDER BY {query.user} COLLATE "C" LIMIT {query.params.add(limit, "bigint")}'
        )
        rows = await self._pool.fetch(sql, *query.params.values)
        return [row[0] for row in rows]

    async def rows(
        self,
        connection: asyncpg.Connection,
        service_id: int,
        optimizely_table_id: int,
        node: Node | None,
        *,
        now: datetime,
        tables: Sequence[int],
        prefetch: int = 1000,
    ) -> AsyncIterator[tuple[str, list[dict[str, Any] | None]]]:
        """(member id, [their values in each of `tables`, None where they have none]) in member id order.

        Runs a server-side cursor, so it must be iterated inside a transaction
        the caller opened on `connection`; `tables` need not appear in the
        conditions.
        """
        query = _compile(service_id, optimizely_table_id, node, now=now, tables=tables)
        if query is None:
            return
        columns = "".join(f", {query.data[table]}" for table in tables)
        sql = (
            f"SELECT {query.user}{columns} FROM {query.source} WHERE {' AND '.join(query.where)}"
            f' ORDER BY {query.user} COLLATE "C"'
        )
        width = len(tables)
        async for record in connection.cursor(sql, *query.params.values, prefetch=prefetch):
            yield record[0], [record[index] for index in range(1, width + 1)]


@dataclass(frozen=True)
class Statement:
    sql: str
    args: tuple[Any, ...]


def compile_count(service_id: int, optimizely_table_id: int, node: Node | None, *, now: datetime) -> Statement | None:
    """The statement `Membership.count` runs (None: nobody can match), for EXPLAIN in tests and benchmarks."""
    query = _compile(service_id, optimizely_table_id, node, now=now, tables=())
    if query is None:
        return None
    sql = f"SELECT count(*) FROM {query.source} WHERE {' AND '.join(query.where)}"
    return Statement(sql, tuple(query.params.values))


@dataclass
class _Params:
    values: list[Any] = field(default_factory=list)
    _seen: dict[tuple[str, type, Any], str] = field(default_factory=dict)

    def add(self, value: Any, cast: str) -> str:
        """A placeholder for `value`, typed `cast`; a scalar given twice shares one."""
        if isinstance(value, list):
            self.values.append(value)
            return f"${len(self.values)}::{cast}"
        key = (cast, type(value), value)
        placeholder = self._seen.get(key)
        if placeholder is None:
            self.values.append(value)
            placeholder = self._seen[key] = f"${len(self.values)}::{cast}"
        return placeholder


@dataclass
class _Query:
    user: str
    """The member id's expression."""
    source: str
    """The FROM clause."""
    where: list[str]
    data: dict[int, str]
    """Table id → the expression of a member's values there (NULL when they have none)."""
    params: _Params


def _compile(
    service_id: int,
    optimizely_table_id: int,
    node: Node | None,
    *,
    now: datetime,
    tables: Sequence[int],
) -> _Query | None:
    """FROM and WHERE selecting the tree's members, joining `tables` too; None when nobody can match."""
    if node is None:
        return None
    referenced = _tables_of(node)
    # Matching someone with no values at all (say, "not exists") needs every user;
    # otherwise only users with values in a table the conditions read can match.
    everyone = holds(node, {}, now=now)
    if not everyone and not referenced:
        return None
    params = _Params()

    # Placeholders are made on first use: PostgreSQL cannot type a parameter the statement never reads.
    def service() -> str:
        return params.add(service_id, "bigint")

    def optimizely() -> str:
        return params.add(optimizely_table_id, "bigint")

    data: dict[int, str] = {}
    where: list[str] = []
    if not everyone and referenced == [optimizely_table_id]:
        user = "o.customer_id"
        source = f"{_PROFILES} o"
        where.append(f"o.datasource_id = {optimizely()}")
        data[optimizely_table_id] = "o.data"
    elif not everyone and len(referenced) == 1:
        (table,) = referenced
        placeholder = params.add(table, "bigint")
        user = "l1.optimizely_user_id"
        source = (
            f"{_LINKS} l1 JOIN {_PROFILES} p1 ON p1.customer_id = l1.customer_id AND p1.datasource_id = {placeholder}"
        )
        where += [f"l1.dcp_service_id = {service()}", f"l1.datasource_id = {placeholder}"]
        data[table] = "p1.data"
    else:
        parts = []
        if everyone or optimizely_table_id in referenced:
            parts.append(f"SELECT customer_id AS user_id FROM {_PROFILES} WHERE datasource_id = {optimizely()}")
        others = [table for table in referenced if table != optimizely_table_id]
        if everyone:
            parts.append(f"SELECT optimizely_user_id AS user_id FROM {_LINKS} WHERE dcp_service_id = {service()}")
        elif others:
            parts.append(
                f"SELECT optimizely_user_id AS user_id FROM {_LINKS}"
                f" WHERE dcp_service_id = {service()} AND datasource_id = ANY({params.add(others, 'bigint[]')})"
            )
        user = "u.user_id"
        # A user linked to several tables has several links; UNION keeps each user once.
        union = " UNION ".join(parts) if len(parts) > 1 else parts[0].replace("SELECT", "SELECT DISTINCT", 1)
        source = f"({union}) u"
    for table in [*referenced, *tables]:
        if table in data:
            continue
        alias = len(data) + 1
        if table == optimizely_table_id:
            source += (
                f" LEFT JOIN {_PROFILES} p{alias}"
                f" ON p{alias}.customer_id = {user} AND p{alias}.datasource_id = {optimizely()}"
            )
        else:
            placeholder = params.add(table, "bigint")
            source += (
                f" LEFT JOIN {_LINKS} l{alias} ON l{alias}.optimizely_user_id = {user}"
                f" AND l{alias}.dcp_service_id = {service()} AND l{alias}.datasource_id = {placeholder}"
                f" LEFT JOIN {_PROFILES} p{alias}"
                f" ON p{alias}.customer_id = l{alias}.customer_id AND p{alias}.datasource_id = {placeholder}"
            )
        data[table] = f"p{alias}.data"
    where.append(_predicate(node, data, params, now))
    return _Query(user=user, source=source, where=where, data=data, params=params)


def _tables_of(node: Node) -> list[int]:
    """The tables the tree's usable leaves read, in first-use order."""
    found: dict[int, None] = {}
    stack: list[Node] = [node]
    while stack:
        part = stack.pop()
        if isinstance(part, Group):
            stack.extend(reversed(part.operands))
        elif part.attribute.usable:
            found.setdefault(part.attribute.datasource_id)
    return list(found)


def _predicate(node: Node, data: dict[int, str], params: _Params, now: datetime) -> str:
    if isinstance(node, Leaf):
        return _leaf(node, data, params, now)
    parts = [_predicate(operand, data, params, now) for operand in node.operands]
    if node.operator == "not":
        return f"(NOT {parts[0]})"
    return "(" + f" {node.operator.upper()} ".join(parts) + ")"


def _leaf(leaf: Leaf, data: dict[int, str], params: _Params, now: datetime) -> str:
    ref = leaf.attribute
    if not ref.usable:
        return "false"
    values = data[ref.datasource_id]
    key = params.add(ref.key, "text")
    if ref.datatype is None:
        return "false"
    json_type, cast, read = _READS[rule_of(ref.datatype, ref.format).stored]
    guard = f"jsonb_typeof({values} -> {key}) = '{json_type}'"
    stored = read.format(data=values, key=key)
    match_type, value = leaf.match_type, leaf.value
    if match_type == "exists":
        return f"COALESCE({guard}, false)"
    # jsonb equality is type-strict (the string "5" is not the number 5) and numeric for numbers, so needs no guard.
    if match_type == "exact":
        return f"COALESCE({values} -> {key} = {params.add(value, 'jsonb')}, false)"
    if match_type == "in":
        return f"COALESCE({values} -> {key} = ANY({params.add(list(value), 'jsonb[]')}), false)"
    if match_type in _OPERATORS:
        test = f"{stored} {_OPERATORS[match_type]} {params.add(value, cast)}"
    elif match_type == "substring":
        test = f"strpos({values} ->> {key}, {params.add(value, cast)}) > 0"
    elif match_type in ("between", "within_last"):
        low, high = value if match_type == "between" else window(leaf, now)
        test = f"{stored} BETWEEN {params.add(low, cast)} AND {params.add(high, cast)}"
    else:
        raise ValueError(f"unknown match type {match_type!r}")
    # CASE, not AND: it keeps the cast from reading a value of another JSON type, and a missing value is false.
    return f"CASE WHEN {guard} THEN {test} ELSE false END"
