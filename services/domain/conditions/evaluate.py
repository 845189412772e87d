"""Whether a consolidated profile meets a condition tree, in process.

The SQL compiler in services/profiles/membership.py states the same rules for
stored rows; the two must agree on every profile, which the parity test
checks. The rules:

- A value is missing when its table or key is absent, it is JSON null, or its
  JSON type does not suit the attribute's datatype (a number for a string
  attribute, say). A leaf over a missing value is false, whatever its match
  type; `not` flips it. There is no third truth value.
- Strings, including date and date-time strings, compare by code point (the
  fixed formats make that time order); substring is case-sensitive and literal.
- long and epoch values compare as exact numbers, doubles as IEEE doubles (a
  stored double may come back as an integer: 1e20 as 100000000000000000000).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.domain.conditions.model import Leaf, Node
from services.domain.datatypes import DatetimeFormat
from services.domain.values import Stored, rule_of

Profiles = Mapping[int, Mapping[str, Any]]
"""Table id → that table's attribute values (keyed by attribute id as a string) for one Optimizely user."""
Predicate = Callable[[Profiles, datetime], bool]


@dataclass(frozen=True)
class LeafOutcome:
    """Whether one leaf held, for explaining a match to a user."""

    path: str
    datasource_id: int
    attribute_id: int
    match_type: str
    held: bool
    usable: bool = True
    """False when its attribute or table was archived after the audience was saved: it never holds."""


@dataclass(frozen=True)
class Outcome:
    matched: bool
    leaves: tuple[LeafOutcome, ...]
    """Every leaf in document order, including those a short-circuit would have skipped."""


def evaluate(node: Node | None, profiles: Profiles, *, now: datetime) -> Outcome:
    """Whether the tree matches, with every leaf's result; no conditions match nobody."""
    if node is None:
        return _NOBODY
    compiled = _compiled(node)
    now = _utc(now)
    held = [test(profiles, now) for test in compiled.tests]
    return Outcome(
        matched=compiled.combine(held),
        leaves=tuple(outcomes[result] for outcomes, result in zip(compiled.outcomes, held, strict=True)),
    )


def holds(node: Node | None, profiles: Profiles, *, now: datetime) -> bool:
    """Whether the tree matches, short-circuiting; no conditions match nobody."""
    if node is None:
        return False
    return _compiled(node).holds(profiles, _utc(now))


def predicate(node: Node) -> Predicate:
    """The tree as one function of (profiles, aware UTC now), built once per tree."""
    return _compiled(node).holds


_NOBODY = Outcome(matched=False, leaves=())


@dataclass(frozen=True)
class _Compiled:
    holds: Predicate
    tests: tuple[Predicate, ...]
    """Each leaf's test, in document order."""
    combine: Callable[[Sequence[bool]], bool]
    """The tree's result from every leaf's, in document order."""
    outcomes: tuple[tuple[LeafOutcome, LeafOutcome], ...]
    """Each leaf's outcome when it did not hold and when it did: explaining allocates nothing."""


# Compiled trees by identity: audiences are parsed once and checked many
# times. The entry holds the tree, so its id cannot be reused while cached.
_COMPILED: dict[int, tuple[Node, _Compiled]] = {}
_COMPILED_MAX = 4096


def _compiled(node: Node) -> _Compiled:
    cached = _COMPILED.get(id(node))
    if cached is not None and cached[0] is node:
        return cached[1]
    leaves = _leaves(node)
    position = {id(leaf): index for index, leaf in enumerate(leaves)}
    tests = tuple(_leaf_predicate(leaf) for leaf in leaves)
    compiled = _Compiled(
        holds=_compile(node, lambda leaf: tests[position[id(leaf)]]),
        tests=tests,
        combine=_combiner(node, position),
        outcomes=tuple((_outcome(leaf, held=False), _outcome(leaf, held=True)) for leaf in leaves),
    )
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[id(node)] = (node, compiled)
    return compiled


def _leaves(node: Node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    return [leaf for operand in node.operands for leaf in _leaves(operand)]


def _outcome(leaf: Leaf, *, held: bool) -> LeafOutcome:
    ref = leaf.attribute
    return LeafOutcome(leaf.path, ref.datasource_id, ref.attribute_id, leaf.match_type, held, ref.usable)


def _combiner(node: Node, position: dict[int, int]) -> Callable[[Sequence[bool]], bool]:
    if isinstance(node, Leaf):
        index = position[id(node)]
        return lambda held: held[index]
    parts = tuple(_combiner(operand, position) for operand in node.operands)
    if node.operator == "not":
        (inner,) = parts
        return lambda held: not inner(held)
    if node.operator == "and":
        return lambda held: all(part(held) for part in parts)
    return lambda held: any(part(held) for part in parts)


def window(leaf: Leaf, now: datetime) -> tuple[Any, Any]:
    """The inclusive (low, high) a within_last leaf's value must lie in, in the attribute's stored form.

    low is now minus the days, high is now; each is rounded inwards to the
    format's precision (a date holds for the whole day), so a stored value is
    inside exactly when the instant it names is.
    """
    now = _utc(now)
    days = int(leaf.value)
    fmt = leaf.attribute.format
    if fmt is DatetimeFormat.EPOCH:
        micros = (now - _EPOCH) // timedelta(microseconds=1)
        low_micros = micros - days * 86_400_000_000
        return -(-low_micros // 1000), micros // 1000
    start = now - timedelta(days=days)
    if fmt is DatetimeFormat.DATE:
        return _date_text(start), _date_text(now)
    if start.microsecond:
        start = start.replace(microsecond=0) + timedelta(seconds=1)
    return _datetime_text(start), _datetime_text(now)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _date_text(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"


def _datetime_text(moment: datetime) -> str:
    return f"{_date_text(moment)}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"


def _compile(node: Node, test_of: Callable[[Leaf], Predicate]) -> Predicate:
    if isinstance(node, Leaf):
        return test_of(node)
    parts = tuple(_compile(operand, test_of) for operand in node.operands)
    if node.operator == "not":
        (inner,) = parts
        return lambda profiles, now: not inner(profiles, now)
    if len(parts) == 1:
        return parts[0]
    if node.operator == "and":

        def every(profiles: Profiles, now: datetime) -> bool:
            return all(part(profiles, now) for part in parts)

        return every

    def some(profiles: Profiles, now: datetime) -> bool:
        return any(part(profiles, now) for part in parts)

    return some


_NEVER: Predicate = lambda profiles, now: False  # noqa: E731
# The Python types a stored value of each kind decodes to; bool is not a number here.
_STRING = frozenset({str})
_NUMBER = frozenset({int, float})
_BOOL = frozenset({bool})
# Each comparison with the condition's value bound first, so `check(stored)` is one C call:
# "stored > value" is "value < stored".
_BOUND_FIRST: dict[str, Callable[[Any, Any], bool]] = {
    "exact": operator.eq,
    "gt": operator.lt,
    "ge": operator.le,
    "lt": operator.gt,
    "le": operator.ge,
    "before": operator.gt,
    "after": operator.lt,
}


def _leaf_predicate(leaf: Leaf) -> Predicate:
    ref = leaf.attribute
    if not ref.usable:
        return _NEVER
    table, key, match_type, value = ref.datasource_id, ref.key, leaf.match_type, leaf.value
    if ref.datatype is None:
        return _NEVER
    stored = rule_of(ref.datatype, ref.format).stored
    kinds = _kinds(stored)
    # Doubles compare as doubles whatever the stored JSON number decodes to.
    double = stored is Stored.FLOAT

    if match_type == "exists":

        def exists(profiles: Profiles, now: datetime) -> bool:
            data = profiles.get(table)
            return data is not None and type(data.get(key)) in kinds

        return exists
    if match_type == "within_last":

        def within(profiles: Profiles, now: datetime) -> bool:
            data = profiles.get(table)
            if data is None:
                return False
            stored: Any = data.get(key)
            if type(stored) not in kinds:
                return False
            start, end = window(leaf, now)
            return bool(start <= stored <= end)

        return within

    check = _check(match_type, value)

    def test(profiles: Profiles, now: datetime) -> bool:
        data = profiles.get(table)
        if data is None:
            return False
        stored: Any = data.get(key)
        if type(stored) not in kinds:
            return False
        return check(float(stored) if double else stored)

    return test


def _check(match_type: str, value: Any) -> Callable[[Any], bool]:
    """Whether a present value of the right type meets the condition."""
    if match_type in _BOUND_FIRST:
        return functools.partial(_BOUND_FIRST[match_type], value)
    if match_type == "substring":
        return lambda stored: value in stored
    if match_type == "in":
        return frozenset(value).__contains__
    if match_type == "between":
        low, high = value
        return lambda stored: bool(low <= stored <= high)
    raise ValueError(f"unknown match type {match_type!r}")


def _kinds(stored: Stored) -> frozenset[type]:
    if stored is Stored.TEXT:
        return _STRING
    if stored is Stored.BOOLEAN:
        return _BOOL
    return _NUMBER
