"""One account never sees another's data: every endpoint answers 404 as if it did not exist."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MakeAccount, TestAccount

V1 = "/experiment/v1"


async def _world(http: httpx.AsyncClient, owner: TestAccount) -> dict[str, int]:
    """A service, table, attribute, project and profile of `owner`."""

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await http.post(path, json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    service = await post(f"{V1}/dcp_services", {"name": "owned"})
    table = await post(
        f"{V1}/dcp_services/{service['id']}/dcp_datasources",
        {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
    )
    attribute = await post(
        f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", {"name": "ltv", "datatype": "long"}
    )
    project = await post(f"{V1}/projects", {"project_name": "web", "dcp_service_id": service["id"]})
    await post(f"/api/customer_profile/{service['id']}/{table['id']}/c1", {"data": {"ltv": 5}})
    optimizely = (await http.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources", headers=owner.headers)).json()[0]
    await post(f"/api/alias/{service['id']}/{optimizely['id']}/oeu1", {"data": {str(table["id"]): "c1"}})
    leaf = {
        "type": "dcp",
        "dcp_datasource_id": table["id"],
        "dcp_attribute_id": attribute["id"],
        "match_type": "exists",
    }
    audience = await post(f"{V1}/projects/{project['id']}/audiences", {"name": "a", "conditions": ["and", leaf]})
    table_export = await post(f"{V1}/dcp_datasources/{table['id']}/exports", {"format": "csv"})
    audience_export = await post(f"{V1}/audiences/{audience['id']}/exports", {"format": "jsonl"})
    return {
        "audience": audience["id"],
        "table_export": table_export["id"],
        "audience_export": audience_export["id"],
        "service": service["id"],
        "table": table["id"],
        "attribute": attribute["id"],
        "project": project["id"],
        "optimizely": optimizely["id"],
    }


# (method, path template, body): every endpoint that names an object.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", V1 + "/projects/{project}", None),
    ("PUT", V1 + "/projects/{project}", {"project_name": "stolen"}),
    ("GET", V1 + "/dcp_services/{service}", None),
    ("PUT", V1 + "/dcp_services/{service}", {"name": "stolen"}),
    ("DELETE", V1 + "/dcp_services/{service}", None),
    ("GET", V1 + "/dcp_services/{service}/dcp_datasources", None),
    ("POST", V1 + "/dcp_services/{service}/dcp_datasources", {"name": "x", "keyfield_locator_type": "uid"}),
    ("GET", V1 + "/dcp_datasources/{table}", None),
    ("PUT", V1 + "/dcp_datasources/{table}", {"name": "stolen"}),
    ("PUT", V1 + "/dcp_datasources/{table}", {"archived": True}),
    ("DELETE", V1 + "/dcp_datasources/{table}", None),
    ("GET", V1 + "/dcp_datasources/{table}/dcp_datasource_attributes", None),
    ("POST", V1 + "/dcp_datasources/{table}/dcp_datasource_attributes", {"name": "x", "datatype": "long"}),
    ("GET", V1 + "/dcp_datasource_attributes/{attribute}", None),
    ("PUT", V1 + "/dcp_datasource_attributes/{attribute}", {"description": "stolen"}),
    ("DELETE", V1 + "/dcp_datasource_attributes/{attribute}", None),
    ("GET", "/api/customer_profile/{service}/{table}/c1", None),
    ("POST", "/api/customer_profile/{service}/{table}/c1", {"data": {"ltv": 6}}),
    ("DELETE", "/api/customer_profile/{service}/{table}/c1", None),
    ("GET", "/api/consolidatedCustomerView/{service}/oeu1", None),
    ("GET", "/api/consolidatedCustomerView/{service}/{optimizely}/oeu1", None),
    ("GET", "/api/alias/{service}/{optimizely}/oeu1", None),
    ("POST", "/api/alias/{service}/{optimizely}/oeu1", {"data": {"{table}": "c2"}}),
    ("DELETE", "/api/alias/{service}/{optimizely}/oeu1/{table}", None),
    ("POST", "/api/resolve/{service}/oeu1", {"cookies": {"crm_id": "c3"}}),
    ("GET", V1 + "/dcp_datasources/{table}/uploads", None),
    ("POST", V1 + "/dcp_datasources/{table}/uploads", {"file_name": "stolen.csv"}),
    ("GET", V1 + "/dcp_datasources/{table}/uploads/1", None),
    ("GET", V1 + "/dcp_datasources/{table}/uploads/1/errors", None),
    ("POST", V1 + "/dcp_datasources/{table}/uploads/1/cancel", None),
    ("GET", V1 + "/dcp_datasources/{table}/template", None),
    ("POST", V1 + "/dcp_datasources/{table}/validate", {"customerId": "c1"}),
    ("GET", V1 + "/projects/{project}/audiences", None),
    ("POST", V1 + "/projects/{project}/audiences", {"name": "stolen"}),
    ("GET", V1 + "/audiences/{audience}", None),
    ("PUT", V1 + "/audiences/{audience}", {"name": "stolen"}),
    ("DELETE", V1 + "/audiences/{audience}", None),
    ("GET", V1 + "/audiences/{audience}/members", None),
    ("GET", V1 + "/audiences/{audience}/members/count", None),
    ("POST", V1 + "/audiences/{audience}/exports", {"format": "csv"}),
    ("GET", V1 + "/audiences/{audience}/exports/{audience_export}", None),
    ("POST", V1 + "/dcp_datasources/{table}/exports", {"format": "csv"}),
    ("GET", V1 + "/dcp_datasources/{table}/exports/{table_export}", None),
    ("GET", V1 + "/exports/{table_export}", None),
    ("GET", V1 + "/exports/{audience_export}", None),
    ("POST", "/api/audiences/evaluate/{service}/oeu1", {}),
    ("POST", V1 + "/projects/{project}/audiences/count", {"conditions": []}),
    ("POST", "/api/audiences/evaluate/{service}/oeu1", {"project_id": "{project}", "conditions": []}),
    ("GET", V1 + "/dcp_services/{service}/exports", None),
    ("GET", V1 + "/dcp_datasources/{table}/exports", None),
    ("GET", V1 + "/audiences/{audience}/exports", None),
]


def _fill(template: str, ids: dict[str, int]) -> str:
    return template.format(**ids)


def _fill_body(body: dict[str, Any] | None, ids: dict[str, int]) -> dict[str, Any] | None:
    if body is None:
        return None
    filled: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, dict):
            filled[_fill(key, ids)] = _fill_body(value, ids)
        elif isinstance(value, str) and value.startswith("{") and value.endswith("}"):
            filled[_fill(key, ids)] = ids[value[1:-1]]  # an id field of the body, e.g. "{project}"
        else:
            filled[_fill(key, ids)] = value
    return filled


async def _snapshot(http: httpx.AsyncClient, owner: TestAccount, ids: dict[str, int]) -> list[Any]:
    paths = [
        f"{V1}/projects/{ids['project']}",
        f"{V1}/dcp_services/{ids['service']}",
        f"{V1}/dcp_services/{ids['service']}/dcp_datasources",
        f"/api/customer_profile/{ids['service']}/{ids['table']}/c1",
        f"/api/alias/{ids['service']}/{ids['optimizely']}/oeu1",
        f"{V1}/audiences/{ids['audience']}",
    ]
    return [(await http.get(path, headers=owner.headers)).json() for path in paths]


@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
async def test_another_accounts_objects_answer_404_and_stay_unchanged(
    http: httpx.AsyncClient, make_account: MakeAccount, method: str, template: str, body: dict[str, Any] | None
) -> None:
    owner = await make_account()
    intruder = await make_account()
    ids = await _world(http, owner)
    # The intruder has a world of its own, so its ids are real too, just not these.
    await _world(http, intruder)
    before = await _snapshot(http, owner, ids)

    response = await http.request(method, _fill(template, ids), json=_fill_body(body, ids), headers=intruder.headers)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "NOT_FOUND"

    absent = {key: value + 10_000 for key, value in ids.items()}
    unknown = await http.request(
        method, _fill(template, absent), json=_fill_body(body, absent), headers=intruder.headers
    )
    assert unknown.status_code == 404
    assert set(unknown.json()) == set(response.json())

    assert await _snapshot(http, owner, ids) == before


async def test_lists_never_show_another_accounts_objects(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    owner = await make_account()
    other = await make_account()
    ids = await _world(http, owner)
    assert (await http.get(f"{V1}/dcp_services", headers=other.headers)).json() == []
    assert (await http.get(f"{V1}/projects", headers=other.headers)).json() == []
    own = (await http.get(f"{V1}/dcp_services", headers=owner.headers)).json()
    assert [s["id"] for s in own] == [ids["service"]]


async def test_a_project_cannot_link_to_another_accounts_service(
    http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    owner = await make_account()
    other = await make_account()
    ids = await _world(http, owner)
    response = await http.post(
        f"{V1}/projects", json={"project_name": "p", "dcp_service_id": ids["service"]}, headers=other.headers
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "dcp_service_id"
    assert "does not exist" in response.json()["errors"][0]["message"]


async def test_unlinking_another_accounts_table_from_an_own_visitor_answers_404(
    http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    owner = await make_account()
    intruder = await make_account()
    ids = await _world(http, owner)
    own = await _world(http, intruder)
    before = await _snapshot(http, owner, ids)
    base = f"/api/alias/{own['service']}/{own['optimizely']}/oeu1"

    # The intruder's own service and visitor, with the owner's table (or one that never existed) at the end.
    for table in (ids["table"], ids["table"] + 10_000):
        response = await http.delete(f"{base}/{table}", headers=intruder.headers)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "NOT_FOUND"
        assert str(table) in response.json()["message"]

    assert await _snapshot(http, owner, ids) == before
    # Its own table unlinks as before, and unlinking again is still fine.
    for _ in range(2):
        assert (await http.delete(f"{base}/{own['table']}", headers=intruder.headers)).status_code == 204
    assert (await http.get(base, headers=intruder.headers)).json()["data"] == {}


async def test_a_large_file_checked_against_another_accounts_table_answers_404_every_time(
    http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    # The service refuses the call before the gateway has streamed the file: the refusal must still be what arrives.
    owner = await make_account()
    intruder = await make_account()
    ids = await _world(http, owner)
    file = b"crm_id,ltv\n" + b"c1,5\n" * 1_000_000
    for table in (ids["table"], ids["table"] + 10_000):
        for attempt in range(20):
            response = await http.post(f"{V1}/dcp_datasources/{table}/validate", content=file, headers=intruder.headers)
            assert response.status_code == 404, (attempt, response.text)
            assert response.json()["code"] == "NOT_FOUND"
