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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from services.domain.conditions.model import Leaf, Node
from services.domain.datatypes import DatetimeFormat
from services.domain.values import Stored, rule_of

Profiles = Mapping[int, Mapping[str, Any]]
"""Table id → that table's attribute values (keyed by attribute id as a string) for one Optimizely user."""
Predicate = Callable[[Profiles, datetime], bool]
_Found = TypeVar("_Found")


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
    compiled = _COMPILED.get(id(node)) or _compiled(node)
    held = compiled.explain(profiles, now if now.tzinfo is UTC else _utc(now))
    return compiled.explained.get(held) or compiled.outcome(held)


def explainer(node: Node | None) -> tuple[Callable[[Profiles, datetime], Held], Callable[[Held], Outcome]]:
    """`evaluate` in two steps, for a caller that keeps the tree and asks about many users.

    The first gives each leaf's result for a user (`now` aware and in UTC, see
    `utc`), the second the outcome of such a pattern of results; a caller can
    keep what it derives from an outcome under its pattern.
    """
    if node is None:
        return _no_leaves, _nobody
    compiled = _compiled(node)
    return compiled.explain, compiled.outcome


def explainer_of_all(nodes: Sequence[Node | None]) -> Callable[[Profiles, datetime], tuple[Held, ...]]:
    """The first step of `explainer` for many trees at once: each tree's leaf results, in order.

    The trees are checked by generated functions of up to _LEAVES_PER_CHECK
    leaves each, most often one: a service's audiences read the same few
    tables and attributes, which such a function fetches once each, and a user
    is checked against all of them in one call rather than one per audience
    (for 25 audiences of 5 leaves, two thirds of the time; fetching each of
    their 40 attributes once rather than for each of the 125 leaves took a
    third off that). The bound keeps each function quick to compile however
    many audiences a service has.
    """
    checks = [_explain_all(group) for group in _groups_and_starts(nodes)[0]]
    if len(checks) == 1:
        return checks[0]

    def explain_all(profiles: Profiles, now: datetime) -> tuple[Held, ...]:
        return tuple(held for check in checks for held in check(profiles, now))

    return explain_all


def finder_of_all(
    nodes: Sequence[Node | None], kept: Sequence[Mapping[int, _Found]], missed: Sequence[Callable[[Held], _Found]]
) -> Callable[[Profiles, datetime], list[_Found]]:
    """For one user, what each tree's `kept` holds under the user's pattern of leaf results, in order.

    A pattern is a number here, leaf i's result its bit i (see `pattern_of`),
    which hashes and compares faster than a tuple of results; the lookups run
    inside the generated function that checks the leaves (see
    `explainer_of_all`), with no list of patterns in between. For 25 audiences
    of 5 leaves, a sixth less time than finding each tuple's value. Each of
    `kept` is read as the same object for as long as the function is used. A
    pattern that `kept` does not hold (nor a value that is not true) is given
    to `missed` as the tuple of results, and what it returns takes its place;
    `missed` may keep it under `pattern_of(held)` for the next user.
    """
    finds = [_find_all(group, kept, missed, start) for group, start in zip(*_groups_and_starts(nodes), strict=True)]
    if len(finds) == 1:
        return finds[0]

    def find_all(profiles: Profiles, now: datetime) -> list[_Found]:
        return [found for find in finds for found in find(profiles, now)]

    return find_all


def pattern_of(held: Held) -> int:
    """Leaf results as the number `finder_of_all` looks them up by: bit i set when leaf i held."""
    return sum(1 << index for index, result in enumerate(held) if result)


def _groups_and_starts(nodes: Sequence[Node | None]) -> tuple[list[list[Node | None]], list[int]]:
    """The trees in runs of at most _LEAVES_PER_CHECK leaves (or one tree), and where each run starts."""
    groups: list[list[Node | None]] = [[]]
    starts = [0]
    leaves = 0
    for index, node in enumerate(nodes):
        count = 0 if node is None else len(_leaves(node))
        if groups[-1] and leaves + count > _LEAVES_PER_CHECK:
            groups.append([])
            starts.append(index)
            leaves = 0
        groups[-1].append(node)
        leaves += count
    return groups, starts


_LEAVES_PER_CHECK = 256


def _explain_all(nodes: Sequence[Node | None]) -> Callable[[Profiles, datetime], tuple[Held, ...]]:
    source = _Source(fetch_once=True)
    held_texts = []
    for node in nodes:
        expressions = [] if node is None else [source.leaf(leaf) for leaf in _leaves(node)]
        held_texts.append(_tuple_text(expressions))
    text = f"def explain_all(profiles, now):\n{source.prologue()}    return {_tuple_text(held_texts)}\n"
    code = compile(text, f"<conditions of {len(held_texts)} trees>", "exec")
    exec(code, source.names)  # noqa: S102 - see _functions: the text holds no user input
    explain_all: Callable[[Profiles, datetime], tuple[Held, ...]] = source.names["explain_all"]
    return explain_all


def _find_all(
    nodes: Sequence[Node | None],
    kept: Sequence[Mapping[int, _Found]],
    missed: Sequence[Callable[[Held], _Found]],
    start: int,
) -> Callable[[Profiles, datetime], list[_Found]]:
    source = _Source(fetch_once=True)
    finds = []
    for index, node in enumerate(nodes, start):
        leaves = [] if node is None else _leaves(node)
        expressions = [source.leaf(leaf) for leaf in leaves]
        # A leaf that held adds its bit; one that did not adds False, which is 0.
        pattern = " | ".join(f"({expression} and {1 << bit})" for bit, expression in enumerate(expressions)) or "0"
        look_up = source.bind(kept[index].get)
        on_miss = source.bind(functools.partial(_missed, missed[index], len(leaves)))
        finds.append(f"({look_up}(pattern := {pattern}) or {on_miss}(pattern))")
    text = f"def find_all(profiles, now):\n{source.prologue()}    return [{''.join(f'{find}, ' for find in finds)}]\n"
    code = compile(text, f"<conditions of {len(finds)} trees, looked up>", "exec")
    exec(code, source.names)  # noqa: S102 - see _functions: the text holds no user input
    find_all: Callable[[Profiles, datetime], list[_Found]] = source.names["find_all"]
    return find_all


def _missed(missed: Callable[[Held], _Found], leaves: int, pattern: int) -> _Found:
    return missed(tuple(pattern >> bit & 1 == 1 for bit in range(leaves)))


def utc(now: datetime) -> datetime:
    """`now` in UTC, as the explainers take it; a naive time is refused."""
    return now if now.tzinfo is UTC else _utc(now)


def holds(node: Node | None, profiles: Profiles, *, now: datetime) -> bool:
    """Whether the tree matches, short-circuiting; no conditions match nobody."""
    if node is None:
        return False
    # Checked here although only within_last reads it, so a naive `now` is refused whatever the tree.
    return (_COMPILED.get(id(node)) or _compiled(node)).holds(profiles, now if now.tzinfo is UTC else _utc(now))


def predicate(node: Node) -> Predicate:
    """The tree as one function of (profiles, aware UTC now), built once per tree."""
    return _compiled(node).holds


_NOBODY = Outcome(matched=False, leaves=())


def _no_leaves(profiles: Profiles, now: datetime) -> Held:
    return ()


def _nobody(held: Held) -> Outcome:
    return _NOBODY


Held = tuple[bool, ...]
"""Each leaf's result, in document order."""
# Every pattern of a tree of 5 leaves.
_EXPLAINED_MAX = 32


@dataclass(frozen=True)
class _Compiled:
    node: Node
    """Held, so that while the tree is cached no other object can take its id."""
    holds: Predicate
    explain: Callable[[Profiles, datetime], Held]
    """Every leaf's result, none skipped."""
    combine: Callable[[Held], bool]
    """The tree's result from every leaf's."""
    outcomes: tuple[tuple[LeafOutcome, LeafOutcome], ...]
    """Each leaf's outcome when it did not hold and when it did."""
    explained: dict[Held, Outcome] = field(default_factory=dict)
    """The outcome of each pattern of leaf results seen so far, up to _EXPLAINED_MAX of them."""

    def outcome(self, held: Held) -> Outcome:
        # Outcomes are immutable and a tree has few patterns of leaf results in practice,
        # so each pattern's outcome is built once: building one costs more than finding the pattern.
        outcome = self.explained.get(held)
        if outcome is None:
            outcome = Outcome(self.combine(held), tuple(map(operator.getitem, self.outcomes, held)))
            if len(self.explained) < _EXPLAINED_MAX:
                self.explained[held] = outcome
        return outcome


# Compiled trees by identity: audiences are parsed once and checked many times.
_COMPILED: dict[int, _Compiled] = {}
_COMPILED_MAX = 4096


def _compiled(node: Node) -> _Compiled:
    cached = _COMPILED.get(id(node))
    if cached is not None:
        return cached
    leaves = _leaves(node)
    holds, explain, combine = _functions(node, leaves)
    compiled = _Compiled(
        node=node,
        holds=holds,
        explain=explain,
        combine=combine,
        outcomes=tuple((_outcome(leaf, held=False), _outcome(leaf, held=True)) for leaf in leaves),
    )
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[id(node)] = compiled
    return compiled


def _leaves(node: Node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    return [leaf for operand in node.operands for leaf in _leaves(operand)]


def _outcome(leaf: Leaf, *, held: bool) -> LeafOutcome:
    ref = leaf.attribute
    return LeafOutcome(leaf.path, ref.datasource_id, ref.attribute_id, leaf.match_type, held, ref.usable)


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


# A tree runs as one generated Python function: a leaf is an inline expression
# and a group Python's own short-circuiting `and` / `or`, so checking an audience
# costs one call rather than one per leaf and group (bench/engine_bench.py
# measured 4 times the speed of the tree of closures this replaced). The
# source holds only names this module makes up, int literals and the repr of
# attribute keys; every condition value is bound by name in the function's
# globals, so no user text is ever compiled.


def _functions(
    node: Node, leaves: list[Leaf]
) -> tuple[Predicate, Callable[[Profiles, datetime], Held], Callable[[Held], bool]]:
    source = _Source()
    position = {id(leaf): index for index, leaf in enumerate(leaves)}
    # Every leaf's expression first, so the table prologue names every table read.
    expressions = [source.leaf(leaf) for leaf in leaves]
    decides = _tree(node, lambda leaf: expressions[position[id(leaf)]])
    combines = _tree(node, lambda leaf: f"held[{position[id(leaf)]}]")
    prologue = source.prologue()
    text = (
        f"def holds(profiles, now):\n{prologue}    return {decides}\n\n"
        f"def explain(profiles, now):\n{prologue}    return {_tuple_text(expressions)}\n\n"
        f"def combine(held):\n    return {combines}\n"
    )
    code = compile(text, f"<conditions at {node.path}>", "exec")
    exec(code, source.names)  # noqa: S102 - see above: the text holds no user input
    return source.names["holds"], source.names["explain"], source.names["combine"]


def _tuple_text(items: Sequence[str]) -> str:
    """A tuple display of the expressions, a trailing comma after each so that one makes a tuple too."""
    return f"({''.join(f'{item}, ' for item in items)})"


def _tree(node: Node, leaf_text: Callable[[Leaf], str]) -> str:
    if isinstance(node, Leaf):
        return leaf_text(node)
    parts = [_tree(operand, leaf_text) for operand in node.operands]
    if node.operator == "not":
        return f"(not {parts[0]})"
    return "(" + f" {node.operator} ".join(parts) + ")"


# Each comparison with the condition's value on the left, as `value OP stored`: "stored > value" is "value < stored".
_VALUE_FIRST = {
    "exact": "==",
    "gt": "<",
    "ge": "<=",
    "lt": ">",
    "le": ">=",
    "before": ">",
    "after": "<",
}
# The Python types a stored value of each kind decodes to; bool is not a number here.
_KIND_TEST = {
    Stored.TEXT: "type(stored := {data}.get({key})) is str",
    Stored.BOOLEAN: "type(stored := {data}.get({key})) is bool",
    Stored.INTEGER: "type(stored := {data}.get({key})) in _NUMBER",
    Stored.FLOAT: "type(stored := {data}.get({key})) in _NUMBER",
}

# A value fetched once is kept only when it is of the kind its leaves compare (doubles as doubles), else
# None: each leaf then tests it against None rather than calling type() on it again.
_OF_KIND = {
    Stored.TEXT: "{stored} if type({stored}) is str else None",
    Stored.BOOLEAN: "{stored} if type({stored}) is bool else None",
    Stored.INTEGER: "{stored} if type({stored}) in _NUMBER else None",
    Stored.FLOAT: "float({stored}) if type({stored}) in _NUMBER else None",
}


class _Source:
    """What generated functions read: the tables and values they fetch and the values they compare with.

    With `fetch_once`, each attribute a leaf reads is fetched and its kind
    checked once, at the top, for functions that check every leaf: most
    attributes are read by more than one leaf of a service's audiences.
    Functions that stop at a tree's first deciding leaf fetch as they go.
    """

    def __init__(self, *, fetch_once: bool = False) -> None:
        self.names: dict[str, Any] = {"_EMPTY": _EMPTY, "_NUMBER": _NUMBER}
        self.tables: dict[int, str] = {}
        """Table id → the local holding its values."""
        self.fetch_once = fetch_once
        self.values: dict[tuple[str, str, Stored], str] = {}
        """(table local, attribute key, kind) → the local holding the value of that kind or None, when fetched once."""

    def prologue(self) -> str:
        """The lines that fetch each table read, and with `fetch_once` each value, at the top of a function."""
        tables = "".join(f"    {local} = profiles.get({table}) or _EMPTY\n" for table, local in self.tables.items())
        values = "".join(
            f"    {local} = {data}.get({key})\n    {local} = {_OF_KIND[kind].format(stored=local)}\n"
            for (data, key, kind), local in self.values.items()
        )
        return tables + values

    def bind(self, value: Any) -> str:
        name = f"_value{len(self.names)}"
        self.names[name] = value
        return name

    def leaf(self, leaf: Leaf) -> str:
        """The leaf as an expression over the table locals, `profiles` and `now`."""
        ref = leaf.attribute
        if not ref.usable or ref.datatype is None:
            return "False"
        stored_as = rule_of(ref.datatype, ref.format).stored
        data = self.tables.setdefault(int(ref.datasource_id), f"table{len(self.tables)}")
        key = repr(str(ref.key))
        if self.fetch_once:
            local = self.values.setdefault((data, key, stored_as), f"stored{len(self.values)}")
            present = f"{local} is not None"
            # Already a double when the attribute is one.
            stored = local
        else:
            local = "stored"
            present = _KIND_TEST[stored_as].format(data=data, key=key)
            # Doubles compare as doubles whatever the stored JSON number decodes to.
            stored = "float(stored)" if stored_as is Stored.FLOAT else "stored"
        match_type, value = leaf.match_type, leaf.value
        if match_type == "exists":
            return f"({present})"
        if match_type == "within_last":
            return f"({present} and {self.bind(functools.partial(_within, leaf))}({local}, now))"
        if match_type in _VALUE_FIRST:
            return f"({present} and {self.bind(value)} {_VALUE_FIRST[match_type]} {stored})"
        if match_type == "substring":
            return f"({present} and {self.bind(value)} in {stored})"
        if match_type == "in":
            return f"({present} and {stored} in {self.bind(frozenset(value))})"
        if match_type == "between":
            low, high = value
            return f"({present} and {self.bind(low)} <= {stored} <= {self.bind(high)})"
        raise ValueError(f"unknown match type {match_type!r}")


def _within(leaf: Leaf, stored: Any, now: datetime) -> bool:
    start, end = window(leaf, now)
    return bool(start <= stored <= end)


# A table the profile has no row in: every key of it is missing.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NUMBER = frozenset({int, float})
