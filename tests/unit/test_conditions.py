"""Audience conditions: what the grammar accepts, how it reports what it refuses, and what the evaluator decides."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services._runtime.errors import InvalidArgument
from services.domain.conditions.evaluate import (
    LeafOutcome,
    evaluate,
    explainer,
    explainer_of_all,
    finder_of_all,
    holds,
    pattern_of,
    window,
)
from services.domain.conditions.grammar import parse_conditions
from services.domain.conditions.model import MAX_DEPTH, MAX_IN_VALUES, MAX_LEAVES, AttributeRef, Group, Leaf, Node
from services.domain.datatypes import Datatype, DatetimeFormat

TABLE = 7
STRING, BOOL, LONG, DOUBLE, DATE, DATETIME, EPOCH, ARCHIVED = range(1, 9)
REFS = {
    STRING: AttributeRef(TABLE, STRING, Datatype.STRING),
    BOOL: AttributeRef(TABLE, BOOL, Datatype.BOOL),
    LONG: AttributeRef(TABLE, LONG, Datatype.LONG),
    DOUBLE: AttributeRef(TABLE, DOUBLE, Datatype.DOUBLE),
    DATE: AttributeRef(TABLE, DATE, Datatype.DATETIME, DatetimeFormat.DATE),
    DATETIME: AttributeRef(TABLE, DATETIME, Datatype.DATETIME, DatetimeFormat.DATETIME),
    EPOCH: AttributeRef(TABLE, EPOCH, Datatype.DATETIME, DatetimeFormat.EPOCH),
    ARCHIVED: AttributeRef(TABLE, ARCHIVED, Datatype.LONG, usable=False),
}
NOW = datetime(2024, 2, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def lookup(datasource_id: int, attribute_id: int) -> AttributeRef | str:
    if datasource_id != TABLE:
        return f"is not a table of this DCP service: {datasource_id}"
    return REFS.get(attribute_id, f"is not an attribute of table {datasource_id} of this DCP service")


def leaf(attribute: int, match_type: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": "dcp",
        "dcp_datasource_id": TABLE,
        "dcp_attribute_id": attribute,
        "match_type": match_type,
    }
    if value is not None:
        condition["value"] = value
    condition.update(extra)
    return condition


def parse(raw: Any, *, strict: bool = True) -> Node | None:
    return parse_conditions(raw, lookup, strict=strict)


def parse_leaf(condition: dict[str, Any]) -> Leaf:
    node = parse(["and", condition])
    assert isinstance(node, Group)
    (only,) = node.operands
    assert isinstance(only, Leaf)
    return only


def violations(raw: Any, *, strict: bool = True) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        parse(raw, strict=strict)
    assert caught.value.violations, "an InvalidArgument names what is wrong"
    return caught.value.violations


def only_violation(raw: Any, *, strict: bool = True) -> tuple[str, str]:
    found = violations(raw, strict=strict)
    assert len(found) == 1, found
    return found[0]


def nested(depth: int) -> list[Any]:
    """A tree whose innermost list sits `depth` levels down (the root is level 1)."""
    tree: list[Any] = ["and", leaf(LONG, "exists")]
    for _ in range(depth - 1):
        tree = ["and", tree]
    return tree


# The grammar: shapes


def test_a_tree_parses_into_groups_and_leaves_at_their_json_paths() -> None:
    node = parse(["or", leaf(STRING, "exact", "jeans", name="product"), ["not", leaf(LONG, "between", [1, 5])]])
    assert node == Group(
        path="conditions",
        operator="or",
        operands=(
            Leaf("conditions[1]", REFS[STRING], "exact", "jeans"),
            Group(
                path="conditions[2]",
                operator="not",
                operands=(Leaf("conditions[2][1]", REFS[LONG], "between", (1, 5)),),
            ),
        ),
    )


@pytest.mark.parametrize("raw", [None, "", "  ", "[]", []])
def test_no_conditions_match_nobody(raw: Any) -> None:
    assert parse(raw) is None
    assert not holds(None, {TABLE: {str(LONG): 1}}, now=NOW)
    assert evaluate(None, {TABLE: {str(LONG): 1}}, now=NOW).matched is False


def test_conditions_sent_as_a_json_string_parse_like_the_array() -> None:
    tree = ["and", leaf(LONG, "gt", 3), ["or", leaf(STRING, "in", ["a", "b"])]]
    assert parse(json.dumps(tree)) == parse(tree)


def test_invalid_json_is_refused_at_the_root() -> None:
    path, reason = only_violation('["and", {"type": "dcp",')
    assert path == "conditions"
    assert reason.startswith("is not valid JSON")


def test_json_constants_that_are_not_json_are_refused() -> None:
    path, reason = only_violation('["and", NaN]')
    assert (path, reason) == ("conditions", "is not valid JSON: NaN is not a JSON value")


def test_the_root_must_be_a_group_not_a_bare_condition() -> None:
    path, reason = only_violation(leaf(LONG, "exists"))
    assert path == "conditions"
    assert "not a single condition" in reason
    assert only_violation(json.dumps(leaf(LONG, "exists")))[0] == "conditions"


@pytest.mark.parametrize("raw", [5, "5", '"and"', "true", "null"])
def test_the_root_must_be_an_array(raw: Any) -> None:
    path, reason = only_violation(raw)
    assert path == "conditions"
    assert reason.startswith("must be a JSON array of conditions")


def test_an_unknown_operator_is_named() -> None:
    assert only_violation(["and", ["xor", leaf(LONG, "exists")]]) == (
        "conditions[1][0]",
        "unknown operator 'xor'; use 'and', 'or' or 'not'",
    )
    assert only_violation([5, leaf(LONG, "exists")]) == (
        "conditions[0]",
        "must be the operator 'and', 'or' or 'not', got an integer",
    )


@pytest.mark.parametrize("operator", ["and", "or"])
def test_and_or_need_an_operand(operator: str) -> None:
    assert only_violation(["and", leaf(LONG, "exists"), [operator]]) == (
        "conditions[2]",
        f"'{operator}' needs at least one condition",
    )
    node = parse([operator, leaf(LONG, "exists")])
    assert isinstance(node, Group)
    assert node.operator == operator


def test_not_takes_exactly_one_operand() -> None:
    assert only_violation(["not", leaf(LONG, "exists"), leaf(BOOL, "exists")]) == (
        "conditions",
        "'not' takes exactly one condition, got 2",
    )
    assert only_violation(["and", ["not"]]) == ("conditions[1]", "'not' takes exactly one condition, got 0")
    assert isinstance(parse(["not", ["and", leaf(LONG, "exists")]]), Group)


def test_an_empty_nested_group_is_refused() -> None:
    path, reason = only_violation(["and", []])
    assert path == "conditions[1]"
    assert reason.startswith("must not be empty")


@pytest.mark.parametrize(("operand", "described"), [("x", "a string"), (5, "an integer"), (None, "null")])
def test_an_operand_is_a_group_or_a_condition(operand: Any, described: str) -> None:
    assert only_violation(["and", leaf(LONG, "exists"), operand]) == (
        "conditions[2]",
        f"must be a condition object or a nested [operator, ...] list, got {described}",
    )


def test_ten_levels_of_nesting_are_allowed_and_eleven_are_not() -> None:
    assert parse(nested(MAX_DEPTH)) is not None
    path, reason = only_violation(nested(MAX_DEPTH + 1))
    assert path == "conditions" + "[1]" * MAX_DEPTH
    assert reason == f"nests deeper than {MAX_DEPTH} levels"


def test_a_hugely_nested_string_is_refused_without_crashing() -> None:
    assert only_violation("[" * 100_000 + "]" * 100_000) == ("conditions", f"nests deeper than {MAX_DEPTH} levels")


def test_a_hundred_leaves_are_allowed_and_a_hundred_and_one_are_not() -> None:
    assert parse(["or", *[leaf(LONG, "exact", i) for i in range(MAX_LEAVES)]]) is not None
    too_many = [
        "or",
        *[leaf(LONG, "exact", i) for i in range(MAX_LEAVES - 1)],
        ["and", leaf(LONG, "gt", 1), leaf(LONG, "lt", 5)],
    ]
    assert only_violation(too_many) == (
        "conditions",
        f"has {MAX_LEAVES + 1} conditions; at most {MAX_LEAVES} are allowed",
    )


def test_leaves_below_the_depth_limit_still_count() -> None:
    too_deep_and_many = ["or", *[leaf(LONG, "exact", i) for i in range(MAX_LEAVES)], nested(MAX_DEPTH + 1)]
    assert only_violation(too_deep_and_many) == (
        "conditions",
        f"has {MAX_LEAVES + 1} conditions; at most {MAX_LEAVES} are allowed",
    )


def test_too_many_leaves_are_refused_before_any_lookup() -> None:
    def refuse(datasource_id: int, attribute_id: int) -> AttributeRef | str:
        raise AssertionError("no attribute is looked up for an oversized document")

    with pytest.raises(InvalidArgument):
        parse_conditions(["or", *[leaf(LONG, "exists") for _ in range(10_000)]], refuse, strict=True)


def test_every_violation_is_reported_at_once_and_the_message_names_them() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(["and", leaf(STRING, "gt", "a"), ["or", leaf(LONG, "exact", "5")]])
    assert caught.value.violations == [
        (
            "conditions[1].match_type",
            "'gt' does not apply to a string attribute; a string attribute takes exists, exact, substring or in",
        ),
        ("conditions[2][1].value", "must be an integer, got a string"),
    ]
    assert caught.value.message.startswith("conditions[1].match_type: 'gt' does not apply to a string attribute")
    assert "conditions[2][1].value: must be an integer, got a string" in caught.value.message


def test_violations_are_capped_at_a_hundred() -> None:
    twice_wrong = {**leaf(LONG, "exists"), "type": "custom_attribute", "dcp_attribute_id": "3"}
    found = violations(["or", *[twice_wrong for _ in range(60)]])
    assert len(found) == 100
    assert found[:2] == [
        ("conditions[1].type", "must be 'dcp', got 'custom_attribute'"),
        ("conditions[1].dcp_attribute_id", "must be an integer, got a string"),
    ]


# The grammar: leaf fields


def test_a_leaf_may_carry_an_informational_name_but_no_other_key() -> None:
    assert parse_leaf(leaf(LONG, "exists", name="Lifetime value")).attribute == REFS[LONG]
    path, reason = only_violation(["and", leaf(LONG, "exists", operator="and")])
    assert path == "conditions[1].operator"
    assert reason.startswith("unknown field 'operator'")
    assert only_violation(["and", leaf(LONG, "exists", name=5)]) == (
        "conditions[1].name",
        "must be a string, got an integer",
    )


def test_a_leaf_must_be_of_type_dcp() -> None:
    assert only_violation(["and", leaf(LONG, "exists", type="custom_attribute")]) == (
        "conditions[1].type",
        "must be 'dcp', got 'custom_attribute'",
    )
    missing = leaf(LONG, "exists")
    del missing["type"]
    assert only_violation(["and", missing]) == ("conditions[1].type", "is required and must be 'dcp'")


@pytest.mark.parametrize(
    ("given", "described"), [("7", "a string"), (True, "a boolean"), (7.0, "a floating-point number"), (None, "null")]
)
@pytest.mark.parametrize("field", ["dcp_datasource_id", "dcp_attribute_id"])
def test_ids_must_be_json_integers(field: str, given: Any, described: str) -> None:
    assert only_violation(["and", leaf(LONG, "exists", **{field: given})]) == (
        f"conditions[1].{field}",
        f"must be an integer, got {described}",
    )


@pytest.mark.parametrize("field", ["dcp_datasource_id", "dcp_attribute_id", "match_type"])
def test_ids_and_match_type_are_required(field: str) -> None:
    condition = leaf(LONG, "exists")
    del condition[field]
    assert only_violation(["and", condition]) == (f"conditions[1].{field}", "is required")


def test_an_unknown_match_type_is_named() -> None:
    path, reason = only_violation(["and", leaf(STRING, "regex", "a")])
    assert path == "conditions[1].match_type"
    assert reason.startswith("unknown match type 'regex'; use exists, exact, substring, in,")
    assert only_violation(["and", {**leaf(STRING, "exists"), "match_type": 5}]) == (
        "conditions[1].match_type",
        "must be a string, got an integer",
    )


@pytest.mark.parametrize(
    ("attribute", "match_type", "value"),
    [
        (STRING, "gt", "a"),
        (STRING, "between", ["a", "b"]),
        (STRING, "before", "a"),
        (BOOL, "in", [True]),
        (BOOL, "substring", "t"),
        (BOOL, "lt", True),
        (LONG, "substring", "1"),
        (LONG, "after", 1),
        (LONG, "within_last", 3),
        (DOUBLE, "before", 1.0),
        (DATE, "substring", "2024"),
        (EPOCH, "substring", "1"),
    ],
)
def test_a_match_type_must_suit_the_datatype(attribute: int, match_type: str, value: Any) -> None:
    path, reason = only_violation(["and", leaf(attribute, match_type, value)])
    datatype = REFS[attribute].datatype
    assert path == "conditions[1].match_type"
    assert reason.startswith(f"'{match_type}' does not apply to a {datatype} attribute; a {datatype} attribute takes")


@pytest.mark.parametrize("attribute", [STRING, BOOL, LONG, DOUBLE, DATE, DATETIME, EPOCH])
def test_exists_applies_to_every_datatype_and_takes_no_value(attribute: int) -> None:
    assert parse_leaf(leaf(attribute, "exists")).value is None
    assert parse_leaf({**leaf(attribute, "exists"), "value": None}).value is None
    assert only_violation(["and", leaf(attribute, "exists", "x")]) == (
        "conditions[1].value",
        "must be absent or null for match type 'exists'",
    )


@pytest.mark.parametrize("match_type", ["exact", "in", "gt", "between", "within_last"])
def test_a_value_is_required_beyond_exists(match_type: str) -> None:
    assert only_violation(["and", leaf(DATE, match_type)]) == (
        "conditions[1].value",
        f"is required for match type '{match_type}'",
    )


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        (LONG, "5", "must be an integer, got a string"),
        (LONG, 5.5, "must be an integer, got a number with a fraction"),
        (LONG, 5.0, "must be an integer, got a floating-point number"),
        (LONG, True, "must be an integer, got a boolean"),
        (LONG, 2**63, "must fit in a signed 64-bit integer"),
        (DOUBLE, "1.5", "must be a number, got a string"),
        (DOUBLE, False, "must be a number, got a boolean"),
        (BOOL, "true", "must be true or false, got a string"),
        (BOOL, 1, "must be true or false, got an integer"),
        (STRING, 5, "must be a string, got an integer"),
        (STRING, ["a"], "must be a string, got an array"),
        (EPOCH, "1706788800000", "must be an integer of epoch milliseconds, got a string"),
        (EPOCH, 1.5, "must be an integer of epoch milliseconds, got a number with a fraction"),
        (DATE, 20240131, "must be a string in the format yyyy-mm-dd, got an integer"),
        (DATE, "2024-1-31", "must be a date in the format yyyy-mm-dd"),
        (DATE, "2024-02-30", "is not a real date: day is out of range for month"),
        (DATE, "2024-01-31T10:00:00Z", "must be a date in the format yyyy-mm-dd"),
        (DATETIME, "2024-01-31", "must be a UTC date-time in the format yyyy-mm-ddThh:mm:ssZ"),
        (DATETIME, "2024-01-31T10:00:00", "must be a UTC date-time in the format yyyy-mm-ddThh:mm:ssZ"),
        (DATETIME, "2024-01-31 10:00:00Z", "must be a UTC date-time in the format yyyy-mm-ddThh:mm:ssZ"),
        (DATETIME, "2024-01-31T24:00:00Z", "is not a real date-time: hour must be in 0..23"),
    ],
)
def test_values_are_checked_against_the_attribute_without_coercion(attribute: int, value: Any, reason: str) -> None:
    assert only_violation(["and", leaf(attribute, "exact", value)]) == ("conditions[1].value", reason)


def test_values_come_back_canonical() -> None:
    double = parse_leaf(leaf(DOUBLE, "exact", 10))
    assert double.value == 10.0
    assert type(double.value) is float
    assert parse_leaf(leaf(DOUBLE, "in", [1, 2.5])).value == (1.0, 2.5)
    assert parse_leaf(leaf(EPOCH, "between", [0, 10])).value == (0, 10)
    assert parse_leaf(leaf(DATETIME, "after", "2024-01-31T10:00:00Z")).value == "2024-01-31T10:00:00Z"
    assert parse_leaf(leaf(BOOL, "exact", False)).value is False


def test_in_takes_a_non_empty_list_of_values_of_the_type() -> None:
    assert parse_leaf(leaf(STRING, "in", ["a", "b"])).value == ("a", "b")
    assert only_violation(["and", leaf(STRING, "in", "a")]) == (
        "conditions[1].value",
        "must be a list of values for match type 'in', got a string",
    )
    assert only_violation(["and", leaf(STRING, "in", [])]) == ("conditions[1].value", "must list at least one value")
    assert only_violation(["and", leaf(LONG, "in", list(range(MAX_IN_VALUES + 1)))]) == (
        "conditions[1].value",
        f"must list at most {MAX_IN_VALUES} values, got {MAX_IN_VALUES + 1}",
    )
    assert len(parse_leaf(leaf(LONG, "in", list(range(MAX_IN_VALUES)))).value) == MAX_IN_VALUES
    assert violations(["and", leaf(LONG, "in", [1, "2", 3, 4.5])]) == [
        ("conditions[1].value[1]", "must be an integer, got a string"),
        ("conditions[1].value[3]", "must be an integer, got a number with a fraction"),
    ]


def test_between_takes_low_and_high_in_order() -> None:
    assert parse_leaf(leaf(LONG, "between", [3, 3])).value == (3, 3)
    assert parse_leaf(leaf(DATE, "between", ["2024-01-01", "2024-01-31"])).value == ("2024-01-01", "2024-01-31")
    assert only_violation(["and", leaf(LONG, "between", [5, 3])]) == (
        "conditions[1].value",
        "low end 5 is greater than high end 3",
    )
    for wrong in ([1], [1, 2, 3], 1, {"low": 1}):
        path, reason = only_violation(["and", leaf(LONG, "between", wrong)])
        assert path == "conditions[1].value"
        assert reason.startswith("must be a list [low, high] for match type 'between'")
    assert only_violation(["and", leaf(DATE, "between", ["2024-01-01", "2024-13-01"])]) == (
        "conditions[1].value[1]",
        "is not a real date: month must be in 1..12",
    )


@pytest.mark.parametrize("days", [0, -1, 36_501, 1.5, "7", True])
def test_within_last_takes_a_positive_number_of_days(days: Any) -> None:
    path, reason = only_violation(["and", leaf(DATE, "within_last", days)])
    assert path == "conditions[1].value"
    assert reason.startswith("must be a whole number of days from 1 to 36500")


def test_within_last_takes_up_to_a_hundred_years() -> None:
    assert parse_leaf(leaf(EPOCH, "within_last", 36_500)).value == 36_500
    assert parse_leaf(leaf(DATETIME, "within_last", 1)).value == 1


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("^jeans", "it starts with '^'"),
        ("jeans$", "it ends with '$'"),
        ("je.*ns", "it contains '.*'"),
        ("je.+ns", "it contains '.+'"),
        ("je\\dns", "it contains '\\'"),
        ("(?i)jeans", "it contains '(?'"),
    ],
)
def test_substring_refuses_what_looks_like_a_regular_expression(value: str, hint: str) -> None:
    assert only_violation(["and", leaf(STRING, "substring", value)]) == (
        "conditions[1].value",
        f"looks like a regular expression ({hint}); substring matching is literal"
        " and regular expressions are not supported",
    )


def test_substring_takes_a_non_empty_literal() -> None:
    assert parse_leaf(leaf(STRING, "substring", "a.b (x) [y] $5")).value == "a.b (x) [y] $5"
    assert only_violation(["and", leaf(STRING, "substring", "")]) == ("conditions[1].value", "must not be empty")
    assert only_violation(["and", leaf(STRING, "substring", 5)]) == (
        "conditions[1].value",
        "must be a string, got an integer",
    )


def test_an_archived_or_unknown_attribute_is_refused_when_saving() -> None:
    assert violations(["and", leaf(ARCHIVED, "exact", 1), leaf(99, "exists"), leaf(LONG, "exists")]) == [
        ("conditions[1]", f"attribute {ARCHIVED} of table {TABLE} is archived and can no longer be used in conditions"),
        ("conditions[2]", f"is not an attribute of table {TABLE} of this DCP service"),
    ]


def test_an_archived_or_unknown_attribute_never_holds_when_using_a_saved_audience() -> None:
    node = parse(["or", leaf(ARCHIVED, "exact", 1), leaf(99, "exists")], strict=False)
    assert isinstance(node, Group)
    assert node.operands == (
        Leaf("conditions[1]", AttributeRef(TABLE, ARCHIVED, datatype=None, usable=False), "exact", None),
        Leaf("conditions[2]", AttributeRef(TABLE, 99, datatype=None, usable=False), "exists", None),
    )
    everything = {TABLE: {str(ARCHIVED): 1, "99": 1}}
    assert not holds(node, everything, now=NOW)
    negated = parse(["not", leaf(ARCHIVED, "exact", 1)], strict=False)
    assert holds(negated, everything, now=NOW)


def test_structural_and_value_errors_still_count_when_using_a_saved_audience() -> None:
    assert violations(["xor", leaf(ARCHIVED, "exists"), leaf(LONG, "exact", "5")], strict=False) == [
        ("conditions[0]", "unknown operator 'xor'; use 'and', 'or' or 'not'"),
        ("conditions[2].value", "must be an integer, got a string"),
    ]
    assert only_violation(["and", leaf(ARCHIVED, "regex")], strict=False)[0] == "conditions[1].match_type"


# The evaluator


def check(condition: dict[str, Any], profiles: dict[int, dict[str, Any]]) -> bool:
    node = parse(["and", condition])
    result = holds(node, profiles, now=NOW)
    assert evaluate(node, profiles, now=NOW).matched is result
    negated = parse(["not", condition])
    assert holds(negated, profiles, now=NOW) is not result, "not flips every leaf, missing values included"
    return result


def stored(attribute: int, value: Any) -> dict[int, dict[str, Any]]:
    return {TABLE: {str(attribute): value}}


MISSING: list[dict[int, dict[str, Any]]] = [{}, {TABLE: {}}, {8: {str(LONG): 1}}, stored(LONG, None)]


# (condition, stored value, expected)
TRUTH_TABLE: list[tuple[dict[str, Any], Any, bool]] = [
    (leaf(STRING, "exists"), "", True),
    (leaf(STRING, "exists"), 5, False),
    (leaf(BOOL, "exists"), False, True),
    (leaf(BOOL, "exists"), 0, False),
    (leaf(LONG, "exists"), 0, True),
    (leaf(LONG, "exists"), True, False),
    (leaf(LONG, "exists"), "1", False),
    (leaf(DOUBLE, "exists"), 0, True),
    (leaf(DATE, "exists"), "2024-01-31", True),
    (leaf(DATE, "exists"), 20240131, False),
    (leaf(EPOCH, "exists"), 0, True),
    (leaf(EPOCH, "exists"), "0", False),
    (leaf(STRING, "exact", "Jeans"), "Jeans", True),
    (leaf(STRING, "exact", "Jeans"), "jeans", False),
    (leaf(STRING, "exact", "1"), 1, False),
    (leaf(BOOL, "exact", True), True, True),
    (leaf(BOOL, "exact", True), False, False),
    (leaf(BOOL, "exact", True), 1, False),
    (leaf(BOOL, "exact", False), 0, False),
    (leaf(LONG, "exact", 1), 1, True),
    (leaf(LONG, "exact", 1), True, False),
    (leaf(LONG, "exact", 1), "1", False),
    (leaf(LONG, "exact", 2**63 - 1), 2**63 - 1, True),
    (leaf(LONG, "exact", 2**63 - 1), 2**63 - 2, False),
    (leaf(DOUBLE, "exact", 1e20), 10**20, True),
    (leaf(DOUBLE, "exact", 0.1), 0.1, True),
    (leaf(DOUBLE, "exact", 1.2345678901234567e19), 12345678901234567000, True),
    (leaf(DOUBLE, "exact", 1), 1, True),
    (leaf(DATE, "exact", "2024-01-31"), "2024-01-31", True),
    (leaf(EPOCH, "exact", 5), 5, True),
    (leaf(STRING, "substring", "ean"), "Jeans", True),
    (leaf(STRING, "substring", "EAN"), "Jeans", False),
    (leaf(STRING, "substring", "Jeans"), "Jeans", True),
    (leaf(STRING, "substring", "a.b"), "axb", False),
    (leaf(STRING, "substring", "ean"), ["ean"], False),
    (leaf(STRING, "in", ["a", "b"]), "b", True),
    (leaf(STRING, "in", ["a", "b"]), "B", False),
    (leaf(LONG, "in", [1, 2]), 2, True),
    (leaf(LONG, "in", [1, 2]), True, False),
    (leaf(DOUBLE, "in", [0.5, 2]), 2, True),
    (leaf(DATE, "in", ["2024-01-31"]), "2024-01-31", True),
    (leaf(EPOCH, "in", [1, 2]), 3, False),
    (leaf(LONG, "gt", 5), 6, True),
    (leaf(LONG, "gt", 5), 5, False),
    (leaf(LONG, "ge", 5), 5, True),
    (leaf(LONG, "ge", 5), 4, False),
    (leaf(LONG, "lt", 5), 4, True),
    (leaf(LONG, "lt", 5), 5, False),
    (leaf(LONG, "le", 5), 5, True),
    (leaf(LONG, "le", 5), 6, False),
    (leaf(LONG, "lt", 5), "4", False),
    (leaf(DOUBLE, "gt", 0.1), 0.30000000000000004, True),
    (leaf(DOUBLE, "le", -1.5), -2, True),
    (leaf(DATE, "gt", "2024-01-31"), "2024-02-01", True),
    (leaf(DATETIME, "lt", "2024-01-31T10:00:00Z"), "2024-01-31T09:59:59Z", True),
    (leaf(EPOCH, "ge", 1000), 1000, True),
    (leaf(LONG, "between", [1, 3]), 1, True),
    (leaf(LONG, "between", [1, 3]), 3, True),
    (leaf(LONG, "between", [1, 3]), 4, False),
    (leaf(LONG, "between", [1, 3]), 0, False),
    (leaf(DATE, "between", ["2024-01-01", "2024-01-31"]), "2024-01-31", True),
    (leaf(DATE, "between", ["2024-01-01", "2024-01-31"]), "2024-02-01", False),
    (leaf(DATE, "before", "2024-01-31"), "2024-01-30", True),
    (leaf(DATE, "before", "2024-01-31"), "2024-01-31", False),
    (leaf(DATE, "after", "2024-01-31"), "2024-01-31", False),
    (leaf(DATE, "after", "2024-01-31"), "2024-02-01", True),
    (leaf(DATETIME, "after", "2024-01-31T10:00:00Z"), "2024-01-31T10:00:01Z", True),
    (leaf(EPOCH, "before", 1000), 999, True),
    (leaf(EPOCH, "before", 1000), 1000, False),
    (leaf(DATE, "within_last", 1), "2024-01-31", True),
    (leaf(DATE, "within_last", 1), "2024-02-01", True),
    (leaf(DATE, "within_last", 1), "2024-01-30", False),
    (leaf(DATE, "within_last", 1), "2024-02-02", False),
    (leaf(DATETIME, "within_last", 1), "2024-01-31T12:00:00Z", True),
    (leaf(DATETIME, "within_last", 1), "2024-01-31T11:59:59Z", False),
    (leaf(DATETIME, "within_last", 1), "2024-02-01T12:00:00Z", True),
    (leaf(DATETIME, "within_last", 1), "2024-02-01T12:00:01Z", False),
    (leaf(EPOCH, "within_last", 1), NOW_MS - 86_400_000, True),
    (leaf(EPOCH, "within_last", 1), NOW_MS - 86_400_001, False),
    (leaf(EPOCH, "within_last", 1), NOW_MS, True),
    (leaf(EPOCH, "within_last", 1), NOW_MS + 1, False),
]


@pytest.mark.parametrize(("condition", "value", "expected"), TRUTH_TABLE)
def test_each_match_type_holds_exactly_when_it_should(condition: dict[str, Any], value: Any, expected: bool) -> None:
    assert check(condition, stored(condition["dcp_attribute_id"], value)) is expected


@pytest.mark.parametrize("profiles", MISSING)
@pytest.mark.parametrize("condition", sorted({json.dumps(c) for c, _, _ in TRUTH_TABLE}))
def test_a_missing_value_makes_every_match_type_false(condition: str, profiles: dict[int, dict[str, Any]]) -> None:
    assert check(json.loads(condition), profiles) is False


def test_strings_order_by_code_point() -> None:
    # A date-time string with a letter where a digit belongs: ordering is by code point, not by locale.
    assert check(leaf(DATETIME, "gt", "2024-01-31T10:00:00Z"), stored(DATETIME, "2024-01-31Ta")) is True
    assert check(leaf(STRING, "in", ["é"]), stored(STRING, "é")) is True
    assert check(leaf(STRING, "in", ["é"]), stored(STRING, "e\u0301")) is False


def test_groups_combine_with_two_valued_logic() -> None:
    yes, no = leaf(LONG, "exists"), leaf(BOOL, "exists")
    profiles = stored(LONG, 1)
    cases = {
        json.dumps(["and", yes, no]): False,
        json.dumps(["and", yes, yes]): True,
        json.dumps(["or", no, yes]): True,
        json.dumps(["or", no, no]): False,
        json.dumps(["not", ["or", no, no]]): True,
        json.dumps(["and", ["not", no], ["or", no, ["not", ["not", yes]]]]): True,
    }
    for raw, expected in cases.items():
        node = parse(raw)
        assert holds(node, profiles, now=NOW) is expected, raw
        assert evaluate(node, profiles, now=NOW).matched is expected, raw


def test_the_explanation_lists_every_leaf_in_document_order() -> None:
    node = parse(
        [
            "or",
            leaf(LONG, "gt", 5),
            ["and", leaf(STRING, "exact", "a"), ["not", leaf(BOOL, "exists")]],
            leaf(DATE, "exists"),
        ]
    )
    outcome = evaluate(node, {TABLE: {str(LONG): 10, str(STRING): "b"}}, now=NOW)
    assert outcome.matched is True
    # The first leaf already decides the "or"; the others are still evaluated and reported.
    assert outcome.leaves == (
        LeafOutcome("conditions[1]", TABLE, LONG, "gt", True),
        LeafOutcome("conditions[2][1]", TABLE, STRING, "exact", False),
        LeafOutcome("conditions[2][2][1]", TABLE, BOOL, "exists", False),
        LeafOutcome("conditions[3]", TABLE, DATE, "exists", False),
    )


def test_many_trees_checked_in_one_call_give_each_tree_its_own_leaf_results() -> None:
    trees = [
        *(parse(["and", condition]) for condition, _, _ in TRUTH_TABLE),
        None,
        parse(["or", leaf(ARCHIVED, "exact", 1), ["not", leaf(LONG, "exists")]], strict=False),
        parse(["and", leaf(LONG, "gt", 1), ["or", leaf(STRING, "substring", "a"), leaf(EPOCH, "within_last", 2)]]),
    ]
    explain_all = explainer_of_all(trees)
    profiles_seen = [stored(condition["dcp_attribute_id"], value) for condition, value, _ in TRUTH_TABLE]
    profiles_seen += [*MISSING, {TABLE: {str(LONG): 5, str(STRING): "abc", str(EPOCH): NOW_MS, str(ARCHIVED): 1}}]
    for profiles in profiles_seen:
        held = explain_all(profiles, NOW)
        assert held == tuple(explainer(tree)[0](profiles, NOW) for tree in trees), profiles
        assert held[len(TRUTH_TABLE)] == ()
    # Each truth-table tree holds on its own row exactly as the table says, whatever the trees around it.
    for index, (_, _, expected) in enumerate(TRUTH_TABLE):
        assert explain_all(profiles_seen[index], NOW)[index] == (expected,)
    assert explainer_of_all([])({}, NOW) == ()


def test_trees_past_one_generated_function_are_checked_in_several_with_the_same_results() -> None:
    tree = ["or", *(leaf(LONG, "gt", bound) for bound in range(99)), leaf(STRING, "exists")]
    trees = [parse(tree), None, parse(["and", leaf(LONG, "exists")]), parse(tree), parse(tree)]
    profiles = {TABLE: {str(LONG): 50}}
    held = explainer_of_all(trees)(profiles, NOW)
    assert held == tuple(explainer(t)[0](profiles, NOW) for t in trees)
    assert held[0] == (*(bound < 50 for bound in range(99)), False)


def _finder_keeping_what_it_misses(trees: list[Node | None]) -> tuple[Any, list[dict[int, Any]], list[Any]]:
    """finder_of_all over the trees, keeping each tree's leaf results under their pattern as it misses them."""
    kept: list[dict[int, Any]] = [{} for _ in trees]
    missed: list[Any] = []

    def keeper(index: int) -> Any:
        def miss(held: tuple[bool, ...]) -> Any:
            missed.append((index, held))
            kept[index][pattern_of(held)] = ("kept", held)
            return ("missed", held)

        return miss

    return finder_of_all(trees, kept, [keeper(index) for index in range(len(trees))]), kept, missed


def test_a_finder_looks_up_each_trees_pattern_of_leaf_results_and_hands_on_those_it_does_not_hold() -> None:
    trees = [
        *(parse(["and", condition]) for condition, _, _ in TRUTH_TABLE),
        None,
        parse(["or", leaf(ARCHIVED, "exact", 1), ["not", leaf(LONG, "exists")]], strict=False),
        parse(["and", leaf(LONG, "gt", 1), ["or", leaf(STRING, "substring", "a"), leaf(EPOCH, "within_last", 2)]]),
    ]
    find_all, kept, missed = _finder_keeping_what_it_misses(trees)
    explain_all = explainer_of_all(trees)
    profiles_seen = [stored(condition["dcp_attribute_id"], value) for condition, value, _ in TRUTH_TABLE]
    profiles_seen += [*MISSING, {TABLE: {str(LONG): 5, str(STRING): "abc", str(EPOCH): NOW_MS, str(ARCHIVED): 1}}]
    for profiles in profiles_seen:
        expected = explain_all(profiles, NOW)
        # The first time a pattern is seen it is handed on; from then on it is found.
        first = find_all(profiles, NOW)
        assert [held for _, held in first] == list(expected), profiles
        assert [kind for kind, _ in find_all(profiles, NOW)] == ["kept"] * len(trees)
        assert [held for _, held in find_all(profiles, NOW)] == list(expected)
    assert all(len(kept[index]) == len({held for i, held in missed if i == index}) for index in range(len(trees)))
    assert kept[len(TRUTH_TABLE)] == {0: ("kept", ())}
    assert pattern_of((True, False, True)) == 5
    assert pattern_of(()) == 0
    assert finder_of_all([], [], [])({}, NOW) == []


def test_a_finder_of_trees_past_one_generated_function_gives_each_tree_its_own_pattern() -> None:
    tree = ["or", *(leaf(LONG, "gt", bound) for bound in range(99)), leaf(STRING, "exists")]
    trees = [parse(tree), None, parse(["and", leaf(LONG, "exists")]), parse(tree), parse(tree)]
    profiles = {TABLE: {str(LONG): 50}}
    find_all, kept, _ = _finder_keeping_what_it_misses(trees)
    held = explainer_of_all(trees)(profiles, NOW)
    assert [found for _, found in find_all(profiles, NOW)] == list(held)
    assert [kind for kind, _ in find_all(profiles, NOW)] == ["kept"] * len(trees)
    # A 100-leaf pattern is one number: bits 0-49 for the bounds under 50.
    assert list(kept[0]) == [(1 << 50) - 1]


def test_an_unusable_leaf_is_explained_as_not_holding() -> None:
    node = parse(["or", leaf(ARCHIVED, "exact", 1), leaf(LONG, "exists")], strict=False)
    assert evaluate(node, {TABLE: {str(ARCHIVED): 1, str(LONG): 1}}, now=NOW).leaves == (
        LeafOutcome("conditions[1]", TABLE, ARCHIVED, "exact", held=False, usable=False),
        LeafOutcome("conditions[2]", TABLE, LONG, "exists", held=True, usable=True),
    )


def test_an_explanation_is_computed_afresh_for_each_profile() -> None:
    node = parse(["and", leaf(LONG, "gt", 1), ["not", leaf(STRING, "exists")]])
    first = evaluate(node, stored(LONG, 5), now=NOW)
    second = evaluate(node, {TABLE: {str(LONG): 0, str(STRING): "x"}}, now=NOW)
    assert (first.matched, [o.held for o in first.leaves]) == (True, [True, False])
    assert (second.matched, [o.held for o in second.leaves]) == (False, [False, True])


def test_the_within_last_window_is_rounded_inwards_in_each_format() -> None:
    now = datetime(2024, 2, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    ms = int(datetime(2024, 2, 1, 12, 0, 0, tzinfo=UTC).timestamp()) * 1000 + 250
    assert window(parse_leaf(leaf(DATE, "within_last", 1)), now) == ("2024-01-31", "2024-02-01")
    assert window(parse_leaf(leaf(DATETIME, "within_last", 1)), now) == ("2024-01-31T12:00:01Z", "2024-02-01T12:00:00Z")
    assert window(parse_leaf(leaf(EPOCH, "within_last", 1)), now) == (ms - 86_400_000, ms)
    sub_ms = now + timedelta(microseconds=500)
    assert window(parse_leaf(leaf(EPOCH, "within_last", 1)), sub_ms) == (ms - 86_400_000 + 1, ms)


def test_now_may_be_given_in_any_zone_but_must_be_aware() -> None:
    node = parse(["and", leaf(DATETIME, "within_last", 1)])
    profiles = stored(DATETIME, "2024-02-01T12:00:00Z")
    assert holds(node, profiles, now=NOW.astimezone(timezone(timedelta(hours=-5))))
    with pytest.raises(ValueError, match="timezone-aware"):
        holds(node, profiles, now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    "value",
    ["a' or True or '", 'b" or True or "', "x)\nreturn True\n(", "{held[0]}", "\\'", "ǅ", "__import__('os')"],
)
def test_condition_values_are_compared_as_data_whatever_they_spell(value: str) -> None:
    assert check(leaf(STRING, "exact", value), stored(STRING, value)) is True
    assert check(leaf(STRING, "exact", value), stored(STRING, value + " ")) is False
    assert check(leaf(STRING, "in", [value, "other"]), stored(STRING, value)) is True
    assert check(leaf(STRING, "substring", "or True"), stored(STRING, value)) is ("or True" in value)


def test_the_largest_allowed_tree_is_evaluated() -> None:
    # MAX_DEPTH levels cycling through and / or / not, the conditions spread over the and / or levels.
    operators = [("and", "or", "not")[level % 3] for level in range(MAX_DEPTH)]
    takers = [level for level, operator in enumerate(operators) if operator != "not"]
    thresholds = iter(range(MAX_LEAVES))
    tree: list[Any] | None = None
    for level in reversed(range(MAX_DEPTH)):
        if operators[level] == "not":
            tree = ["not", tree]
            continue
        count = MAX_LEAVES // len(takers) + (level == takers[0]) * (MAX_LEAVES % len(takers))
        conditions = [leaf(LONG, "ge", next(thresholds) % 21) for _ in range(count)]
        tree = [operators[level], *conditions, *([tree] if tree else [])]
    assert tree is not None
    node = parse(tree)

    def expected(document: list[Any], value: int) -> bool:
        operator, *operands = document
        results = [expected(o, value) if isinstance(o, list) else value >= o["value"] for o in operands]
        return (not results[0]) if operator == "not" else all(results) if operator == "and" else any(results)

    for value in range(22):
        profiles = stored(LONG, value)
        outcome = evaluate(node, profiles, now=NOW)
        assert outcome.matched is holds(node, profiles, now=NOW) is expected(tree, value), value
        assert len(outcome.leaves) == MAX_LEAVES
