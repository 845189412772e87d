"""The engine benchmark compares like with like: its audiences mean the same to DCP and to flagsmith-flag-engine."""

from __future__ import annotations

from typing import Any

import pytest

from bench import engine_workload
from bench.engine_workload import build, disagreements, match_rate, segment


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_both_engines_put_every_user_in_the_same_audiences(seed: int) -> None:
    workload = build(400, seed=seed)
    assert len(workload.nodes) == len(workload.segments) == 25
    assert disagreements(workload) == []
    # Neither all nor nothing matches, so the agreement is about something.
    assert 0.05 < match_rate(workload) < 0.6


def test_every_audience_mixes_the_five_match_types_in_nested_groups() -> None:
    workload = build(1, seed=4)

    def leaves(document: list[Any]) -> list[dict[str, Any]]:
        return [
            found for operand in document[1:] for found in (leaves(operand) if isinstance(operand, list) else [operand])
        ]

    for document in workload.conditions:
        assert sorted(leaf["match_type"] for leaf in leaves(document)) == ["exact", "exists", "gt", "lt", "substring"]
        assert any(isinstance(operand, list) for operand in document[1:])


def test_an_or_mixing_conditions_and_groups_keeps_its_meaning_in_flagsmith() -> None:
    # Flagsmith's ANY rule requires its conditions and its sub-rules each to match: written naively,
    # this audience would need the plan to be "pro" as well as the nested group.
    plan = {"type": "dcp", "dcp_datasource_id": 101, "dcp_attribute_id": 1, "match_type": "exact", "value": "pro"}
    visits = {"type": "dcp", "dcp_datasource_id": 101, "dcp_attribute_id": 4, "match_type": "gt", "value": 10}
    rule = segment(0, ["or", plan, ["and", visits]])["rules"][0]
    assert rule == {
        "type": "ANY",
        "rules": [
            {"type": "ALL", "conditions": [{"property": "plan", "operator": "EQUAL", "value": "pro"}]},
            {"type": "ALL", "conditions": [{"property": "visits", "operator": "GREATER_THAN", "value": "10"}]},
        ],
    }


def test_a_disagreement_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = build(200, seed=1)
    # An engine that puts nobody anywhere must be caught wherever DCP finds a member.
    monkeypatch.setattr(engine_workload, "get_evaluation_result", lambda context: {"flags": {}, "segments": []})
    found = disagreements(workload)
    assert found
    assert {d.how for d in found} == {"holds / get_evaluation_result"}
    assert all(d.dcp and not d.flagsmith for d in found)
