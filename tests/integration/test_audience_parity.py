"""Audience membership in SQL agrees with the in-process evaluator on every user, for any data and conditions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.aliases.repository import AliasesRepository
from services.domain.conditions.evaluate import evaluate, holds
from services.domain.conditions.grammar import match_types, parse_conditions
from services.domain.conditions.model import AttributeRef
from services.domain.datatypes import Datatype, DatetimeFormat
from services.profiles.membership import Membership, compile_count
from services.profiles.repository import ProfilesRepository

SERVICE, OTHER_SERVICE = 1, 2
OPTIMIZELY, CRM, SHOP = 10, 11, 12
TABLES = (OPTIMIZELY, CRM, SHOP)
NOW = datetime(2024, 2, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp()) * 1000
DAY_MS = 86_400_000

KINDS: tuple[tuple[Datatype, DatetimeFormat | None], ...] = (
    (Datatype.STRING, None),
    (Datatype.BOOL, None),
    (Datatype.LONG, None),
    (Datatype.DOUBLE, None),
    (Datatype.DATETIME, DatetimeFormat.DATE),
    (Datatype.DATETIME, DatetimeFormat.DATETIME),
    (Datatype.DATETIME, DatetimeFormat.EPOCH),
)
# Attribute ids 101..107 belong to table 10, 111..117 to table 11 and so on; n8 is archived, n9 never existed.
REFS = {
    table * 10 + index: AttributeRef(table, table * 10 + index, datatype, fmt)
    for table in TABLES
    for index, (datatype, fmt) in enumerate(KINDS, start=1)
}
ARCHIVED = {table * 10 + 8 for table in TABLES}


def match_types_of(ref: AttributeRef) -> tuple[str, ...]:
    assert ref.datatype is not None, ref
    return match_types(ref.datatype, ref.format)


def lookup(datasource_id: int, attribute_id: int) -> AttributeRef | str:
    if attribute_id in ARCHIVED and attribute_id // 10 == datasource_id:
        return AttributeRef(datasource_id, attribute_id, Datatype.LONG, usable=False)
    ref = REFS.get(attribute_id)
    if ref is None or ref.datasource_id != datasource_id:
        return f"is not an attribute of table {datasource_id} of this DCP service"
    return ref


# Small domains, so conditions often hit and often miss, boundaries included.
DOMAINS: dict[tuple[Datatype | None, DatetimeFormat | None], list[Any]] = {
    (Datatype.STRING, None): ["", "a", "ab", "b", "ba", "B", "é", "zé"],
    (Datatype.BOOL, None): [True, False],
    (Datatype.LONG, None): [-3, 0, 1, 2, 5, 2**62],
    (Datatype.DOUBLE, None): [-1.5, 0.0, 0.1, 1.0, 2.5, 1e20],
    (Datatype.DATETIME, DatetimeFormat.DATE): [
        "2023-12-31",
        "2024-01-01",
        "2024-01-15",
        "2024-01-31",
        "2024-02-01",
        "2024-02-02",
    ],
    (Datatype.DATETIME, DatetimeFormat.DATETIME): [
        "2024-01-01T00:00:00Z",
        "2024-01-31T11:59:59Z",
        "2024-01-31T12:00:00Z",
        "2024-02-01T12:00:00Z",
        "2024-02-01T12:00:01Z",
    ],
    (Datatype.DATETIME, DatetimeFormat.EPOCH): [
        0,
        NOW_MS - DAY_MS - 1,
        NOW_MS - DAY_MS,
        NOW_MS - 1,
        NOW_MS,
        NOW_MS + 1,
    ],
}
# Values of another JSON type than an attribute's, or numbers of the other kind (a double stored as an integer).
ODD_VALUES: list[Any] = ["5", "2024-01-31", 5, 2, 1.5, True, False, [1], {"a": 1}]
SUBSTRINGS = ["a", "b", "B", "é", "ab", "zé"]
WITHIN_DAYS = [1, 2, 30, 31, 36_500]
USERS = ["a", "B", "b", "é", "_1", "10", "9", "Z", "zz", "a b", "user-1", "user-2", "user-10", "ü"]
CUSTOMERS = ["c1", "c2", "c3", "c4", "a", "B"]


@dataclass
class Dataset:
    profiles: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    """(table, customer id) → stored values."""
    links: dict[tuple[int, str, int], str] = field(default_factory=dict)
    """(service, Optimizely user, table) → customer id."""

    def universe(self) -> list[str]:
        users = {customer for table, customer in self.profiles if table == OPTIMIZELY}
        users |= {user for service, user, _ in self.links if service == SERVICE}
        return sorted(users)

    def consolidated(self, user: str) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        if (OPTIMIZELY, user) in self.profiles:
            found[OPTIMIZELY] = self.profiles[(OPTIMIZELY, user)]
        for (service, linked, table), customer in self.links.items():
            if service == SERVICE and linked == user and table != OPTIMIZELY and (table, customer) in self.profiles:
                found[table] = self.profiles[(table, customer)]
        return found


def stored_values(table: int) -> st.SearchStrategy[dict[str, Any]]:
    def one(attribute: int) -> st.SearchStrategy[Any]:
        ref = REFS[attribute]
        domain = st.sampled_from(DOMAINS[(ref.datatype, ref.format)])
        return st.one_of(domain, domain, domain, st.none(), st.sampled_from(ODD_VALUES))

    attributes = [a for a, ref in REFS.items() if ref.datasource_id == table] + [table * 10 + 8]
    return st.fixed_dictionaries({str(a): one(a) if a in REFS else st.none() | st.just(1) for a in attributes}).map(
        lambda values: {key: value for key, value in values.items() if value is not None}
    )


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    dataset = Dataset()
    for user in draw(st.lists(st.sampled_from(USERS), unique=True, min_size=4, max_size=len(USERS))):
        if draw(st.booleans()):
            dataset.profiles[(OPTIMIZELY, user)] = draw(stored_values(OPTIMIZELY))
        for table in (CRM, SHOP):
            if draw(st.booleans()):
                dataset.links[(SERVICE, user, table)] = draw(st.sampled_from([*CUSTOMERS, user]))
        if draw(st.integers(0, 9)) == 0:
            # A link to the Optimizely table itself adds the user but no values.
            dataset.links[(SERVICE, user, OPTIMIZELY)] = draw(st.sampled_from(CUSTOMERS))
        if draw(st.integers(0, 9)) == 0:
            # Another service's links are not this service's users.
            dataset.links[(OTHER_SERVICE, user + "-other", CRM)] = draw(st.sampled_from(CUSTOMERS))
    for table in (CRM, SHOP):
        for customer in [*CUSTOMERS, *USERS[:2]]:
            if draw(st.integers(0, 3)):
                dataset.profiles[(table, customer)] = draw(stored_values(table))
    return dataset


def condition_value(ref: AttributeRef, match_type: str) -> st.SearchStrategy[Any]:
    domain = DOMAINS[(ref.datatype, ref.format)]
    if ref.datatype == "double":
        domain = [*domain, 2, 0]
    if match_type == "exists":
        return st.none()
    if match_type == "substring":
        return st.sampled_from(SUBSTRINGS)
    if match_type == "within_last":
        return st.sampled_from(WITHIN_DAYS)
    if match_type == "in":
        return st.lists(st.sampled_from(domain), min_size=1, max_size=3)
    if match_type == "between":
        return st.lists(st.sampled_from(domain), min_size=2, max_size=2).map(sorted)
    return st.sampled_from(domain)


@st.composite
def leaves(draw: st.DrawFn, tables: Sequence[int]) -> dict[str, Any]:
    table = draw(st.sampled_from(tables))
    attribute = draw(st.sampled_from([*range(table * 10 + 1, table * 10 + 8), *range(table * 10 + 1, table * 10 + 10)]))
    ref = REFS.get(attribute)
    if ref is None:
        match_type, value = draw(st.sampled_from([("exists", None), ("exact", 1), ("gt", 0)]))
    else:
        match_type = draw(st.sampled_from(match_types_of(ref)))
        value = draw(condition_value(ref, match_type))
    leaf: dict[str, Any] = {
        "type": "dcp",
        "dcp_datasource_id": table,
        "dcp_attribute_id": attribute,
        "match_type": match_type,
    }
    if value is not None:
        leaf["value"] = value
    return leaf


@st.composite
def condition_trees(draw: st.DrawFn) -> list[Any]:
    tables = draw(st.sampled_from([(OPTIMIZELY,), (CRM,), (SHOP,), (OPTIMIZELY, CRM), (CRM, SHOP), TABLES]))

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.sampled_from(["and", "or"]), st.lists(children, min_size=1, max_size=3)).map(
                lambda group: [group[0], *group[1]]
            ),
            children.map(lambda child: ["not", child]),
        )

    subtrees = st.recursive(leaves(tables), extend, max_leaves=3)
    operator = draw(st.sampled_from(["and", "or", "or", "not"]))
    if operator == "not":
        return ["not", draw(subtrees)]
    return [operator, *draw(st.lists(subtrees, min_size=1, max_size=4))]


def _leaves_of(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, dict):
        return [raw]
    return [leaf for operand in raw[1:] for leaf in _leaves_of(operand)]


class Loader:
    """Writes a dataset through the repositories, skipping the work when it is the one already loaded."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.loaded: Dataset | None = None

    async def load(self, dataset: Dataset) -> None:
        if dataset == self.loaded:
            return
        self.loaded = None
        await self.pool.execute("TRUNCATE profiles.profiles, aliases.links")
        profiles = ProfilesRepository(self.pool)
        for (table, customer), values in dataset.profiles.items():
            await profiles.merge(table, customer, values)
        by_user: dict[tuple[int, str], dict[int, str]] = {}
        for (service, user, table), customer in dataset.links.items():
            by_user.setdefault((service, user), {})[table] = customer
        aliases = AliasesRepository(self.pool)
        for (service, user), links in by_user.items():
            await aliases.upsert(service, user, links)
        self.loaded = dataset


async def check_parity(
    membership: Membership, pool: asyncpg.Pool, dataset: Dataset, raw: Any, draw: st.DataObject
) -> None:
    node = parse_conditions(json.dumps(raw), lookup, strict=False)
    expected = []
    for user in dataset.universe():
        profiles = dataset.consolidated(user)
        matched = holds(node, profiles, now=NOW)
        assert evaluate(node, profiles, now=NOW).matched is matched
        if matched:
            expected.append(user)
    # Python orders strings by code point, as COLLATE "C" does.
    assert expected == sorted(expected)
    universe = dataset.universe()
    share = "none" if not expected else "all" if len(expected) == len(universe) else "some"
    everyone = holds(node, {}, now=NOW)
    tables = sorted({leaf["dcp_datasource_id"] for leaf in _leaves_of(raw)})
    event(f"members: {share}; tables {tables}{'; users without values too' if everyone else ''}")

    assert await membership.count(SERVICE, OPTIMIZELY, node, now=NOW) == len(expected), raw

    limit = draw.draw(st.sampled_from([1, 2, 3, 7, 100]), label="page size")
    pages: list[str] = []
    after: str | None = None
    while True:
        page = await membership.members(SERVICE, OPTIMIZELY, node, now=NOW, after=after, limit=limit)
        assert len(page) <= limit
        pages += page
        if len(page) < limit:
            break
        after = page[-1]
    assert pages == expected, raw
    # Paging may also start after an id that is nobody's.
    start = draw.draw(st.sampled_from(["", "0", "a", "b ", "user-", "zz", "\uffff"]), label="start after")
    page = await membership.members(SERVICE, OPTIMIZELY, node, now=NOW, after=start, limit=limit)
    assert page == [user for user in expected if user > start][:limit], raw

    tables = draw.draw(st.lists(st.sampled_from(TABLES), unique=True, max_size=3), label="exported tables")
    async with pool.acquire() as connection, connection.transaction():
        exported = [
            (user, values)
            async for user, values in membership.rows(
                connection, SERVICE, OPTIMIZELY, node, now=NOW, tables=tables, prefetch=3
            )
        ]
    assert [user for user, _ in exported] == expected, raw
    for user, values in exported:
        consolidated = dataset.consolidated(user)
        assert values == [consolidated.get(table) for table in tables], (user, raw)


@pytest.fixture
def membership(pool: asyncpg.Pool) -> Membership:
    return Membership(pool)


@pytest.fixture
def loader(pool: asyncpg.Pool) -> Loader:
    """One per test, so its examples share it: shrinking retries a dataset many times over."""
    return Loader(pool)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(dataset=datasets(), trees=st.lists(condition_trees(), min_size=1, max_size=6), data=st.data())
async def test_sql_membership_agrees_with_the_evaluator(
    pool: asyncpg.Pool,
    membership: Membership,
    loader: Loader,
    dataset: Dataset,
    trees: list[list[Any]],
    data: st.DataObject,
) -> None:
    await loader.load(dataset)
    for raw in trees:
        await check_parity(membership, pool, dataset, raw, data)


def every_condition_value(ref: AttributeRef, match_type: str) -> list[Any]:
    """Each value a leaf of this match type could take from the small domains, pairs for between and in."""
    domain = DOMAINS[(ref.datatype, ref.format)]
    if ref.datatype == "double":
        domain = [*domain, 2]
    if match_type == "exists":
        return [None]
    if match_type == "substring":
        return SUBSTRINGS
    if match_type == "within_last":
        return WITHIN_DAYS
    if match_type == "in":
        return [[value] for value in domain] + [domain[:2], domain[-2:]]
    if match_type == "between":
        ordered = sorted(domain)
        return [[low, high] for index, low in enumerate(ordered) for high in ordered[index:]]
    return domain


@pytest.mark.parametrize("kind", KINDS, ids=[f"{datatype}-{fmt}" for datatype, fmt in KINDS])
async def test_every_leaf_agrees_on_every_stored_value(
    pool: asyncpg.Pool, membership: Membership, loader: Loader, kind: tuple[Datatype, DatetimeFormat | None]
) -> None:
    """Each match type over each value, against a user per stored value (wrong types and absence included)."""
    attribute = OPTIMIZELY * 10 + KINDS.index(kind) + 1
    ref = REFS[attribute]
    stored: list[Any] = [*DOMAINS[kind], *ODD_VALUES, None]
    dataset = Dataset(
        profiles={
            (OPTIMIZELY, f"user-{index:02d}"): {} if value is None else {str(attribute): value}
            for index, value in enumerate(stored)
        }
    )
    await loader.load(dataset)
    checked = 0
    for match_type in match_types_of(ref):
        for value in every_condition_value(ref, match_type):
            leaf: dict[str, Any] = {
                "type": "dcp",
                "dcp_datasource_id": OPTIMIZELY,
                "dcp_attribute_id": attribute,
                "match_type": match_type,
            }
            if value is not None:
                leaf["value"] = value
            for raw in (["and", leaf], ["not", leaf]):
                node = parse_conditions(raw, lookup, strict=True)
                expected = [user for user in dataset.universe() if holds(node, dataset.consolidated(user), now=NOW)]
                got = await membership.members(SERVICE, OPTIMIZELY, node, now=NOW, after=None, limit=100)
                assert got == expected, raw
                checked += 1
    assert checked >= 2 * len(match_types_of(ref))


async def test_members_of_a_hand_made_audience(pool: asyncpg.Pool, membership: Membership) -> None:
    dataset = Dataset(
        profiles={
            (OPTIMIZELY, "anna"): {"103": 5},
            (OPTIMIZELY, "bob"): {"103": 1},
            (CRM, "crm-1"): {"111": "gold"},
            (CRM, "crm-2"): {"111": "silver"},
        },
        links={
            (SERVICE, "bob", CRM): "crm-1",
            (SERVICE, "carl", CRM): "crm-2",
            (SERVICE, "dora", SHOP): "shop-1",
            (OTHER_SERVICE, "eve", CRM): "crm-1",
        },
    )
    await Loader(pool).load(dataset)

    def leaf(table: int, attribute: int, match_type: str, value: Any = None) -> dict[str, Any]:
        found = {"type": "dcp", "dcp_datasource_id": table, "dcp_attribute_id": attribute, "match_type": match_type}
        return found if value is None else {**found, "value": value}

    cases: list[tuple[list[Any], list[str]]] = [
        (["or", leaf(OPTIMIZELY, 103, "gt", 2), leaf(CRM, 111, "exact", "gold")], ["anna", "bob"]),
        (["and", leaf(CRM, 111, "substring", "l")], ["bob", "carl"]),
        # Users with no values at all (dora) match a negated condition.
        (["not", leaf(CRM, 111, "exists")], ["anna", "dora"]),
        (["and", leaf(OPTIMIZELY, 103, "exists"), ["not", leaf(CRM, 111, "in", ["gold"])]], ["anna"]),
    ]
    for raw, members in cases:
        node = parse_conditions(raw, lookup, strict=True)
        assert await membership.members(SERVICE, OPTIMIZELY, node, now=NOW, after=None, limit=10) == members
        assert await membership.count(SERVICE, OPTIMIZELY, node, now=NOW) == len(members)
    assert await membership.count(SERVICE, OPTIMIZELY, None, now=NOW) == 0


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += plan_nodes(child)
    return found


def leaf_on(table: int, attribute: int) -> dict[str, Any]:
    return {"type": "dcp", "dcp_datasource_id": table, "dcp_attribute_id": attribute, "match_type": "gt", "value": 1}


@pytest.mark.parametrize(
    ("raw", "relations"),
    [
        # The Optimizely table alone: one scan of profiles, as a plain count of the table would do.
        (["and", leaf_on(OPTIMIZELY, 103), ["not", leaf_on(OPTIMIZELY, 104)]], ["profiles"]),
        # One other table: its links joined to its profiles, no union of every user.
        (["or", leaf_on(CRM, 113), leaf_on(CRM, 114)], ["links", "profiles"]),
    ],
)
async def test_a_count_over_one_table_reads_only_that_table(
    pool: asyncpg.Pool, loader: Loader, raw: list[Any], relations: list[str]
) -> None:
    await loader.load(Dataset(profiles={(OPTIMIZELY, f"u{i}"): {"103": i} for i in range(100)}))
    statement = compile_count(SERVICE, OPTIMIZELY, parse_conditions(raw, lookup, strict=True), now=NOW)
    assert statement is not None
    explained = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {statement.sql}", *statement.args)
    nodes = plan_nodes((json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"])
    assert sorted(node["Relation Name"] for node in nodes if "Relation Name" in node) == relations
    assert not {"Append", "SetOp", "Unique", "Subquery Scan"} & {node["Node Type"] for node in nodes}
