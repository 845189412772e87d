"""The v1 profile API: merges, typing, the consolidated view, aliases, guards, resolving."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from dcp.profiles.v1 import profiles_service_pb2 as pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as pb_grpc
from gateway.profile_api import _profile, consolidated_answer
from gateway.responses import JSONResponse
from services.profiles.client import value_from_proto
from tests.conftest import MakeAccount, RunningPlatform, TestAccount

V1 = "/experiment/v1"
ATTRIBUTES: list[dict[str, Any]] = [
    {"name": "ltv", "datatype": "long"},
    {"name": "score", "datatype": "double"},
    {"name": "vip", "datatype": "bool"},
    {"name": "category", "datatype": "string"},
    {"name": "day", "datatype": "datetime", "format": "yyyy-mm-dd"},
    {"name": "at", "datatype": "datetime", "format": "yyyy-mm-ddThh:mm:ssZ"},
    {"name": "ms", "datatype": "datetime", "format": "epoch"},
]


@dataclass
class World:
    http: httpx.AsyncClient
    account: TestAccount
    service: int
    optimizely: int
    crm: int
    web: int

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.account.headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self.account.headers)

    def profile(self, table: int, customer: str) -> str:
        return f"/api/customer_profile/{self.service}/{table}/{customer}"


@pytest.fixture
async def world(http: httpx.AsyncClient, make_account: MakeAccount) -> World:
    account = await make_account()
    service = (await http.post(f"{V1}/dcp_services", json={"name": "s"}, headers=account.headers)).json()["id"]
    optimizely = (await http.get(f"{V1}/dcp_services/{service}/dcp_datasources", headers=account.headers)).json()[0]
    tables = []
    for name in ("crm", "web"):
        created = await http.post(
            f"{V1}/dcp_services/{service}/dcp_datasources",
            json={"name": name, "keyfield_locator_type": "cookie", "keyfield_locator_name": f"{name}_id"},
            headers=account.headers,
        )
        tables.append(created.json()["id"])
    for table in (optimizely["id"], *tables):
        for attribute in ATTRIBUTES:
            response = await http.post(
                f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", json=attribute, headers=account.headers
            )
            assert response.status_code == 201
    return World(http, account, service, optimizely["id"], tables[0], tables[1])


async def test_writes_merge_partially_and_null_clears(world: World) -> None:
    path = world.profile(world.crm, "c1")
    first = await world.post(path, {"data": {"ltv": 10, "category": "jeans"}})
    assert first.status_code == 201
    assert first.json() == {
        "customerId": "c1",
        "dcpServiceId": str(world.service),
        "datasourceId": str(world.crm),
        "data": {"ltv": 10, "category": "jeans"},
    }
    second = await world.post(path, {"data": {"ltv": 11, "vip": True}})
    assert second.json()["data"] == {"ltv": 11, "vip": True, "category": "jeans"}
    cleared = await world.post(path, {"data": {"category": None}})
    assert cleared.json()["data"] == {"ltv": 11, "vip": True}
    assert (await world.get(path)).json()["data"] == {"ltv": 11, "vip": True}
    await world.post(path, {"data": {"ltv": None, "vip": None}})
    assert (await world.get(path)).status_code == 404


GOOD: list[tuple[str, Any]] = [
    ("ltv", 2**63 - 1),
    ("ltv", -(2**63)),
    ("score", 1.5),
    ("vip", False),
    ("category", "Height: 6'1\""),
    ("day", "2024-02-29"),
    ("at", "2024-02-29T23:59:59Z"),
    ("ms", 1457385393173),
]
BAD: list[tuple[str, Any]] = [
    ("ltv", 1.5),
    ("ltv", True),
    ("ltv", "10"),
    ("ltv", 2**63),
    ("score", "1.5"),
    ("vip", "true"),
    ("category", 5),
    ("category", "x" * 4097),
    ("category", "a\u0000b"),
    ("day", "2023-02-29"),
    ("at", "2024-02-29T10:00:00+01:00"),
    ("ms", "1457385393173"),
    ("ltv", [1]),
]


@pytest.mark.parametrize(("name", "value"), GOOD, ids=[f"{n}={v!r}"[:40] for n, v in GOOD])
async def test_values_that_fit_read_back_as_written(world: World, name: str, value: Any) -> None:
    response = await world.post(world.profile(world.crm, "c1"), {"data": {name: value}})
    assert response.status_code == 201, response.text
    assert (await world.get(world.profile(world.crm, "c1"))).json()["data"] == {name: value}


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}"[:40] for n, v in BAD])
async def test_values_that_do_not_fit_are_refused_and_nothing_is_stored(world: World, name: str, value: Any) -> None:
    await world.post(world.profile(world.crm, "c1"), {"data": {"vip": True}})
    # A good value beside the bad one is not stored either.
    good_neighbour: dict[str, Any] = {"day": "2024-01-01"} if name != "day" else {"ltv": 3}
    response = await world.post(world.profile(world.crm, "c1"), {"data": {**good_neighbour, name: value}})
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [f"data.{name}"]
    assert (await world.get(world.profile(world.crm, "c1"))).json()["data"] == {"vip": True}


async def test_keys_must_be_active_attribute_names(world: World) -> None:
    attributes = (await world.get(f"{V1}/dcp_datasources/{world.crm}/dcp_datasource_attributes")).json()
    ltv = next(a for a in attributes if a["name"] == "ltv")
    by_id = await world.post(world.profile(world.crm, "c1"), {"data": {str(ltv["id"]): 1}})
    assert by_id.status_code == 400
    assert "use the attribute's name 'ltv'" in by_id.json()["errors"][0]["message"]
    too_many = await world.post(world.profile(world.crm, "c1"), {"data": {f"k{i}": 1 for i in range(1001)}})
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["field"] == "data"
    bodies: list[Any] = [[], {"ltv": 1}, {"data": 5}]
    for body in bodies:
        assert (await world.post(world.profile(world.crm, "c1"), body)).status_code == 400

    await world.post(world.profile(world.crm, "c1"), {"data": {"ltv": 1, "category": "a"}})
    assert (
        await world.http.delete(f"{V1}/dcp_datasource_attributes/{ltv['id']}", headers=world.account.headers)
    ).status_code == 204
    await asyncio.sleep(1.1)
    assert (await world.get(world.profile(world.crm, "c1"))).json()["data"] == {"category": "a"}
    assert (await world.post(world.profile(world.crm, "c1"), {"data": {"ltv": 2}})).status_code == 400
    fresh = await world.post(
        f"{V1}/dcp_datasources/{world.crm}/dcp_datasource_attributes", {"name": "ltv", "datatype": "string"}
    )
    assert fresh.status_code == 201
    # Registered a moment ago, writable at once; the archived attribute's value never resurfaces.
    assert (await world.post(world.profile(world.crm, "c1"), {"data": {"ltv": "high"}})).status_code == 201
    assert (await world.get(world.profile(world.crm, "c1"))).json()["data"] == {"category": "a", "ltv": "high"}


async def test_unknown_places_are_404(world: World) -> None:
    assert (await world.get(f"/api/customer_profile/999/{world.crm}/c1")).status_code == 404
    assert (await world.get(f"/api/customer_profile/{world.service}/999/c1")).status_code == 404
    assert (await world.post(f"/api/customer_profile/{world.service}/999/c1", {"data": {"ltv": 1}})).status_code == 404


async def test_personal_data_is_refused_unless_the_service_turns_the_guard_off(world: World) -> None:
    for customer, data in (("jane@example.com", {"ltv": 1}), ("c1", {"category": "4111 1111 1111 1111"})):
        refused = await world.post(world.profile(world.crm, customer), {"data": data})
        assert refused.status_code == 400
        assert "personally identifiable information" in refused.json()["message"]
    assert (
        await world.http.put(
            f"{V1}/dcp_services/{world.service}", json={"pii_guard": False}, headers=world.account.headers
        )
    ).status_code == 202
    await asyncio.sleep(1.1)
    accepted = await world.post(world.profile(world.crm, "c1"), {"data": {"category": "123-45-6789"}})
    assert accepted.status_code == 201


async def test_the_consolidated_view_puts_the_optimizely_profile_first(world: World) -> None:
    assert (await world.get(f"/api/consolidatedCustomerView/{world.service}/oeu1")).json() == []
    await world.post(world.profile(world.web, "w1"), {"data": {"ltv": 2}})
    await world.post(world.profile(world.crm, "c1"), {"data": {"ltv": 1}})
    await world.post(world.profile(world.optimizely, "oeu1"), {"data": {"vip": True}})
    linked = await world.post(
        f"/api/alias/{world.service}/{world.optimizely}/oeu1", {"data": {str(world.web): "w1", str(world.crm): "c1"}}
    )
    assert linked.status_code == 201
    assert linked.json()["data"] == {str(world.crm): "c1", str(world.web): "w1"}
    for path in (
        f"/api/consolidatedCustomerView/{world.service}/oeu1",
        f"/api/consolidatedCustomerView/{world.service}/{world.optimizely}/oeu1",
    ):
        view = (await world.get(path)).json()
        assert [p["datasourceId"] for p in view] == [str(world.optimizely), str(world.crm), str(world.web)]
        assert [p["customerId"] for p in view] == ["oeu1", "c1", "w1"]
    assert (await world.get(f"/api/consolidatedCustomerView/{world.service}/{world.crm}/oeu1")).status_code == 404


async def test_alias_rules_and_guardrails(world: World) -> None:
    base = f"/api/alias/{world.service}/{world.optimizely}"
    for key in (str(world.optimizely), "999"):
        assert (await world.post(f"{base}/oeu1", {"data": {key: "c1"}})).status_code == 400
    for placeholder in ("", "NULL", "undefined", "0", "Anonymous"):
        refused = await world.post(f"{base}/oeu1", {"data": {str(world.crm): placeholder}})
        assert refused.status_code == 400, placeholder
    assert (await world.get(f"{base}/oeu1")).json()["data"] == {}
    await world.post(f"{base}/oeu1", {"data": {str(world.crm): "c1"}})
    replaced = await world.post(f"{base}/oeu1", {"data": {str(world.crm): "c2"}})
    assert replaced.json()["data"] == {str(world.crm): "c2"}

    await world.http.put(
        f"{V1}/dcp_services/{world.service}", json={"alias_max_users_per_customer_id": 2}, headers=world.account.headers
    )
    await asyncio.sleep(1.1)
    assert (await world.post(f"{base}/oeu2", {"data": {str(world.crm): "c2"}})).status_code == 201
    capped = await world.post(f"{base}/oeu3", {"data": {str(world.crm): "c2"}})
    assert capped.status_code == 400
    assert "already linked to 2 Optimizely users" in capped.json()["errors"][0]["message"]

    gone = await world.http.delete(f"{base}/oeu2/{world.crm}", headers=world.account.headers)
    assert gone.status_code == 204
    assert (await world.get(f"{base}/oeu2")).json()["data"] == {}


async def test_resolve_links_what_the_visitor_carries(world: World) -> None:
    await world.post(world.profile(world.crm, "c9"), {"data": {"ltv": 9}})
    response = await world.post(
        f"/api/resolve/{world.service}/oeu9",
        {"cookies": {"crm_id": "c9", "web_id": "undefined"}, "query": {}, "js": {}},
    )
    assert response.status_code == 200
    assert [p["customerId"] for p in response.json()] == ["c9"]
    assert response.headers["X-DCP-Skipped-Tables"] == str(world.web)
    aliases = (await world.get(f"/api/alias/{world.service}/{world.optimizely}/oeu9")).json()
    assert aliases["data"] == {str(world.crm): "c9"}


async def test_batch_merge_applies_rows_in_order_and_reports_bad_rows(world: World, running: RunningPlatform) -> None:
    stub = pb_grpc.ProfilesServiceStub(running.channel)

    def row(number: int, customer: str, **values: pb.Value) -> pb.ProfileRow:
        return pb.ProfileRow(row_number=number, customer_id=customer, data=values)

    async def requests() -> Any:
        yield pb.MergeProfilesRequest(
            dcp_service_id=world.service,
            dcp_datasource_id=world.crm,
            rows=[row(1, "b1", ltv=pb.Value(long_value=1)), row(2, "b1", ltv=pb.Value(long_value=2))],
        )
        yield pb.MergeProfilesRequest(
            rows=[row(3, "b2", ltv=pb.Value(string_value="x")), row(4, "b3", vip=pb.Value(bool_value=True))]
        )

    result = await stub.MergeProfiles(requests(), metadata=world.account.metadata)
    assert (result.rows_received, result.rows_stored, result.rows_rejected) == (4, 3, 1)
    assert [(e.row_number, e.field) for e in result.errors] == [(3, "ltv")]
    assert (await world.get(world.profile(world.crm, "b1"))).json()["data"] == {"ltv": 2}
    assert (await world.get(world.profile(world.crm, "b2"))).status_code == 404
    assert (await world.get(world.profile(world.crm, "b3"))).json()["data"] == {"vip": True}


async def test_a_profile_asked_for_as_json_holds_the_typed_values_in_registration_order(
    world: World, running: RunningPlatform
) -> None:
    stub = pb_grpc.ProfilesServiceStub(running.channel)
    metadata = world.account.metadata
    written = {
        "ms": pb.Value(long_value=1457385393173),
        "ltv": pb.Value(long_value=-(2**63)),
        "score": pb.Value(double_value=0.1),
        "vip": pb.Value(bool_value=False),
        "category": pb.Value(string_value='jeans "slim" \u00e9'),
        "day": pb.Value(string_value="2024-02-29"),
        "at": pb.Value(string_value="2024-02-29T10:00:00Z"),
    }

    def typed(profile: pb.Profile) -> dict[str, Any]:
        assert profile.data_json == b""
        return {name: value_from_proto(value) for name, value in profile.data.items()}

    def as_json(profile: pb.Profile) -> dict[str, Any]:
        assert len(profile.data) == 0
        values: dict[str, Any] = orjson.loads(profile.data_json)
        assert list(values) == [attribute["name"] for attribute in ATTRIBUTES]
        return values

    for table, customer in ((world.optimizely, "oeu1"), (world.crm, "c1")):
        merged = [
            await stub.MergeProfile(
                pb.MergeProfileRequest(
                    dcp_service_id=world.service,
                    dcp_datasource_id=table,
                    customer_id=customer,
                    data=written,
                    data_as_json=json,
                ),
                metadata=metadata,
            )
            for json in (False, True)
        ]
        assert typed(merged[0]) == as_json(merged[1])
        read = [
            await stub.GetProfile(
                pb.GetProfileRequest(
                    dcp_service_id=world.service, dcp_datasource_id=table, customer_id=customer, data_as_json=json
                ),
                metadata=metadata,
            )
            for json in (False, True)
        ]
        assert typed(read[0]) == as_json(read[1]) == typed(merged[0])
        assert (read[1].customer_id, read[1].dcp_datasource_id) == (customer, table)
    await world.post(f"/api/alias/{world.service}/{world.optimizely}/oeu1", {"data": {str(world.crm): "c1"}})
    views = [
        await stub.GetConsolidatedView(
            pb.GetConsolidatedViewRequest(dcp_service_id=world.service, optimizely_user_id="oeu1", data_as_json=json),
            metadata=metadata,
        )
        for json in (False, True)
    ]
    assert [typed(p) for p in views[0].profiles] == [as_json(p) for p in views[1].profiles]
    assert [p.customer_id for p in views[1].profiles] == ["oeu1", "c1"]
    expected = typed(views[0].profiles[0])
    assert (expected["ltv"], expected["score"]) == (-(2**63), 0.1)
    assert expected["vip"] is False
    # The REST answer is the JSON form, passed on as it is.
    assert (await world.get(world.profile(world.crm, "c1"))).json()["data"] == expected
    # The whole view as one JSON array: the documents the gateway makes of the messages, in their order.
    whole = await stub.GetConsolidatedView(
        pb.GetConsolidatedViewRequest(dcp_service_id=world.service, optimizely_user_id="oeu1", profiles_as_json=True),
        metadata=metadata,
    )
    assert len(whole.profiles) == 0
    documents = orjson.loads(whole.profiles_json)
    assert documents == orjson.loads(JSONResponse([_profile(p) for p in views[0].profiles]).body)
    assert [(d["customerId"], d["datasourceId"]) for d in documents] == [
        ("oeu1", str(world.optimizely)),
        ("c1", str(world.crm)),
    ]
    assert list(documents[1]["data"]) == [attribute["name"] for attribute in ATTRIBUTES]
    assert (await world.get(f"/api/consolidatedCustomerView/{world.service}/oeu1")).json() == documents
    # A user with nothing stored: an empty array, not an absent one.
    nobody = await stub.GetConsolidatedView(
        pb.GetConsolidatedViewRequest(dcp_service_id=world.service, optimizely_user_id="oeu2", profiles_as_json=True),
        metadata=metadata,
    )
    assert nobody.profiles_json == b"[]"


def test_a_view_from_a_service_without_the_json_array_is_answered_from_its_messages() -> None:
    messages = pb.ConsolidatedView(
        profiles=[
            pb.Profile(dcp_service_id=1, dcp_datasource_id=2, customer_id="u1", data_json=b'{"vip":true}'),
            pb.Profile(dcp_service_id=1, dcp_datasource_id=3, customer_id="c1", data={"ltv": pb.Value(long_value=7)}),
        ]
    )
    documents = [
        {"customerId": "u1", "dcpServiceId": "1", "datasourceId": "2", "data": {"vip": True}},
        {"customerId": "c1", "dcpServiceId": "1", "datasourceId": "3", "data": {"ltv": 7}},
    ]
    assert orjson.loads(consolidated_answer(messages).body) == documents
    assert orjson.loads(consolidated_answer(pb.ConsolidatedView()).body) == []
    # Sent as one array, it is passed on byte for byte.
    array = orjson.dumps(documents)
    answer = consolidated_answer(pb.ConsolidatedView(profiles_json=array))
    assert (answer.body, answer.media_type) == (array, "application/json")


def test_a_profile_from_a_service_without_the_json_form_is_answered_from_its_typed_map() -> None:
    profile = pb.Profile(
        dcp_service_id=1,
        dcp_datasource_id=2,
        customer_id="c1",
        data={"ltv": pb.Value(long_value=7), "vip": pb.Value(bool_value=True), "gone": pb.Value(null_value=True)},
    )
    assert orjson.loads(JSONResponse(_profile(profile)).body) == {
        "customerId": "c1",
        "dcpServiceId": "1",
        "datasourceId": "2",
        "data": {"ltv": 7, "vip": True, "gone": None},
    }
