"""Audiences through the gateway: definitions checked on save, evaluation with reasons, members, exports."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from dcp.profiles.v1 import profiles_service_pb2 as pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as pb_grpc
from gateway.audiences_api import _encoded_audiences
from services._runtime.s3 import ObjectStore
from tests.conftest import MakeAccount, RunningPlatform, TestAccount
from tests.gateway.test_profile_api import ATTRIBUTES

V1 = "/experiment/v1"


@dataclass
class World:
    http: httpx.AsyncClient
    account: TestAccount
    service: int
    project: int
    optimizely: int
    crm: int
    attributes: dict[tuple[int, str], int]

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.request(method, path, json=body, headers=self.account.headers)

    def leaf(self, table: int, name: str, match_type: str, value: Any = None) -> dict[str, Any]:
        leaf: dict[str, Any] = {
            "type": "dcp",
            "dcp_datasource_id": table,
            "dcp_attribute_id": self.attributes[(table, name)],
            "match_type": match_type,
        }
        if value is not None:
            leaf["value"] = value
        return leaf

    async def audience(self, name: str, conditions: Any) -> dict[str, Any]:
        response = await self.call(
            "POST", f"{V1}/projects/{self.project}/audiences", {"name": name, "conditions": conditions}
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def write(self, table: int, customer: str, data: dict[str, Any]) -> None:
        response = await self.call("POST", f"/api/customer_profile/{self.service}/{table}/{customer}", {"data": data})
        assert response.status_code == 201, response.text

    async def alias(self, user: str, table: int, customer: str) -> None:
        response = await self.call(
            "POST", f"/api/alias/{self.service}/{self.optimizely}/{user}", {"data": {str(table): customer}}
        )
        assert response.status_code == 201, response.text


async def make_world(http: httpx.AsyncClient, account: TestAccount) -> World:
    async def post(path: str, body: Any) -> dict[str, Any]:
        response = await http.post(path, json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    service = (await post(f"{V1}/dcp_services", {"name": "shop"}))["id"]
    project = (await post(f"{V1}/projects", {"project_name": "web", "dcp_service_id": service}))["id"]
    optimizely = (await http.get(f"{V1}/dcp_services/{service}/dcp_datasources", headers=account.headers)).json()[0]
    crm = (
        await post(
            f"{V1}/dcp_services/{service}/dcp_datasources",
            {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        )
    )["id"]
    attributes = {}
    for table in (optimizely["id"], crm):
        for attribute in ATTRIBUTES:
            created = await post(f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", attribute)
            attributes[(table, attribute["name"])] = created["id"]
    return World(http, account, service, project, optimizely["id"], crm, attributes)


@pytest.fixture
async def world(http: httpx.AsyncClient, make_account: MakeAccount) -> World:
    return await make_world(http, await make_account())


async def test_audiences_are_created_read_listed_updated_and_archived(world: World) -> None:
    conditions = ["and", world.leaf(world.crm, "ltv", "gt", 100), world.leaf(world.optimizely, "vip", "exact", True)]
    created = await world.audience("big spenders", conditions)
    # v1 carries conditions as JSON text.
    assert orjson.loads(created["conditions"]) == conditions
    assert created["project_id"] == world.project
    assert created["archived"] is False
    fetched = (await world.call("GET", f"{V1}/audiences/{created['id']}")).json()
    assert fetched == created
    as_text = await world.audience("text", orjson.dumps(conditions).decode())
    assert orjson.loads(as_text["conditions"]) == conditions
    listed = (await world.call("GET", f"{V1}/projects/{world.project}/audiences")).json()
    assert [a["id"] for a in listed] == [created["id"], as_text["id"]]

    updated = await world.call("PUT", f"{V1}/audiences/{created['id']}", {"name": "whales", "conditions": "[]"})
    assert updated.status_code == 202, updated.text
    assert updated.json()["name"] == "whales"
    assert updated.json()["conditions"] == "[]"

    assert (await world.call("DELETE", f"{V1}/audiences/{created['id']}")).status_code == 204
    archived = (await world.call("GET", f"{V1}/audiences/{created['id']}")).json()
    assert archived["archived"] is True
    refused = await world.call("PUT", f"{V1}/audiences/{created['id']}", {"name": "again"})
    assert refused.status_code == 400
    assert refused.json()["code"] == "RESOURCE_ARCHIVED"


def _nest(depth: int, leaf: dict[str, Any]) -> list[Any]:
    node: list[Any] = ["and", leaf]
    for _ in range(depth - 1):
        node = ["and", node]
    return node


async def test_conditions_are_type_checked_when_saved(
    world: World, http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    other = await make_world(http, await make_account())  # another service's attributes
    await world.call("DELETE", f"{V1}/dcp_datasource_attributes/{world.attributes[(world.crm, 'score')]}")
    ltv = world.leaf(world.crm, "ltv", "gt", 1)
    cases: list[tuple[Any, str, str]] = [
        (["and", {**ltv, "value": "5"}], "conditions[1].value", "integer"),
        (["and", {**ltv, "value": 1.5}], "conditions[1].value", "integer"),
        (["and", world.leaf(world.crm, "category", "gt", "a")], "conditions[1].match_type", "string"),
        (["and", world.leaf(world.crm, "day", "before", "2024-13-01")], "conditions[1].value", "date"),
        (["and", world.leaf(world.crm, "vip", "within_last", 3)], "conditions[1].match_type", "bool"),
        (["and", world.leaf(world.crm, "category", "substring", ".*jeans")], "conditions[1].value", "regular"),
        (["and", world.leaf(world.crm, "score", "gt", 1.0)], "conditions[1]", "archived"),
        (["and", other.leaf(other.crm, "ltv", "gt", 1)], "conditions[1]", "not a table"),
        (["xor", ltv], "conditions[0]", "xor"),
        (["and", {**ltv, "match_type": "regex"}], "conditions[1].match_type", "regex"),
        (_nest(11, ltv), "conditions", "deep"),
        (["or", *([ltv] * 101)], "conditions", "100"),
        ("[not json", "conditions", "JSON"),
    ]
    for conditions, field, words in cases:
        response = await world.call(
            "POST", f"{V1}/projects/{world.project}/audiences", {"name": "x", "conditions": conditions}
        )
        assert response.status_code == 400, (conditions, response.text)
        body = response.json()
        fields = [e["field"] for e in body.get("errors", [])]
        assert any(f.startswith(field) for f in fields), (field, body)
        assert words.lower() in body["message"].lower() or any(
            words.lower() in e["message"].lower() for e in body.get("errors", [])
        ), (words, body)
    assert (await world.call("GET", f"{V1}/projects/{world.project}/audiences")).json() == []


async def test_a_project_without_a_dcp_service_cannot_hold_dcp_conditions(world: World) -> None:
    project = (await world.call("POST", f"{V1}/projects", {"project_name": "unlinked"})).json()["id"]
    response = await world.call(
        "POST",
        f"{V1}/projects/{project}/audiences",
        {"name": "x", "conditions": ["and", world.leaf(world.crm, "ltv", "exists")]},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "PROJECT_NOT_LINKED"
    empty = await world.call("POST", f"{V1}/projects/{project}/audiences", {"name": "manual"})
    assert empty.status_code == 201
    assert empty.json()["conditions"] == "[]"


async def test_evaluation_says_which_audiences_match_and_which_conditions_held(world: World) -> None:
    await world.write(world.optimizely, "u1", {"vip": True, "day": "2024-05-01"})
    await world.write(world.crm, "c1", {"ltv": 500, "category": "blue jeans"})
    await world.alias("u1", world.crm, "c1")
    spenders = await world.audience(
        "spenders",
        ["and", world.leaf(world.crm, "ltv", "ge", 500), world.leaf(world.optimizely, "vip", "exact", True)],
    )
    shirts = await world.audience(
        "shirts",
        ["or", world.leaf(world.crm, "category", "substring", "shirt"), world.leaf(world.crm, "score", "exists")],
    )
    not_shirts = await world.audience("not shirts", ["not", world.leaf(world.crm, "category", "substring", "shirt")])

    response = await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {})
    assert response.status_code == 200, response.text
    outcomes = {a["audienceId"]: a for a in response.json()["audiences"]}
    assert outcomes[str(spenders["id"])]["matched"] is True
    assert [c["held"] for c in outcomes[str(spenders["id"])]["conditions"]] == [True, True]
    assert outcomes[str(shirts["id"])]["matched"] is False
    assert [c["path"] for c in outcomes[str(shirts["id"])]["conditions"]] == ["conditions[1]", "conditions[2]"]
    assert outcomes[str(not_shirts["id"])]["matched"] is True

    # Nothing is known of u2: missing values never match, except under not.
    unknown = (await world.call("POST", f"/api/audiences/evaluate/{world.service}/u2", {})).json()["audiences"]
    assert {a["audienceId"]: a["matched"] for a in unknown} == {
        str(spenders["id"]): False,
        str(shirts["id"]): False,
        str(not_shirts["id"]): True,
    }

    chosen = await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {"audience_ids": [shirts["id"]]})
    assert [a["audienceId"] for a in chosen.json()["audiences"]] == [str(shirts["id"])]
    missing = await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {"audience_ids": [10**12]})
    assert missing.status_code == 404
    bad = await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {"audience_ids": "all"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "audience_ids"


async def test_outcomes_asked_for_as_json_are_the_documents_the_gateway_makes_of_the_messages(
    world: World, running: RunningPlatform
) -> None:
    await world.write(world.optimizely, "u1", {"vip": True})
    await world.write(world.crm, "c1", {"ltv": 500, "category": 'blue "slim" jeans \u00e9'})
    await world.alias("u1", world.crm, "c1")
    tree = ["and", world.leaf(world.crm, "ltv", "ge", 500), ["not", world.leaf(world.optimizely, "vip", "exact", True)]]
    await world.audience('spenders "gold"', tree)
    jeans = await world.audience("jeans", ["or", world.leaf(world.crm, "category", "substring", "jeans")])
    stub = pb_grpc.ProfilesServiceStub(running.channel)

    async def both(request: pb.EvaluateAudiencesRequest, *, saved: bool) -> Any:
        request.outcomes_as_json = False
        as_messages = await stub.EvaluateAudiences(request, metadata=world.account.metadata)
        request.outcomes_as_json = True
        as_json = await stub.EvaluateAudiences(request, metadata=world.account.metadata)
        assert as_messages.audiences_json == b""
        assert len(as_json.audiences) == 0
        assert (as_json.dcp_service_id, as_json.optimizely_user_id) == (world.service, "u1")
        documents = orjson.loads(as_json.audiences_json)
        assert documents == orjson.loads(b"[" + _encoded_audiences(as_messages.audiences, saved=saved) + b"]")
        return documents

    # Asked twice: the second answer comes from the documents kept from the first.
    for _ in range(2):
        saved = await both(
            pb.EvaluateAudiencesRequest(dcp_service_id=world.service, optimizely_user_id="u1"), saved=True
        )
        assert [(d["name"], d["matched"]) for d in saved] == [('spenders "gold"', False), ("jeans", True)]
    # Some of the audiences: a project's (here all of them), and those asked for by id.
    everyone = pb.EvaluateAudiencesRequest(dcp_service_id=world.service, optimizely_user_id="u1")
    in_project = pb.EvaluateAudiencesRequest(
        dcp_service_id=world.service, optimizely_user_id="u1", project_id=world.project
    )
    assert await both(in_project, saved=True) == saved
    picked = pb.EvaluateAudiencesRequest(
        dcp_service_id=world.service, optimizely_user_id="u1", audience_ids=[jeans["id"]]
    )
    assert await both(picked, saved=True) == saved[1:]
    # A renamed audience is answered with its new name, not with the documents kept for the old one.
    renamed = await world.call("PUT", f"{V1}/audiences/{jeans['id']}", {"name": "denim"})
    assert renamed.status_code == 202, renamed.text

    async def names() -> list[str]:
        answer = await stub.EvaluateAudiences(everyone, metadata=world.account.metadata)
        return [document["name"] for document in orjson.loads(answer.audiences_json)]

    deadline = time.monotonic() + 10
    everyone.outcomes_as_json = True
    while (seen := await names())[1] != "denim":
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.1)
    assert [d["name"] for d in await both(picked, saved=True)] == ["denim"]
    latest = await both(everyone, saved=True)
    assert [(d["name"], d["matched"]) for d in latest] == [('spenders "gold"', False), ("denim", True)]
    draft = await both(
        pb.EvaluateAudiencesRequest(
            dcp_service_id=world.service,
            optimizely_user_id="u1",
            draft=pb.AudienceDraft(project_id=world.project, conditions=orjson.dumps(tree).decode()),
        ),
        saved=False,
    )
    assert [(d["audienceId"], d["name"], d["matched"]) for d in draft] == [(None, None, False)]
    # The REST answer is the JSON form, passed on as it is.
    rest = (await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {})).json()
    assert rest["audiences"] == latest


async def test_views_and_evaluations_asked_together_each_answer_their_own_user(world: World) -> None:
    users = [f"u{n}" for n in range(12)]
    for n, user in enumerate(users):
        await world.write(world.optimizely, user, {"vip": n % 2 == 0})
        if n % 3:
            await world.write(world.crm, f"c{n}", {"ltv": n * 100})
            await world.alias(user, world.crm, f"c{n}")
    audience = await world.audience("big", ["and", world.leaf(world.crm, "ltv", "ge", 500)])

    async def view(user: str) -> Any:
        response = await world.call("GET", f"/api/consolidatedCustomerView/{world.service}/{user}")
        assert response.status_code == 200, response.text
        return response.json()

    async def matched(user: str) -> bool:
        response = await world.call("POST", f"/api/audiences/evaluate/{world.service}/{user}", {})
        assert response.status_code == 200, response.text
        outcome = next(a for a in response.json()["audiences"] if a["audienceId"] == str(audience["id"]))
        result: bool = outcome["matched"]
        return result

    alone = [await view(user) for user in users]
    together = await asyncio.gather(*(view(user) for user in users))
    assert together == alone
    # Each user's own values came back: the aliased ones carry their crm profile, the others do not.
    assert [len(answer) for answer in together] == [1 if n % 3 == 0 else 2 for n in range(12)]
    assert await asyncio.gather(*(matched(user) for user in users)) == [
        n % 3 != 0 and n * 100 >= 500 for n in range(12)
    ]


async def test_an_audience_changed_after_evaluations_is_answered_as_it_now_is(world: World) -> None:
    for user, ltv in (("u1", 500), ("u2", 700), ("u3", 5)):
        await world.write(world.crm, f"c-{user}", {"ltv": ltv})
        await world.alias(user, world.crm, f"c-{user}")
    audience = await world.audience("spenders", ["and", world.leaf(world.crm, "ltv", "ge", 500)])

    async def outcome(user: str) -> dict[str, Any]:
        response = await world.call("POST", f"/api/audiences/evaluate/{world.service}/{user}", {})
        assert response.status_code == 200, response.text
        only: dict[str, Any] = response.json()["audiences"][0]
        return only

    # Two users with the same pattern of results, one without: each gets their own answer.
    assert [(await outcome(user))["matched"] for user in ("u1", "u2", "u3", "u1")] == [True, True, False, True]

    changed = await world.call(
        "PUT",
        f"{V1}/audiences/{audience['id']}",
        {"name": "big spenders", "conditions": ["and", world.leaf(world.crm, "ltv", "ge", 600)]},
    )
    assert changed.status_code in (200, 202), changed.text
    await asyncio.sleep(1.1)  # the audience list's lifetime
    after = {user: await outcome(user) for user in ("u1", "u2", "u3")}
    assert {user: (o["name"], o["matched"]) for user, o in after.items()} == {
        "u1": ("big spenders", False),
        "u2": ("big spenders", True),
        "u3": ("big spenders", False),
    }
    assert [c["matchType"] for c in after["u2"]["conditions"]] == ["ge"]


async def test_an_attribute_archived_after_saving_stops_its_conditions_holding(world: World) -> None:
    await world.write(world.crm, "c1", {"ltv": 5})
    await world.alias("u1", world.crm, "c1")
    audience = await world.audience("has ltv", ["and", world.leaf(world.crm, "ltv", "exists")])
    before = (await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {})).json()["audiences"]
    assert before[0]["matched"] is True
    await world.call("DELETE", f"{V1}/dcp_datasource_attributes/{world.attributes[(world.crm, 'ltv')]}")
    await asyncio.sleep(1.1)  # the registry snapshot's lifetime
    after = (await world.call("POST", f"/api/audiences/evaluate/{world.service}/u1", {})).json()["audiences"]
    assert after[0]["matched"] is False
    assert after[0]["conditions"][0]["usable"] is False
    count = (await world.call("GET", f"{V1}/audiences/{audience['id']}/members/count")).json()
    assert count["count"] == 0


async def test_members_are_counted_and_listed_page_by_page(world: World) -> None:
    for i in range(7):
        await world.write(world.crm, f"c{i}", {"ltv": i * 10})
        await world.alias(f"u{i}", world.crm, f"c{i}")
    await world.write(world.optimizely, "u9", {"vip": True})  # known, but no crm values
    audience = await world.audience("ltv >= 20", ["and", world.leaf(world.crm, "ltv", "ge", 20)])
    count = await world.call("GET", f"{V1}/audiences/{audience['id']}/members/count")
    assert count.json() == {"audience_id": audience["id"], "count": 5}

    members: list[str] = []
    url: str | None = f"{V1}/audiences/{audience['id']}/members?per_page=2"
    while url:
        page = await world.call("GET", url)
        assert page.status_code == 200, page.text
        members += [m["optimizely_user_id"] for m in page.json()]
        link = page.headers.get("link")
        url = link[1 : link.index(">")] if link else None
    assert members == ["u2", "u3", "u4", "u5", "u6"]

    everyone_else = await world.audience("not ltv >= 20", ["not", world.leaf(world.crm, "ltv", "ge", 20)])
    others = (await world.call("GET", f"{V1}/audiences/{everyone_else['id']}/members")).json()
    assert [m["optimizely_user_id"] for m in others] == ["u0", "u1", "u9"]


async def _finished_export(world: World, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = await world.call("GET", path)
        assert response.status_code == 200, response.text
        export: dict[str, Any] = response.json()
        if export["status"] in ("done", "failed"):
            return export
        assert time.monotonic() < deadline, export
        await asyncio.sleep(0.1)


async def test_a_table_export_re_imports_unchanged(world: World, store: ObjectStore) -> None:
    rows: dict[str, dict[str, Any]] = {
        "c1": {"ltv": -(2**63), "score": 1e20, "vip": False, "category": 'say "hi", ok\nbye', "day": "2024-02-29"},
        "c2": {"at": "2024-02-29T23:59:59Z", "ms": 1457385393173, "score": 0.1, "category": "  padded "},
        "c3": {"category": "ünïcödé ✓"},
    }
    for customer, data in rows.items():
        await world.write(world.crm, customer, data)
    started = await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "csv"})
    assert started.status_code == 201, started.text
    export = await _finished_export(world, f"{V1}/dcp_datasources/{world.crm}/exports/{started.json()['id']}")
    assert export["status"] == "done", export
    assert export["row_count"] == 3
    assert export["key"].startswith("exports/")
    async with httpx.AsyncClient() as client:
        body = (await client.get(export["download_url"])).content
    header = next(csv.reader(io.StringIO(body.decode())))
    assert header == ["customerId", *(a["name"] for a in ATTRIBUTES)]

    # Dropped into another table's path, the file imports to exactly the same profiles.
    copy = (
        await world.call(
            "POST",
            f"{V1}/dcp_services/{world.service}/dcp_datasources",
            {"name": "copy", "keyfield_locator_type": "cookie", "keyfield_locator_name": "copy_id"},
        )
    ).json()
    for attribute in ATTRIBUTES:
        await world.call("POST", f"{V1}/dcp_datasources/{copy['id']}/dcp_datasource_attributes", attribute)
    await store.put(f"{copy['s3_path']}/export.csv", body)
    deadline = time.monotonic() + 30
    while True:
        uploads = (await world.call("GET", f"{V1}/dcp_datasources/{copy['id']}/uploads")).json()
        if uploads and uploads[0]["status"] != "pending" and uploads[0]["status"] != "processing":
            break
        assert time.monotonic() < deadline, uploads
        await asyncio.sleep(0.1)
    assert uploads[0]["status"] == "processed", uploads
    for customer, data in rows.items():
        imported = (await world.call("GET", f"/api/customer_profile/{world.service}/{copy['id']}/{customer}")).json()
        assert imported["data"] == data


async def test_a_table_export_as_json_lines(world: World, store: ObjectStore) -> None:
    await world.write(world.crm, "c1", {"ltv": 7, "vip": True})
    started = (await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "jsonl"})).json()
    export = await _finished_export(world, f"{V1}/dcp_datasources/{world.crm}/exports/{started['id']}")
    async with httpx.AsyncClient() as client:
        lines = (await client.get(export["download_url"])).content.splitlines()
    assert [orjson.loads(line) for line in lines] == [{"customerId": "c1", "data": {"ltv": 7, "vip": True}}]


async def test_an_audience_export_lists_members_with_their_consolidated_values(
    world: World, store: ObjectStore
) -> None:
    await world.write(world.optimizely, "u1", {"vip": True})
    await world.write(world.crm, "c1", {"ltv": 50})
    await world.alias("u1", world.crm, "c1")
    await world.write(world.crm, "c2", {"ltv": 1})
    await world.alias("u2", world.crm, "c2")
    audience = await world.audience("ltv > 10", ["and", world.leaf(world.crm, "ltv", "gt", 10)])
    started = await world.call("POST", f"{V1}/audiences/{audience['id']}/exports", {"format": "jsonl"})
    assert started.status_code == 201, started.text
    export = await _finished_export(world, f"{V1}/audiences/{audience['id']}/exports/{started.json()['id']}")
    assert export["status"] == "done", export
    assert export["row_count"] == 1
    async with httpx.AsyncClient() as client:
        [line] = (await client.get(export["download_url"])).content.splitlines()
    assert orjson.loads(line) == {
        "optimizelyUserId": "u1",
        "profiles": [
            {"datasourceId": str(world.optimizely), "data": {"vip": True}},
            {"datasourceId": str(world.crm), "data": {"ltv": 50}},
        ],
    }
    as_csv = (await world.call("POST", f"{V1}/audiences/{audience['id']}/exports")).json()
    export = await _finished_export(world, f"{V1}/audiences/{audience['id']}/exports/{as_csv['id']}")
    async with httpx.AsyncClient() as client:
        table = list(csv.reader(io.StringIO((await client.get(export["download_url"])).text)))
    assert table[0][0] == "customerId"
    assert "crm.ltv" in table[0]
    assert "Optimizely.vip" in table[0]
    assert table[1][0] == "u1"
    assert table[1][table[0].index("crm.ltv")] == "50"


async def test_exports_of_archived_tables_and_unknown_formats_are_refused(world: World, store: ObjectStore) -> None:
    bad_format = await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "xml"})
    assert bad_format.status_code == 400
    assert bad_format.json()["errors"][0]["field"] == "format"
    await world.call("DELETE", f"{V1}/dcp_datasources/{world.crm}")
    archived = await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "csv"})
    assert archived.status_code == 400, archived.text
    assert archived.json()["code"] == "RESOURCE_ARCHIVED"


async def _pages(world: World, url: str) -> list[dict[str, Any]]:
    """Every item of a paginated listing, following its Link headers."""
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        page = await world.call("GET", next_url)
        assert page.status_code == 200, page.text
        items += page.json()
        link = page.headers.get("link")
        next_url = link[1 : link.index(">")] if link else None
    return items


def _without_url(export: dict[str, Any]) -> dict[str, Any]:
    # A download URL is signed afresh for every answer.
    return {key: value for key, value in export.items() if key != "download_url"}


async def test_past_exports_are_listed_newest_first_per_service_table_and_audience(
    world: World, store: ObjectStore
) -> None:
    await world.write(world.crm, "c1", {"ltv": 50})
    await world.write(world.optimizely, "u1", {"vip": True})
    await world.alias("u1", world.crm, "c1")
    audience = await world.audience("ltv > 10", ["and", world.leaf(world.crm, "ltv", "gt", 10)])
    started = [
        (await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "csv"})).json(),
        (await world.call("POST", f"{V1}/audiences/{audience['id']}/exports", {"format": "jsonl"})).json(),
        (await world.call("POST", f"{V1}/dcp_datasources/{world.optimizely}/exports")).json(),
        (await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "jsonl"})).json(),
    ]
    paths = [
        f"{V1}/dcp_datasources/{world.crm}/exports/{started[0]['id']}",
        f"{V1}/audiences/{audience['id']}/exports/{started[1]['id']}",
        f"{V1}/dcp_datasources/{world.optimizely}/exports/{started[2]['id']}",
        f"{V1}/dcp_datasources/{world.crm}/exports/{started[3]['id']}",
    ]
    finished = [await _finished_export(world, path) for path in paths]
    assert [e["status"] for e in finished] == ["done"] * 4

    everything = await world.call("GET", f"{V1}/dcp_services/{world.service}/exports")
    assert everything.status_code == 200, everything.text
    assert "link" not in everything.headers
    listed = everything.json()
    # Each exactly as its own GET shows it, newest first.
    assert [_without_url(e) for e in listed] == [_without_url(e) for e in reversed(finished)]
    async with httpx.AsyncClient() as client:
        for export in listed:
            download = await client.get(export["download_url"])
            assert download.status_code == 200
            assert len(download.content) == export["size_bytes"]

    # Any of them by its id alone, whether of a table or of an audience.
    for export in finished:
        by_id = await world.call("GET", f"{V1}/exports/{export['id']}")
        assert by_id.status_code == 200, by_id.text
        assert _without_url(by_id.json()) == _without_url(export)

    crm = (await world.call("GET", f"{V1}/dcp_datasources/{world.crm}/exports")).json()
    assert [e["id"] for e in crm] == [started[3]["id"], started[0]["id"]]
    assert all(e["dcp_datasource_id"] == world.crm for e in crm)
    members = (await world.call("GET", f"{V1}/audiences/{audience['id']}/exports")).json()
    assert [(e["id"], e["audience_id"]) for e in members] == [(started[1]["id"], audience["id"])]

    paged = await _pages(world, f"{V1}/dcp_services/{world.service}/exports?per_page=1")
    assert [e["id"] for e in paged] == [e["id"] for e in listed]
    first = await world.call("GET", f"{V1}/dcp_services/{world.service}/exports?per_page=3")
    assert len(first.json()) == 3
    assert 'rel="next"' in first.headers["link"]
    for bad in ("0", "101", "x"):
        refused = await world.call("GET", f"{V1}/dcp_services/{world.service}/exports?per_page={bad}")
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["field"] == "per_page"
    stranger = await world.call(
        "GET", f"{V1}/dcp_datasources/{world.crm}/exports?page_token={first.headers['link'].split('page_token=')[1]}"
    )
    assert stranger.status_code == 400, stranger.text
    assert stranger.json()["errors"][0]["field"] == "page_token"


async def test_exports_of_an_archived_table_stay_listed(world: World, store: ObjectStore) -> None:
    started = (await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports")).json()
    await _finished_export(world, f"{V1}/dcp_datasources/{world.crm}/exports/{started['id']}")
    assert (await world.call("DELETE", f"{V1}/dcp_datasources/{world.crm}")).status_code == 204
    listed = (await world.call("GET", f"{V1}/dcp_datasources/{world.crm}/exports")).json()
    assert [e["id"] for e in listed] == [started["id"]]
    assert (await world.call("GET", f"{V1}/dcp_datasources/{10**12}/exports")).status_code == 404


async def test_an_unsaved_audience_is_counted_like_a_saved_one_and_nothing_is_stored(world: World) -> None:
    for i in range(7):
        await world.write(world.crm, f"c{i}", {"ltv": i * 10})
        await world.alias(f"u{i}", world.crm, f"c{i}")
    await world.write(world.optimizely, "u9", {"vip": True})
    count_path = f"{V1}/projects/{world.project}/audiences/count"
    conditions = ["and", world.leaf(world.crm, "ltv", "ge", 20)]
    draft = await world.call("POST", count_path, {"conditions": conditions})
    assert draft.status_code == 200, draft.text
    assert draft.json() == {"count": 5}
    as_text = await world.call("POST", count_path, {"conditions": orjson.dumps(conditions).decode()})
    assert as_text.json() == {"count": 5}
    negated = await world.call("POST", count_path, {"conditions": ["not", conditions]})
    assert negated.json() == {"count": 3}
    nothing: Any
    for nothing in ([], "[]", ""):
        assert (await world.call("POST", count_path, {"conditions": nothing})).json() == {"count": 0}
    assert (await world.call("GET", f"{V1}/projects/{world.project}/audiences")).json() == []

    saved = await world.audience("ltv >= 20", conditions)
    assert (await world.call("GET", f"{V1}/audiences/{saved['id']}/members/count")).json()["count"] == 5


async def test_an_unsaved_audience_is_refused_exactly_as_saving_it_would_be(
    world: World, http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    other = await make_world(http, await make_account())
    await world.call("DELETE", f"{V1}/dcp_datasource_attributes/{world.attributes[(world.crm, 'score')]}")
    ltv = world.leaf(world.crm, "ltv", "gt", 1)
    bad_trees: list[Any] = [
        ["and", {**ltv, "value": "5"}],
        ["and", world.leaf(world.crm, "category", "gt", "a")],
        ["and", world.leaf(world.crm, "score", "gt", 1.0)],
        ["and", other.leaf(other.crm, "ltv", "gt", 1)],
        ["xor", ltv],
        _nest(11, ltv),
        ["or", *([ltv] * 101)],
        ["or", *([{**ltv, "value": "x"}] * 30)],
        "[not json",
        {"type": "dcp"},
    ]
    unlinked = (await world.call("POST", f"{V1}/projects", {"project_name": "unlinked"})).json()["id"]
    cases = [(world.project, tree) for tree in bad_trees] + [(unlinked, ["and", ltv])]
    for project, tree in cases:
        saving = await world.call("POST", f"{V1}/projects/{project}/audiences", {"name": "x", "conditions": tree})
        assert saving.status_code == 400, saving.text
        counting = await world.call("POST", f"{V1}/projects/{project}/audiences/count", {"conditions": tree})
        evaluating = await world.call(
            "POST", f"/api/audiences/evaluate/{world.service}/u1", {"project_id": project, "conditions": tree}
        )
        assert (counting.status_code, counting.json()) == (400, saving.json()), tree
        assert (evaluating.status_code, evaluating.json()) == (400, saving.json()), tree
    assert saving.json()["code"] == "PROJECT_NOT_LINKED"
    # Counting needs a DCP service even for no conditions, as a saved audience's count does.
    empty = await world.call("POST", f"{V1}/projects/{unlinked}/audiences/count", {"conditions": []})
    assert (empty.status_code, empty.json()["code"]) == (400, "PROJECT_NOT_LINKED")
    assert (await world.call("GET", f"{V1}/projects/{world.project}/audiences")).json() == []

    for body, field in (
        ({"conditions": 5}, "conditions"),
        ({"conditions": None}, "conditions"),
        ({"conditions": [], "name": "x"}, "name"),
    ):
        refused = await world.call("POST", f"{V1}/projects/{world.project}/audiences/count", body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["field"] == field
    missing = await world.call("POST", f"{V1}/projects/{10**12}/audiences/count", {"conditions": []})
    assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")


async def test_an_unsaved_audience_is_evaluated_for_one_user(world: World) -> None:
    await world.write(world.optimizely, "u1", {"vip": True})
    await world.write(world.crm, "c1", {"ltv": 500, "category": "blue jeans"})
    await world.alias("u1", world.crm, "c1")
    tree = [
        "and",
        world.leaf(world.crm, "ltv", "ge", 500),
        ["not", world.leaf(world.optimizely, "vip", "exact", True)],
    ]
    evaluate = f"/api/audiences/evaluate/{world.service}/u1"
    response = await world.call("POST", evaluate, {"project_id": world.project, "conditions": tree})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "optimizelyUserId": "u1",
        "dcpServiceId": str(world.service),
        "audiences": [
            {
                "audienceId": None,
                "name": None,
                "matched": False,
                "conditions": [
                    {
                        "path": "conditions[1]",
                        "datasourceId": str(world.crm),
                        "attributeId": str(world.attributes[(world.crm, "ltv")]),
                        "matchType": "ge",
                        "held": True,
                        "usable": True,
                    },
                    {
                        "path": "conditions[2][1]",
                        "datasourceId": str(world.optimizely),
                        "attributeId": str(world.attributes[(world.optimizely, "vip")]),
                        "matchType": "exact",
                        "held": True,
                        "usable": True,
                    },
                ],
            }
        ],
    }
    as_text = await world.call(
        "POST", evaluate, {"project_id": world.project, "conditions": orjson.dumps(tree[:2]).decode()}
    )
    assert [a["matched"] for a in as_text.json()["audiences"]] == [True]
    saved = await world.audience("saved", tree)
    both = (await world.call("POST", evaluate, {})).json()["audiences"]
    assert [(a["audienceId"], a["matched"]) for a in both] == [(str(saved["id"]), False)]

    unlinked = (await world.call("POST", f"{V1}/projects", {"project_name": "unlinked"})).json()["id"]
    for body, field in (
        ({"conditions": tree}, "project_id"),
        ({"project_id": world.project, "conditions": tree, "audience_ids": [saved["id"]]}, "audience_ids"),
        ({"project_id": world.project, "conditions": 7}, "conditions"),
        ({"project_id": unlinked, "conditions": []}, "project_id"),
    ):
        refused = await world.call("POST", evaluate, body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["field"] == field, refused.json()
