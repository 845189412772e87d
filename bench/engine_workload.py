"""One audience workload, stated once and expressed for both DCP's evaluator and flagsmith-flag-engine.

The workload: 10 typed attributes over two tables, 25 audiences of 5
conditions (one each of exact, gt, lt, substring and exists, in a random
nesting of and/or groups), and users whose profiles hold some of the
attributes. Each audience is written as the v1 conditions JSON a user sends;
the Flagsmith segment is translated from that same JSON, and each user's
profile becomes an identity whose traits carry the same values.

The two engines are defined differently in places; the workload keeps to
where their definitions agree, so that any difference is a bug:

- Flagsmith reads a string trait that looks like a number as that number
  ("42" is 42), so no string value or condition value looks like one.
- A Flagsmith condition value is text, cast to the type of the trait it is
  compared with: `int()` for an integer trait, `float()` for a float trait,
  "anything but 'false'" for a boolean trait. Long conditions therefore carry
  integers, double conditions the `repr` of a float (read back exactly), and
  bool conditions "true" or "false". Doubles are always Python floats: a
  double trait held as an int would cast "12.5" with `int()` and never match.
- Flagsmith has no date type. DCP compares date and date-time values as fixed
  format text, by code point, and epoch values as integers; Flagsmith compares
  the same strings and integers, so gt and lt on all three agree.
- A missing value fails every condition in both engines except IS_SET, whose
  DCP counterpart `exists` also asks for the attribute's JSON type; every
  stored value here has its attribute's type, so the two agree.
- Exact is not used on doubles (both would compare IEEE doubles, but an exact
  float match is not a condition anyone writes), nor substring on anything but
  strings, nor any value ending in ":semver" (Flagsmith's semver switch).
- A Flagsmith rule holds when its conditions and its sub-rules each meet the
  rule's type, so an ANY rule holding conditions and sub-rules would mean
  "(any condition) and (any sub-rule)". An "or" that mixes conditions and
  groups is therefore written with each condition in a one-condition ALL rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flag_engine.context.types import EvaluationContext, SegmentContext, SegmentRule, StrValueSegmentCondition
from flag_engine.segments.evaluator import get_evaluation_result, is_context_in_segment
from flag_engine.segments.types import ConditionOperator, RuleType

from services.domain.conditions.evaluate import Profiles, evaluate, holds
from services.domain.conditions.grammar import parse_conditions
from services.domain.conditions.model import AttributeRef, Node
from services.domain.datatypes import Datatype, DatetimeFormat

AUDIENCES = 25
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ENVIRONMENT = {"key": "bench", "name": "bench"}

_WORDS = ("jeans", "shoes", "hats", "bags", "socks", "coats", "scarves", "boots")
_DAY_ZERO = date(2019, 1, 1)


@dataclass(frozen=True)
class Attribute:
    table: int
    id: int
    trait: str
    """The Flagsmith trait key holding the same value."""
    datatype: Datatype
    format: DatetimeFormat | None
    draw: Callable[[random.Random], Any]
    """A stored value, as DCP holds it (and as the trait carries it)."""

    @property
    def ref(self) -> AttributeRef:
        return AttributeRef(self.table, self.id, self.datatype, self.format)


def _day(rng: random.Random) -> date:
    return _DAY_ZERO + timedelta(days=rng.randrange(6 * 365))


def _moment(rng: random.Random) -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(500 * 86_400))


def _interests(rng: random.Random) -> str:
    return ",".join(rng.sample(_WORDS, k=rng.randint(1, 3)))


OPTIMIZELY_TABLE, ORDERS_TABLE = 101, 102
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        OPTIMIZELY_TABLE,
        1,
        "plan",
        Datatype.STRING,
        None,
        lambda rng: rng.choice(("free", "basic", "pro", "team", "enterprise")),
    ),
    Attribute(
        OPTIMIZELY_TABLE,
        2,
        "country",
        Datatype.STRING,
        None,
        lambda rng: rng.choice(("france", "germany", "japan", "brazil", "canada", "kenya")),
    ),
    Attribute(OPTIMIZELY_TABLE, 3, "subscribed", Datatype.BOOL, None, lambda rng: rng.random() < 0.5),
    Attribute(OPTIMIZELY_TABLE, 4, "visits", Datatype.LONG, None, lambda rng: rng.randrange(-50, 100_000)),
    Attribute(
        OPTIMIZELY_TABLE,
        5,
        "signup_date",
        Datatype.DATETIME,
        DatetimeFormat.DATE,
        lambda rng: _day(rng).isoformat(),
    ),
    Attribute(ORDERS_TABLE, 6, "interests", Datatype.STRING, None, _interests),
    Attribute(ORDERS_TABLE, 7, "orders", Datatype.LONG, None, lambda rng: rng.randrange(0, 40)),
    Attribute(ORDERS_TABLE, 8, "spend", Datatype.DOUBLE, None, lambda rng: round(rng.uniform(0, 5000), 2)),
    Attribute(
        ORDERS_TABLE,
        9,
        "last_seen",
        Datatype.DATETIME,
        DatetimeFormat.DATETIME,
        lambda rng: _moment(rng).strftime("%Y-%m-%dT%H:%M:%SZ"),
    ),
    Attribute(
        ORDERS_TABLE,
        10,
        "last_order",
        Datatype.DATETIME,
        DatetimeFormat.EPOCH,
        lambda rng: int(_moment(rng).timestamp() * 1000),
    ),
)
_BY_KEY = {(attribute.table, attribute.id): attribute for attribute in ATTRIBUTES}

# Which attributes each match type is drawn over (see the module docstring).
_EXACT = tuple(a for a in ATTRIBUTES if a.datatype is not Datatype.DOUBLE)
_ORDERED = tuple(a for a in ATTRIBUTES if a.datatype in (Datatype.LONG, Datatype.DOUBLE, Datatype.DATETIME))
_TEXT = tuple(a for a in ATTRIBUTES if a.datatype is Datatype.STRING)
_MATCH_TYPES = ("exact", "gt", "lt", "substring", "exists")

# How 5 conditions nest; each "L" is a condition. An audience builder's usual shapes.
_SHAPES: tuple[list[Any], ...] = (
    ["and", "L", "L", ["or", "L", "L", "L"]],
    ["or", ["and", "L", "L"], ["and", "L", "L", "L"]],
    ["and", "L", ["or", "L", ["and", "L", "L"]], "L"],
    ["and", ["or", "L", "L"], ["or", "L", "L"], "L"],
    ["or", "L", ["and", "L", "L", ["or", "L", "L"]]],
)

_OPERATOR: dict[str, ConditionOperator] = {
    "exact": "EQUAL",
    "gt": "GREATER_THAN",
    "lt": "LESS_THAN",
    "substring": "CONTAINS",
    "exists": "IS_SET",
}
_RULE_TYPE: dict[str, RuleType] = {"and": "ALL", "or": "ANY", "not": "NONE"}


@dataclass(frozen=True)
class Workload:
    conditions: tuple[list[Any], ...]
    """Each audience as the v1 conditions JSON."""
    nodes: tuple[Node, ...]
    """Each audience parsed by DCP's grammar, as the service holds it."""
    segments: dict[str, SegmentContext[Any, Any]]
    """Each audience as a Flagsmith segment, keyed by its index as text."""
    profiles: tuple[Profiles, ...]
    """Each user's consolidated profile, as DCP reads it."""
    contexts: tuple[EvaluationContext[Any, Any], ...]
    """Each user as a Flagsmith evaluation context holding every segment."""


def build(users: int, *, seed: int = 7, audiences: int = AUDIENCES) -> Workload:
    rng = random.Random(seed)
    conditions = tuple(audience(rng) for _ in range(audiences))
    nodes = tuple(parse_conditions(document, _lookup, strict=True) for document in conditions)
    segments = {str(index): segment(index, document) for index, document in enumerate(conditions)}
    stored = [_user_values(rng) for _ in range(users)]
    profiles = tuple(_profiles(values) for values in stored)
    contexts = tuple(_context(f"user-{index}", values, segments) for index, values in enumerate(stored))
    assert all(node is not None for node in nodes)
    return Workload(conditions, tuple(node for node in nodes if node is not None), segments, profiles, contexts)


def _lookup(datasource_id: int, attribute_id: int) -> AttributeRef | str:
    attribute = _BY_KEY.get((datasource_id, attribute_id))
    return attribute.ref if attribute else f"no attribute {attribute_id} in table {datasource_id}"


def audience(rng: random.Random) -> list[Any]:
    """One audience: a random shape holding one condition of each match type, in random order."""
    match_types = rng.sample(_MATCH_TYPES, k=len(_MATCH_TYPES))

    def fill(shape: list[Any]) -> list[Any]:
        operator, *operands = shape
        return [
            operator,
            *(fill(part) if isinstance(part, list) else _condition(match_types.pop(), rng) for part in operands),
        ]

    return fill(rng.choice(_SHAPES))


def _condition(match_type: str, rng: random.Random) -> dict[str, Any]:
    pool = {"exact": _EXACT, "gt": _ORDERED, "lt": _ORDERED, "substring": _TEXT, "exists": ATTRIBUTES}[match_type]
    attribute = rng.choice(pool)
    leaf: dict[str, Any] = {
        "type": "dcp",
        "dcp_datasource_id": attribute.table,
        "dcp_attribute_id": attribute.id,
        "match_type": match_type,
    }
    if match_type == "substring":
        # A word, or a piece of one, that some values hold.
        source = rng.choice((*_WORDS, "free", "pro", "enterprise", "france", "japan", "canada"))
        start = rng.randrange(len(source) - 2)
        leaf["value"] = source[start : start + rng.randint(3, len(source) - start)]
    elif match_type != "exists":
        # A value from the attribute's own distribution: about half the users are on each side.
        leaf["value"] = attribute.draw(rng)
    return leaf


def segment(index: int, document: list[Any]) -> SegmentContext[Any, Any]:
    """The audience as a Flagsmith segment with one top-level rule."""
    return {"key": str(index), "name": str(index), "rules": [_rule(document)]}


def _rule(group: list[Any]) -> SegmentRule:
    operator, *operands = group
    rule_type = _RULE_TYPE[operator]
    leaves = [operand for operand in operands if isinstance(operand, dict)]
    groups = [operand for operand in operands if isinstance(operand, list)]
    if leaves and groups and rule_type != "ALL":
        # See the module docstring: each condition becomes a sub-rule of its own.
        wrapped: list[SegmentRule] = [
            _rule(operand)
            if isinstance(operand, list)
            else {"type": "ALL", "conditions": [_flagsmith_condition(operand)]}
            for operand in operands
        ]
        return {"type": rule_type, "rules": wrapped}
    rule: SegmentRule = {"type": rule_type}
    if leaves:
        rule["conditions"] = [_flagsmith_condition(leaf) for leaf in leaves]
    if groups:
        rule["rules"] = [_rule(operand) for operand in groups]
    return rule


def _flagsmith_condition(leaf: Mapping[str, Any]) -> StrValueSegmentCondition:
    attribute = _BY_KEY[(leaf["dcp_datasource_id"], leaf["dcp_attribute_id"])]
    return StrValueSegmentCondition(
        property=attribute.trait, operator=_OPERATOR[leaf["match_type"]], value=_text(leaf.get("value"))
    )


def _text(value: Any) -> str:
    """A condition value as Flagsmith holds it: text, cast back to the trait's type when compared."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _user_values(rng: random.Random) -> dict[Attribute, Any]:
    """One user's values; some attributes are unset, and some users have no row in the orders table."""
    without_orders = rng.random() < 0.1
    return {
        attribute: attribute.draw(rng)
        for attribute in ATTRIBUTES
        if rng.random() < 0.85 and not (without_orders and attribute.table == ORDERS_TABLE)
    }


def _profiles(values: Mapping[Attribute, Any]) -> Profiles:
    tables: dict[int, dict[str, Any]] = {}
    for attribute, value in values.items():
        tables.setdefault(attribute.table, {})[str(attribute.id)] = value
    return tables


def _context(
    identifier: str, values: Mapping[Attribute, Any], segments: dict[str, SegmentContext[Any, Any]]
) -> EvaluationContext[Any, Any]:
    return {
        "environment": {"key": ENVIRONMENT["key"], "name": ENVIRONMENT["name"]},
        "identity": {
            "identifier": identifier,
            "key": f"{ENVIRONMENT['key']}_{identifier}",
            "traits": {attribute.trait: value for attribute, value in values.items()},
        },
        "segments": segments,
    }


# The engines, one user against every audience, as an integration calls each.


def dcp_members(nodes: Sequence[Node], profiles: Profiles, now: datetime) -> list[bool]:
    """Whether the user is in each audience (DCP, membership only)."""
    return [holds(node, profiles, now=now) for node in nodes]


def dcp_outcomes(nodes: Sequence[Node], profiles: Profiles, now: datetime) -> list[bool]:
    """Whether the user is in each audience, with every condition's outcome (what EvaluateAudiences answers)."""
    return [evaluate(node, profiles, now=now).matched for node in nodes]


def flagsmith_members(context: EvaluationContext[Any, Any]) -> set[str]:
    """The keys of the segments the identity is in (flag-engine's evaluation entry point)."""
    return {result["name"] for result in get_evaluation_result(context)["segments"]}


def flagsmith_segment_checks(context: EvaluationContext[Any, Any]) -> list[bool]:
    """Whether the identity is in each segment, asked one segment at a time (flag-engine's segment check)."""
    return [is_context_in_segment(context, segment) for segment in context.get("segments", {}).values()]


@dataclass(frozen=True)
class Disagreement:
    user: int
    audience: int
    dcp: bool
    flagsmith: bool
    how: str
    """Which pair of entry points disagreed."""


def disagreements(workload: Workload, *, now: datetime = NOW) -> list[Disagreement]:
    """Every (user, audience) pair on which any two of the entry points differ."""
    found: list[Disagreement] = []
    for user, (profiles, context) in enumerate(zip(workload.profiles, workload.contexts, strict=True)):
        members = dcp_members(workload.nodes, profiles, now)
        outcomes = dcp_outcomes(workload.nodes, profiles, now)
        in_segments = flagsmith_members(context)
        checks = flagsmith_segment_checks(context)
        for index, member in enumerate(members):
            for how, ours, theirs in (
                ("holds / get_evaluation_result", member, str(index) in in_segments),
                ("holds / is_context_in_segment", member, checks[index]),
                ("evaluate / holds", outcomes[index], member),
            ):
                if ours != theirs:
                    found.append(Disagreement(user, index, ours, theirs, how))
    return found


def match_rate(workload: Workload, *, now: datetime = NOW) -> float:
    """The share of (user, audience) pairs that match: far from 0 and 1, the agreement means something."""
    matched = sum(sum(dcp_members(workload.nodes, profiles, now)) for profiles in workload.profiles)
    return matched / (len(workload.profiles) * len(workload.nodes))
