"""The v1 audience conditions grammar: user JSON in, a checked condition tree out.

A condition tree is `["and" | "or" | "not", operand, ...]`, an operand being
another such list or a leaf object naming a DCP attribute, a match type and a
value. Every problem found is reported at once, each at the JSON path of the
part at fault, so a user can fix a whole audience in one round.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

from services._runtime.errors import InvalidArgument
from services.domain.conditions.model import (
    MATCH_TYPES,
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_LEAVES,
    MAX_WITHIN_LAST_DAYS,
    OPERATORS,
    AttributeRef,
    Group,
    Leaf,
    Node,
)
from services.domain.datatypes import AttributeSpec, Datatype, DatetimeFormat
from services.domain.values import LONG_MAX, LONG_MIN, Stored, ValueProblem, check_json_value, describe, rule_of

AttributeLookup = Callable[[int, int], AttributeRef | str]
"""(datasource id, attribute id) → the attribute, or why it cannot be used in this DCP service's conditions."""

MAX_VIOLATIONS = 100
ROOT = "conditions"

_LEAF_FIELDS = ("type", "dcp_datasource_id", "dcp_attribute_id", "match_type", "value", "name")
_ORDERED = ("exists", "exact", "in", "gt", "ge", "lt", "le", "between")


def match_types(datatype: Datatype, format: DatetimeFormat | None) -> tuple[str, ...]:
    """The match types a leaf may use on an attribute, from how its values are held and compare."""
    rule = rule_of(datatype, format)
    if rule.stored is Stored.BOOLEAN:
        return ("exists", "exact")
    if rule.temporal:
        return (*_ORDERED, "before", "after", "within_last")
    if rule.stored is Stored.TEXT:
        return ("exists", "exact", "substring", "in")
    return _ORDERED


# What a user who means a pattern is likely to type; literal text rarely looks like this.
_REGEX_HINTS = (".*", ".+", "\\", "(?")


class _Violations:
    """Problems found so far, capped so a huge bad document cannot make a huge error."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        if len(self.found) < MAX_VIOLATIONS:
            self.found.append((path, reason))

    def raise_if_any(self) -> None:
        if self.found:
            _fail(self.found)


def _fail(violations: list[tuple[str, str]]) -> NoReturn:
    shown = "; ".join(f"{path}: {reason}" for path, reason in violations[:5])
    more = len(violations) - 5
    if more > 0:
        shown += f"; and {more} more problem{'s' if more > 1 else ''}"
    raise InvalidArgument(shown, violations=violations)


def parse_conditions(raw: Any, lookup: AttributeLookup, *, strict: bool) -> Node | None:
    """The checked tree of a v1 `conditions` value; None when there are no conditions (the audience matches nobody).

    `raw` is the decoded JSON array, or a string holding it as v1 sends it; an
    absent value (None), "" and an empty array mean no conditions. With
    `strict`, every leaf must name an attribute `lookup` accepts as usable;
    without it, such leaves become conditions that never hold. Any problem
    raises InvalidArgument listing each violation at its path.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    document = decode_text(raw) if isinstance(raw, str) else raw
    if isinstance(document, dict):
        _fail([(ROOT, 'must be a list such as ["and", {condition}, ...], not a single condition')])
    if not isinstance(document, list):
        _fail([(ROOT, f"must be a JSON array of conditions, got {describe(document)}")])
    if not document:
        return None
    # Counted before anything else, so an oversized document costs no attribute lookups.
    leaves = _count_leaves(document)
    if leaves > MAX_LEAVES:
        _fail([(ROOT, f"has {leaves} conditions; at most {MAX_LEAVES} are allowed")])
    violations = _Violations()
    root = _Parser(lookup, strict=strict, violations=violations).node(document, ROOT, depth=1)
    violations.raise_if_any()
    assert root is not None, "no violation means every part parsed"
    return root


def decode_text(raw: str) -> Any:
    """Conditions sent as JSON text, decoded; integers past 64 bits stay out of range for the checks to name."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except ValueError as error:
        _fail([(ROOT, f"is not valid JSON: {error}")])
    except RecursionError:
        _fail([(ROOT, f"nests deeper than {MAX_DEPTH} levels")])


# Longer digit strings are past any 64-bit integer; reading them whole would hit
# Python's int-digit limit (a parse error with no path) for nothing.
_MAX_INT_TEXT = 20


def _bounded_int(text: str) -> int:
    if len(text) <= _MAX_INT_TEXT:
        return int(text)
    # Stands in for the huge value: just as far out of range, so the leaf's check names its path.
    return LONG_MIN - 1 if text.startswith("-") else LONG_MAX + 1


def _outside_64_bits(given: Any, path: str) -> str | None:
    """The path of an integer in `given` (a value or a list of them) that no 64-bit value holds."""
    items = enumerate(given) if isinstance(given, list) else ((None, given),)
    for index, item in items:
        if isinstance(item, int) and not isinstance(item, bool) and not LONG_MIN <= item <= LONG_MAX:
            return path if index is None else f"{path}[{index}]"
    return None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


class _Parser:
    def __init__(self, lookup: AttributeLookup, *, strict: bool, violations: _Violations) -> None:
        self._lookup = lookup
        self._strict = strict
        self._violations = violations

    def node(self, value: list[Any], path: str, *, depth: int) -> Group | None:
        add = self._violations.add
        if depth > MAX_DEPTH:
            add(path, f"nests deeper than {MAX_DEPTH} levels")
            return None
        if not value:
            add(path, "must not be empty: a group is ['and' | 'or' | 'not', condition, ...]")
            return None
        operator = value[0]
        operands = value[1:]
        ok = True
        if not isinstance(operator, str):
            add(f"{path}[0]", f"must be the operator 'and', 'or' or 'not', got {describe(operator)}")
            ok = False
        elif operator not in OPERATORS:
            add(f"{path}[0]", f"unknown operator {_quote(operator)}; use 'and', 'or' or 'not'")
            ok = False
        elif operator == "not" and len(operands) != 1:
            add(path, f"'not' takes exactly one condition, got {len(operands)}")
            ok = False
        elif not operands:
            add(path, f"'{operator}' needs at least one condition")
            ok = False
        parsed: list[Node] = []
        for index, operand in enumerate(operands, start=1):
            child_path = f"{path}[{index}]"
            child: Node | None
            if isinstance(operand, list):
                child = self.node(operand, child_path, depth=depth + 1)
            elif isinstance(operand, dict):
                child = self.leaf(operand, child_path)
            else:
                add(child_path, f"must be a condition object or a nested [operator, ...] list, got {describe(operand)}")
                child = None
            if child is None:
                ok = False
            else:
                parsed.append(child)
        return Group(path=path, operator=operator, operands=tuple(parsed)) if ok else None

    def leaf(self, value: dict[str, Any], path: str) -> Leaf | None:
        add = self._violations.add
        ok = True
        for key in value:
            if key not in _LEAF_FIELDS:
                add(f"{path}.{key}", f"unknown field {_quote(key)}; a condition has {', '.join(_LEAF_FIELDS)}")
                ok = False
        kind = value.get("type")
        if "type" not in value:
            add(f"{path}.type", "is required and must be 'dcp'")
            ok = False
        elif kind != "dcp":
            got = _quote(kind) if isinstance(kind, str) else describe(kind)
            add(f"{path}.type", f"must be 'dcp', got {got}")
            ok = False
        if "name" in value and not isinstance(value["name"], str):
            add(f"{path}.name", f"must be a string, got {describe(value['name'])}")
            ok = False
        datasource_id = self._id(value, "dcp_datasource_id", path)
        attribute_id = self._id(value, "dcp_attribute_id", path)
        match_type = value.get("match_type")
        if match_type is None:
            add(f"{path}.match_type", "is required")
            match_type = None
        elif not isinstance(match_type, str):
            add(f"{path}.match_type", f"must be a string, got {describe(match_type)}")
            match_type = None
        elif match_type not in MATCH_TYPES:
            add(f"{path}.match_type", f"unknown match type {_quote(match_type)}; use {_either(MATCH_TYPES)}")
            match_type = None
        if datasource_id is None or attribute_id is None or match_type is None or not ok:
            return None

        found = self._lookup(datasource_id, attribute_id)
        if isinstance(found, str) or not found.usable:
            if self._strict:
                reason = (
                    found
                    if isinstance(found, str)
                    else f"attribute {attribute_id} of table {datasource_id} is archived"
                    " and can no longer be used in conditions"
                )
                add(path, reason)
                return None
            # The audience was checked when saved; what it named has been archived since.
            unusable = AttributeRef(datasource_id, attribute_id, datatype=None, usable=False)
            return Leaf(path=path, attribute=unusable, match_type=match_type, value=None)
        checked = self._value(found, match_type, value, path)
        if checked is _INVALID:
            return None
        return Leaf(path=path, attribute=found, match_type=match_type, value=checked)

    def _id(self, value: dict[str, Any], field: str, path: str) -> int | None:
        if field not in value:
            self._violations.add(f"{path}.{field}", "is required")
            return None
        given = value[field]
        if isinstance(given, bool) or not isinstance(given, int):
            self._violations.add(f"{path}.{field}", f"must be an integer, got {describe(given)}")
            return None
        if not LONG_MIN <= given <= LONG_MAX:
            self._violations.add(f"{path}.{field}", "must fit in a signed 64-bit integer")
            return None
        return given

    def _value(self, ref: AttributeRef, match_type: str, leaf: dict[str, Any], path: str) -> Any:
        add = self._violations.add
        datatype = ref.datatype
        try:
            if datatype is None:
                raise ValueProblem("has no datatype")
            allowed = match_types(datatype, ref.format)
        except ValueProblem:
            add(path, f"attribute {ref.attribute_id} has an unknown datatype {_quote(str(datatype))}")
            return _INVALID
        if match_type not in allowed:
            add(
                f"{path}.match_type",
                f"{_quote(match_type)} does not apply to a {datatype} attribute;"
                f" a {datatype} attribute takes {_either(allowed)}",
            )
            return _INVALID
        value_path = f"{path}.value"
        given = leaf.get("value")
        if match_type == "exists":
            if given is not None:
                add(value_path, "must be absent or null for match type 'exists'")
                return _INVALID
            return None
        if given is None:
            add(value_path, f"is required for match type '{match_type}'")
            return _INVALID
        too_big = _outside_64_bits(given, value_path)
        if too_big is not None:
            add(too_big, "must fit in a signed 64-bit integer")
            return _INVALID
        spec = AttributeSpec(f"{ref.datasource_id}/{ref.attribute_id}", datatype, ref.format)
        if match_type == "within_last":
            if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= MAX_WITHIN_LAST_DAYS:
                add(value_path, f"must be a whole number of days from 1 to {MAX_WITHIN_LAST_DAYS}, got {_show(given)}")
                return _INVALID
            return given
        if match_type == "in":
            return self._in_values(spec, given, value_path)
        if match_type == "between":
            return self._between(spec, given, value_path)
        checked = self._one(spec, given, value_path)
        if checked is _INVALID or match_type != "substring":
            return checked
        if checked == "":
            add(value_path, "must not be empty")
            return _INVALID
        hint = _regex_hint(checked)
        if hint:
            add(
                value_path,
                f"looks like a regular expression ({hint}); substring matching is literal"
                " and regular expressions are not supported",
            )
            return _INVALID
        return checked

    def _one(self, spec: AttributeSpec, given: Any, path: str) -> Any:
        try:
            return check_json_value(spec, given, pii_guard=False)
        except ValueProblem as problem:
            self._violations.add(path, str(problem))
            return _INVALID

    def _in_values(self, spec: AttributeSpec, given: Any, path: str) -> Any:
        if not isinstance(given, list):
            self._violations.add(path, f"must be a list of values for match type 'in', got {describe(given)}")
            return _INVALID
        if not given:
            self._violations.add(path, "must list at least one value")
            return _INVALID
        if len(given) > MAX_IN_VALUES:
            self._violations.add(path, f"must list at most {MAX_IN_VALUES} values, got {len(given)}")
            return _INVALID
        checked = [self._one(spec, item, f"{path}[{index}]") for index, item in enumerate(given)]
        if any(item is _INVALID for item in checked):
            return _INVALID
        return tuple(checked)

    def _between(self, spec: AttributeSpec, given: Any, path: str) -> Any:
        if not isinstance(given, list) or len(given) != 2:
            self._violations.add(path, f"must be a list [low, high] for match type 'between', got {_show(given)}")
            return _INVALID
        low = self._one(spec, given[0], f"{path}[0]")
        high = self._one(spec, given[1], f"{path}[1]")
        if low is _INVALID or high is _INVALID:
            return _INVALID
        if low > high:
            self._violations.add(path, f"low end {_show(low)} is greater than high end {_show(high)}")
            return _INVALID
        return (low, high)


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


_INVALID: Any = _Invalid()


def _count_leaves(value: list[Any]) -> int:
    count = 0
    stack: list[Any] = [value]
    while stack:
        for item in stack.pop():
            if isinstance(item, dict):
                count += 1
            elif isinstance(item, list):
                stack.append(item)
    return count


def _regex_hint(text: str) -> str | None:
    if text.startswith("^"):
        return "it starts with '^'"
    if text.endswith("$"):
        return "it ends with '$'"
    for hint in _REGEX_HINTS:
        if hint in text:
            return f"it contains '{hint}'"
    return None


def _either(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _show(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= 60 else shown[:60] + "…"
