"""An evaluation's answer is built from each result's encoded part, and read back by its digest."""

from __future__ import annotations

import orjson

from dcp.profiles.v1 import profiles_service_pb2 as pb
from gateway.audiences_api import _encoded_audiences
from services.domain.conditions.evaluate import LeafOutcome, Outcome
from services.profiles.client import outcome_document
from services.profiles.servicer import _OutcomeMessages
from services.profiles.targeting import AudienceResult


def _result(audience_id: int, name: str, *held: bool) -> AudienceResult:
    leaves = tuple(LeafOutcome(f"conditions[{n + 1}]", 2, 10 + n, "gt", h) for n, h in enumerate(held))
    return AudienceResult(audience_id, name, Outcome(all(held), leaves))


def test_equal_outcomes_share_a_digest_and_any_difference_changes_it() -> None:
    messages = _OutcomeMessages()
    answer = messages.answer(
        1,
        "u1",
        [
            _result(7, "spenders", True, False),
            _result(7, "spenders", True, False),
            _result(7, "big spenders", True, False),
            _result(7, "spenders", True, True),
            _result(8, "spenders", True, False),
        ],
    )
    digests = [outcome.digest for outcome in answer.audiences]
    assert all(len(digest) == 16 for digest in digests)
    assert digests[0] == digests[1]
    assert len(set(digests)) == 4
    assert (answer.dcp_service_id, answer.optimizely_user_id) == (1, "u1")
    assert [a.name for a in answer.audiences] == ["spenders", "spenders", "big spenders", "spenders", "spenders"]
    assert [[c.held for c in a.conditions] for a in answer.audiences][3] == [True, True]


def test_outcomes_with_and_without_a_digest_read_back_as_the_same_json() -> None:
    answer = _OutcomeMessages().answer(1, "u1", [_result(7, "spenders", True, False), _result(8, "other", False)])
    without = pb.EvaluateAudiencesResponse()
    without.CopyFrom(answer)
    for outcome in without.audiences:
        outcome.ClearField("digest")
    for saved in (True, False):
        with_digest = orjson.loads(b"[" + _encoded_audiences(answer.audiences, saved=saved) + b"]")
        assert orjson.loads(b"[" + _encoded_audiences(without.audiences, saved=saved) + b"]") == with_digest
    saved_documents = orjson.loads(b"[" + _encoded_audiences(answer.audiences, saved=True) + b"]")
    assert [(d["audienceId"], d["name"], d["matched"]) for d in saved_documents] == [
        ("7", "spenders", False),
        ("8", "other", False),
    ]
    assert [c["held"] for c in saved_documents[0]["conditions"]] == [True, False]
    unsaved = orjson.loads(b"[" + _encoded_audiences(answer.audiences, saved=False) + b"]")
    assert [(d["audienceId"], d["name"]) for d in unsaved] == [(None, None), (None, None)]


def test_a_json_answer_joins_the_documents_in_order() -> None:
    results = [_result(7, "spenders", True, False), _result(8, "other", True)]
    documents = [outcome_document(r.audience_id, r.name, r.outcome, saved=True) for r in results]
    answer = _OutcomeMessages.json_answer(1, "u1", documents)
    assert orjson.loads(answer.audiences_json) == orjson.loads(
        b"[" + _encoded_audiences(_OutcomeMessages().answer(1, "u1", results).audiences, saved=True) + b"]"
    )
    assert (answer.dcp_service_id, answer.optimizely_user_id, len(answer.audiences)) == (1, "u1", 0)
    assert orjson.loads(_OutcomeMessages.json_answer(1, "u2", documents[::-1]).audiences_json) == [
        orjson.loads(d) for d in documents[::-1]
    ]
    assert orjson.loads(_OutcomeMessages.json_answer(1, "u1", []).audiences_json) == []
