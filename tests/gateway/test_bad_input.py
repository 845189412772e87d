"""Bad input through the real gateway: every refusal is a v1 JSON error that names the fault and changes nothing."""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import MakeAccount
from tests.conftest import TestAccount as Account

V1 = "/experiment/v1"
MAX_BODY = 1024 * 1024


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """A v1 error: JSON {status, code, message, errors?}; `errors` names `field` when given."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert {"status", "code", "message"} <= set(body) <= {"status", "code", "message", "errors"}, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    if "errors" in body:
        assert isinstance(body["errors"], list)
        assert body["errors"]
        for error in body["errors"]:
            assert set(error) == {"field", "message"}, error
            assert error["message"].strip()
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


@dataclass
class World:
    """One account with one of everything, and one with nothing yet."""

    owner: Account
    fresh: Account
    ids: dict[str, int]

    def path(self, template: str) -> str:
        return V1 + template.format(**self.ids)

    def account_for(self, template: str) -> Account:
        # POST /dcp_services must be able to succeed, so it goes to the account without a service.
        return self.fresh if template == "/dcp_services" else self.owner


@pytest.fixture
async def world(http: httpx.AsyncClient, make_account: MakeAccount) -> World:
    owner, fresh = await make_account(), await make_account()
    headers = owner.headers
    service = (await http.post(V1 + "/dcp_services", json={"name": "Service"}, headers=headers)).json()
    tables = (await http.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources", headers=headers)).json()
    table = (
        await http.post(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            json={"name": "CRM", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            headers=headers,
        )
    ).json()
    attribute = (
        await http.post(
            f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
            json={"name": "LTV", "datatype": "long", "description": "Life-time value"},
            headers=headers,
        )
    ).json()
    project = (
        await http.post(
            V1 + "/projects", json={"project_name": "Web", "dcp_service_id": service["id"]}, headers=headers
        )
    ).json()
    ids = {
        "service": service["id"],
        "optimizely": tables[0]["id"],
        "table": table["id"],
        "attribute": attribute["id"],
        "project": project["id"],
        "missing": 987654321,
    }
    assert all(isinstance(v, int) for v in ids.values()), ids
    return World(owner=owner, fresh=fresh, ids=ids)


async def snapshot(http: httpx.AsyncClient, world: World) -> dict[str, Any]:
    """Everything both accounts can see; a refused request must leave it as it was."""
    reads = {
        "projects": (world.owner, "/projects"),
        "services": (world.owner, "/dcp_services"),
        "tables": (world.owner, "/dcp_services/{service}/dcp_datasources"),
        "attributes": (world.owner, "/dcp_datasources/{table}/dcp_datasource_attributes"),
        "optimizely_attributes": (world.owner, "/dcp_datasources/{optimizely}/dcp_datasource_attributes"),
        "fresh_projects": (world.fresh, "/projects"),
        "fresh_services": (world.fresh, "/dcp_services"),
    }
    state: dict[str, Any] = {}
    for key, (account, template) in reads.items():
        response = await http.get(world.path(template), headers=account.headers)
        assert response.status_code == 200, response.text
        state[key] = response.json()
    return state


@pytest.fixture
async def unchanged(http: httpx.AsyncClient, world: World) -> AsyncIterator[None]:
    """Asserts, after the test, that the world looks exactly as before it."""
    before = await snapshot(http, world)
    yield
    assert await snapshot(http, world) == before


# Every endpoint that reads a body, with a body it would accept.
WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/projects", {"project_name": "App"}),
    ("PUT", "/projects/{project}", {"project_name": "Website"}),
    ("POST", "/dcp_services", {"name": "Another"}),
    ("PUT", "/dcp_services/{service}", {"name": "Renamed"}),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {
            "name": "ERP",
            "keyfield_locator_type": "js_variable",
            "keyfield_locator_name": "erp_id",
            "import_mode": "all_or_nothing",
        },
    ),
    ("PUT", "/dcp_datasources/{table}", {"name": "Salesforce"}),
    ("POST", "/dcp_datasources/{table}/dcp_datasource_attributes", {"name": "Churn", "datatype": "double"}),
    ("PUT", "/dcp_datasource_attributes/{attribute}", {"description": "Predicted LTV"}),
]
WRITE_IDS = [f"{method} {template}" for method, template, _ in WRITES]
ENTITY_UPDATES = [w for w in WRITES if w[0] == "PUT"]
ENTITY_UPDATE_IDS = [f"{method} {template}" for method, template, _ in ENTITY_UPDATES]
CREATES = [w for w in WRITES if w[0] == "POST"]
CREATE_IDS = [f"{method} {template}" for method, template, _ in CREATES]


async def send(
    http: httpx.AsyncClient, world: World, method: str, template: str, *, json: Any = None, content: Any = None
) -> httpx.Response:
    headers = dict(world.account_for(template).headers)
    if content is not None:
        headers["content-type"] = "application/json"
        return await http.request(method, world.path(template), content=content, headers=headers)
    return await http.request(method, world.path(template), json=json, headers=headers)


@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_valid_bodies_are_accepted(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    """The reference bodies the other tests spoil are themselves fine."""
    response = await send(http, world, method, template, json=valid)
    assert response.status_code == (201 if method == "POST" else 202), response.text
    for key, value in valid.items():
        assert response.json()[key] == value


MALFORMED = [
    b"{",
    b'{"name": ',
    b"not json",
    b"{'name': 'x'}",
    b'{"name": "x",}',
    b'{"name": "x"} trailing',
    b'{"name": NaN}',
    b'{"name": Infinity}',
    b"NaN",
    b"",
    b"   \n",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_malformed_json_is_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    for raw in MALFORMED:
        assert_error(await send(http, world, method, template, content=raw), 400, "MALFORMED_REQUEST")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_json_that_is_not_an_object_is_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    for value in ([valid], [], "name", 5, 1.5, True, None):
        raw = jsonlib.dumps(value).encode()
        body = assert_error(await send(http, world, method, template, content=raw), 400, "MALFORMED_REQUEST")
        assert "object" in body["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_bodies_that_are_not_utf8_are_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    key = next(iter(valid))
    start = b'{"' + key.encode() + b'": '
    for raw in (
        start + '"caf\xe9"}'.encode("latin-1"),
        start + b'"\xff\xfe"}',
        (start + b'"x"}').decode().encode("utf-16"),
        start + b'"\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        start + b'"\\ud800"}',  # nor is an escaped lone one Unicode
        b'{"\\udfff": 1}',
    ):
        assert_error(await send(http, world, method, template, content=raw), 400, "MALFORMED_REQUEST")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_bodies_over_1_mib_are_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any], framing: str
) -> None:
    raw = httpx.Request("POST", "/", json=valid).content
    oversized = raw + b" " * (MAX_BODY + 1 - len(raw))
    assert len(oversized) == MAX_BODY + 1

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 64 * 1024):
            yield oversized[start : start + 64 * 1024]

    response = await send(http, world, method, template, content=oversized if framing == "content-length" else chunks())
    body = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert str(MAX_BODY) in body["message"]


async def test_a_body_of_exactly_1_mib_is_accepted(http: httpx.AsyncClient, world: World) -> None:
    raw = b'{"name": "Renamed"}'
    response = await send(http, world, "PUT", "/dcp_services/{service}", content=raw + b" " * (MAX_BODY - len(raw)))
    assert response.status_code == 202, response.text
    assert response.json()["name"] == "Renamed"


# Wrong JSON types: (endpoint, body, field named in the error)
WRONG_TYPES: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/projects", {"project_name": 5}, "project_name"),
    ("POST", "/projects", {"project_name": None}, "project_name"),
    ("POST", "/projects", {"project_name": ["Web"]}, "project_name"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": True}, "dcp_service_id"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": "1"}, "dcp_service_id"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": 1.5}, "dcp_service_id"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": -1}, "dcp_service_id"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": 2**63}, "dcp_service_id"),
    ("POST", "/projects", {"project_name": "p", "dcp_service_id": {"id": 1}}, "dcp_service_id"),
    ("PUT", "/projects/{project}", {"project_name": {}}, "project_name"),
    ("PUT", "/projects/{project}", {"dcp_service_id": False}, "dcp_service_id"),
    ("PUT", "/projects/{project}", {"dcp_service_id": "{service}"}, "dcp_service_id"),
    ("POST", "/dcp_services", {"name": 5}, "name"),
    ("POST", "/dcp_services", {"name": None}, "name"),
    ("POST", "/dcp_services", {"name": True}, "name"),
    ("PUT", "/dcp_services/{service}", {"name": ["Renamed"]}, "name"),
    ("PUT", "/dcp_services/{service}", {"name": None}, "name"),
    ("POST", "/dcp_services/{service}/dcp_datasources", {"name": 5, "keyfield_locator_type": "uid"}, "name"),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": 1},
        "keyfield_locator_type",
    ),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": "cookie", "keyfield_locator_name": 7},
        "keyfield_locator_name",
    ),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": "uid", "description": False},
        "description",
    ),
    ("PUT", "/dcp_datasources/{table}", {"description": ["x"]}, "description"),
    ("PUT", "/dcp_datasources/{table}", {"keyfield_locator_type": None}, "keyfield_locator_type"),
    ("PUT", "/dcp_datasources/{table}", {"name": None}, "name"),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": "uid", "import_mode": 2},
        "import_mode",
    ),
    (
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": "uid", "import_mode": None},
        "import_mode",
    ),
    ("PUT", "/dcp_datasources/{table}", {"import_mode": True}, "import_mode"),
    ("PUT", "/dcp_datasources/{table}", {"import_mode": None}, "import_mode"),
    ("PUT", "/dcp_datasources/{optimizely}", {"import_mode": ["partial"]}, "import_mode"),
    ("POST", "/dcp_datasources/{table}/dcp_datasource_attributes", {"name": 5, "datatype": "long"}, "name"),
    ("POST", "/dcp_datasources/{table}/dcp_datasource_attributes", {"name": "a", "datatype": 1}, "datatype"),
    (
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        {"name": "a", "datatype": "datetime", "format": 1},
        "format",
    ),
    (
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        {"name": "a", "datatype": "long", "is_value_public": "yes"},
        "is_value_public",
    ),
    (
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        {"name": "a", "datatype": "long", "is_value_public": 1},
        "is_value_public",
    ),
    (
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        {"name": "a", "datatype": "long", "is_value_public": None},
        "is_value_public",
    ),
    ("PUT", "/dcp_datasource_attributes/{attribute}", {"is_value_public": "yes"}, "is_value_public"),
    ("PUT", "/dcp_datasource_attributes/{attribute}", {"description": 5}, "description"),
    ("PUT", "/dcp_datasource_attributes/{attribute}", {"archived": "false"}, "archived"),
    ("PUT", "/dcp_datasource_attributes/{attribute}", {"archived": None}, "archived"),
    ("PUT", "/dcp_datasources/{table}", {"archived": "false"}, "archived"),
    ("PUT", "/dcp_datasources/{table}", {"archived": None}, "archived"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "template", "body", "field"),
    WRONG_TYPES,
    ids=[f"{m} {t} {f}={b[f]!r}" for m, t, b, f in WRONG_TYPES],
)
async def test_wrong_json_types_are_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, body: dict[str, Any], field: str
) -> None:
    resolved = {k: str(world.ids["service"]) if v == "{service}" else v for k, v in body.items()}
    response = await send(http, world, method, template, json=resolved)
    error = assert_error(response, 400, "INVALID_FIELD", field)
    assert field in error["message"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), WRITES, ids=WRITE_IDS)
async def test_unknown_fields_are_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    for unknown in ("bogus", "Name", "version", "projectName", ""):
        response = await send(http, world, method, template, json={**valid, unknown: 1})
        assert_error(response, 400, "INVALID_FIELD", unknown)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), CREATES, ids=CREATE_IDS)
async def test_read_only_fields_are_refused_on_create(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    for field, value in (("id", 12345), ("created", "2015-08-18T21:38:55.927670Z"), ("last_modified", None)):
        response = await send(http, world, method, template, json={**valid, field: value})
        assert_error(response, 400, "READ_ONLY_FIELD", field)


async def test_the_parent_id_from_the_path_may_be_repeated_on_create(http: httpx.AsyncClient, world: World) -> None:
    table = await send(
        http,
        world,
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        json={"name": "ERP", "keyfield_locator_type": "uid", "dcp_service_id": world.ids["service"]},
    )
    assert table.status_code == 201, table.text
    attribute = await send(
        http,
        world,
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        json={"name": "Churn", "datatype": "double", "dcp_datasource_id": world.ids["table"]},
    )
    assert attribute.status_code == 201, attribute.text


@pytest.mark.usefixtures("unchanged")
async def test_another_parent_id_is_refused_on_create(http: httpx.AsyncClient, world: World) -> None:
    table = await send(
        http,
        world,
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        json={"name": "ERP", "keyfield_locator_type": "uid", "dcp_service_id": world.ids["service"] + 1},
    )
    assert_error(table, 400, "READ_ONLY_FIELD", "dcp_service_id")
    attribute = await send(
        http,
        world,
        "POST",
        "/dcp_datasources/{table}/dcp_datasource_attributes",
        json={"name": "Churn", "datatype": "double", "dcp_datasource_id": world.ids["optimizely"]},
    )
    assert_error(attribute, 400, "READ_ONLY_FIELD", "dcp_datasource_id")


@pytest.mark.parametrize(("method", "template", "valid"), ENTITY_UPDATES, ids=ENTITY_UPDATE_IDS)
async def test_read_only_fields_sent_back_unchanged_are_ignored(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    # Only some read-only fields, then the whole object as a read-modify-write client sends it.
    for whole in (False, True):
        current = (await http.get(world.path(template), headers=world.owner.headers)).json()
        body = {**current, **valid} if whole else {"id": current["id"], "created": current["created"], **valid}
        response = await send(http, world, method, template, json=body)
        assert response.status_code == 202, response.text
        for key, value in valid.items():
            assert response.json()[key] == value
        assert response.json()["id"] == current["id"]
        assert response.json()["created"] == current["created"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "valid"), ENTITY_UPDATES, ids=ENTITY_UPDATE_IDS)
async def test_read_only_fields_cannot_be_changed(
    http: httpx.AsyncClient, world: World, method: str, template: str, valid: dict[str, Any]
) -> None:
    current = (await http.get(world.path(template), headers=world.owner.headers)).json()
    changes: dict[str, Any] = {
        "id": current["id"] + 1,
        "created": "2015-08-18T21:38:55.927670Z",
        "last_modified": "2015-08-18T21:38:55.927670Z",
    }
    for field, value in changes.items():
        response = await send(http, world, method, template, json={**valid, field: value})
        assert_error(response, 400, "READ_ONLY_FIELD", field)
    # Also when the rest of the object is sent back as read.
    response = await send(http, world, method, template, json={**current, **valid, "id": str(current["id"])})
    assert_error(response, 400, "READ_ONLY_FIELD", "id")


# Per-resource read-only fields, changed: (endpoint, field, new value)
READ_ONLY_CHANGES: list[tuple[str, str, Any]] = [
    ("/projects/{project}", "account_id", 999_999),
    ("/dcp_services/{service}", "archived", True),
    ("/dcp_services/{service}", "s3_path", "dcp/999"),
    ("/dcp_services/{service}", "aws_access_key", "AKIAFAKE"),
    ("/dcp_datasources/{table}", "is_optimizely", True),
    ("/dcp_datasources/{table}", "dcp_service_id", 999_999),
    ("/dcp_datasources/{table}", "attributes", []),
    ("/dcp_datasources/{table}", "s3_path", "dcp/999/999"),
    ("/dcp_datasource_attributes/{attribute}", "name", "ltv"),
    ("/dcp_datasource_attributes/{attribute}", "datatype", "string"),
    ("/dcp_datasource_attributes/{attribute}", "format", "epoch"),
    ("/dcp_datasource_attributes/{attribute}", "dcp_datasource_id", 999_999),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("template", "field", "value"), READ_ONLY_CHANGES, ids=[f"{t} {f}" for t, f, _ in READ_ONLY_CHANGES]
)
async def test_resource_specific_read_only_fields_cannot_be_changed(
    http: httpx.AsyncClient, world: World, template: str, field: str, value: Any
) -> None:
    current = (await http.get(world.path(template), headers=world.owner.headers)).json()
    assert current[field] != value
    assert_error(await send(http, world, "PUT", template, json={field: value}), 400, "READ_ONLY_FIELD", field)


# Locators

BAD_LOCATOR_NAMES = ["1abc", "has-dash", "has space", "a.b", "crm_id\n", "\ncrm_id", "é", "x" * 256, "a\x00b", "$a"]


@pytest.mark.usefixtures("unchanged")
async def test_invalid_locator_names_are_refused_on_create(http: httpx.AsyncClient, world: World) -> None:
    template = "/dcp_services/{service}/dcp_datasources"
    for locator_type in ("cookie", "query parameter", "js_variable"):
        for name in [*BAD_LOCATOR_NAMES, "", None]:
            body = {"name": "ERP", "keyfield_locator_type": locator_type, "keyfield_locator_name": name}
            response = await send(http, world, "POST", template, json=body)
            assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_name")
        response = await send(
            http, world, "POST", template, json={"name": "ERP", "keyfield_locator_type": locator_type}
        )
        assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_name")
    response = await send(
        http,
        world,
        "POST",
        template,
        json={"name": "ERP", "keyfield_locator_type": "uid", "keyfield_locator_name": "x"},
    )
    assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_name")


@pytest.mark.usefixtures("unchanged")
async def test_invalid_locator_names_are_refused_on_update(http: httpx.AsyncClient, world: World) -> None:
    for name in [*BAD_LOCATOR_NAMES, "", None]:
        for body in (
            {"keyfield_locator_name": name},
            {"keyfield_locator_type": "query parameter", "keyfield_locator_name": name},
        ):
            response = await send(http, world, "PUT", "/dcp_datasources/{table}", json=body)
            assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_name")


@pytest.mark.usefixtures("unchanged")
async def test_unknown_locator_types_are_refused(http: httpx.AsyncClient, world: World) -> None:
    for locator_type in ("uuid", "Cookie", "query_parameter", "header", ""):
        response = await send(
            http,
            world,
            "POST",
            "/dcp_services/{service}/dcp_datasources",
            json={"name": "ERP", "keyfield_locator_type": locator_type, "keyfield_locator_name": "erp_id"},
        )
        assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_type")
        response = await send(
            http, world, "PUT", "/dcp_datasources/{table}", json={"keyfield_locator_type": locator_type}
        )
        assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_type")
    response = await send(
        http,
        world,
        "POST",
        "/dcp_services/{service}/dcp_datasources",
        json={"name": "ERP", "keyfield_locator_name": "x"},
    )
    assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_type")


# Import modes

TABLE_WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/dcp_services/{service}/dcp_datasources", {"name": "ERP", "keyfield_locator_type": "uid"}),
    ("PUT", "/dcp_datasources/{table}", {"name": "Salesforce"}),
    ("PUT", "/dcp_datasources/{optimizely}", {}),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "rest"), TABLE_WRITES, ids=[f"{m} {t}" for m, t, _ in TABLE_WRITES])
async def test_unknown_import_modes_are_refused(
    http: httpx.AsyncClient, world: World, method: str, template: str, rest: dict[str, Any]
) -> None:
    for mode in ("strict", "Partial", "ALL_OR_NOTHING", "all-or-nothing", "all or nothing", " partial", ""):
        response = await send(http, world, method, template, json={**rest, "import_mode": mode})
        body = assert_error(response, 400, "INVALID_FIELD", "import_mode")
        assert body["message"].startswith("import_mode"), body
        assert "'partial', 'all_or_nothing'" in body["message"], body
        assert repr(mode) in body["message"], body


# Attributes

ATTRIBUTES = "/dcp_datasources/{table}/dcp_datasource_attributes"


@pytest.mark.usefixtures("unchanged")
async def test_datetime_without_a_format_is_refused(http: httpx.AsyncClient, world: World) -> None:
    for body in ({"name": "Seen", "datatype": "datetime"}, {"name": "Seen", "datatype": "datetime", "format": None}):
        response = await send(http, world, "POST", ATTRIBUTES, json=body)
        body_json = assert_error(response, 400, "INVALID_FIELD", "format")
        assert "datetime" in body_json["message"]


@pytest.mark.usefixtures("unchanged")
async def test_a_format_on_another_datatype_is_refused(http: httpx.AsyncClient, world: World) -> None:
    for datatype in ("string", "bool", "long", "double"):
        for datetime_format in ("yyyy-mm-dd", "yyyy-mm-ddThh:mm:ssZ", "epoch"):
            body = {"name": "x", "datatype": datatype, "format": datetime_format}
            assert_error(await send(http, world, "POST", ATTRIBUTES, json=body), 400, "INVALID_FIELD", "format")


@pytest.mark.usefixtures("unchanged")
async def test_unknown_datatypes_and_formats_are_refused(http: httpx.AsyncClient, world: World) -> None:
    for datatype in ("int", "String", "date", "boolean", ""):
        body = {"name": "x", "datatype": datatype}
        assert_error(await send(http, world, "POST", ATTRIBUTES, json=body), 400, "INVALID_FIELD", "datatype")
    assert_error(await send(http, world, "POST", ATTRIBUTES, json={"name": "x"}), 400, "INVALID_FIELD", "datatype")
    for datetime_format in ("dd/mm/yyyy", "EPOCH", "yyyy-mm-ddThh:mm:ss", "iso8601", ""):
        body = {"name": "x", "datatype": "datetime", "format": datetime_format}
        assert_error(await send(http, world, "POST", ATTRIBUTES, json=body), 400, "INVALID_FIELD", "format")


@pytest.mark.usefixtures("unchanged")
async def test_duplicate_active_attribute_names_are_refused(http: httpx.AsyncClient, world: World) -> None:
    for datatype in ("long", "string"):
        response = await send(http, world, "POST", ATTRIBUTES, json={"name": "LTV", "datatype": datatype})
        body = assert_error(response, 409, "ALREADY_EXISTS", "name")
        assert "LTV" in body["message"]


async def test_unarchiving_with_a_bad_edit_changes_nothing(http: httpx.AsyncClient, world: World) -> None:
    headers = world.owner.headers
    path = world.path("/dcp_datasource_attributes/{attribute}")
    assert (await http.delete(path, headers=headers)).status_code == 204
    before = (await http.get(path, headers=headers)).json()
    assert before["archived"] is True
    for description in ("x" * 4097, 5, "nul\x00"):
        response = await http.put(path, json={"archived": False, "description": description}, headers=headers)
        assert_error(response, 400, "INVALID_FIELD", "description")
        assert (await http.get(path, headers=headers)).json() == before


async def test_unarchiving_a_table_with_a_bad_edit_changes_nothing(http: httpx.AsyncClient, world: World) -> None:
    headers = world.owner.headers
    path = world.path("/dcp_datasources/{table}")
    assert (await http.delete(path, headers=headers)).status_code == 204
    before = (await http.get(path, headers=headers)).json()
    assert before["archived"] is True
    edits: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"),
        ({"keyfield_locator_name": "has space"}, "keyfield_locator_name"),
        ({"keyfield_locator_type": "pigeon"}, "keyfield_locator_type"),
        ({"import_mode": "some"}, "import_mode"),
    ]
    for edit, field in edits:
        response = await http.put(path, json={"archived": False, **edit}, headers=headers)
        assert_error(response, 400, "INVALID_FIELD", field)
        assert (await http.get(path, headers=headers)).json() == before


# Names

NAMED: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/projects", {}, "project_name"),
    ("PUT", "/projects/{project}", {}, "project_name"),
    ("POST", "/dcp_services", {}, "name"),
    ("PUT", "/dcp_services/{service}", {}, "name"),
    ("POST", "/dcp_services/{service}/dcp_datasources", {"keyfield_locator_type": "uid"}, "name"),
    ("PUT", "/dcp_datasources/{table}", {}, "name"),
    ("POST", ATTRIBUTES, {"datatype": "string"}, "name"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template", "rest", "field"), NAMED, ids=[f"{m} {t}" for m, t, _, _ in NAMED])
async def test_names_must_be_1_to_255_characters(
    http: httpx.AsyncClient, world: World, method: str, template: str, rest: dict[str, Any], field: str
) -> None:
    for name in ("x" * 256, "é" * 256, "", "   ", "tab\there", "line\nbreak", "nul\x00"):
        response = await send(http, world, method, template, json={**rest, field: name})
        body = assert_error(response, 400, "INVALID_FIELD", field)
        assert body["message"].startswith(field), body
    if method == "POST":
        assert_error(await send(http, world, method, template, json=rest), 400, "INVALID_FIELD", field)


@pytest.mark.usefixtures("unchanged")
async def test_descriptions_over_the_limit_are_refused(http: httpx.AsyncClient, world: World) -> None:
    long = "d" * 4097
    cases = [
        ("POST", "/dcp_services/{service}/dcp_datasources", {"name": "t", "keyfield_locator_type": "uid"}),
        ("PUT", "/dcp_datasources/{table}", {}),
        ("POST", ATTRIBUTES, {"name": "Churn", "datatype": "double"}),
        ("PUT", "/dcp_datasource_attributes/{attribute}", {}),
    ]
    for method, template, rest in cases:
        response = await send(http, world, method, template, json={**rest, "description": long})
        assert_error(response, 400, "INVALID_FIELD", "description")


# Ids and routes

ID_ENDPOINTS: list[tuple[str, str]] = [
    ("GET", "/projects/{id}"),
    ("PUT", "/projects/{id}"),
    ("GET", "/dcp_services/{id}"),
    ("PUT", "/dcp_services/{id}"),
    ("DELETE", "/dcp_services/{id}"),
    ("GET", "/dcp_services/{id}/dcp_datasources"),
    ("POST", "/dcp_services/{id}/dcp_datasources"),
    ("GET", "/dcp_datasources/{id}"),
    ("PUT", "/dcp_datasources/{id}"),
    ("DELETE", "/dcp_datasources/{id}"),
    ("GET", "/dcp_datasources/{id}/dcp_datasource_attributes"),
    ("POST", "/dcp_datasources/{id}/dcp_datasource_attributes"),
    ("GET", "/dcp_datasource_attributes/{id}"),
    ("PUT", "/dcp_datasource_attributes/{id}"),
    ("DELETE", "/dcp_datasource_attributes/{id}"),
]
VALID_BODY: dict[str, dict[str, Any]] = {
    "/projects/{id}": {"project_name": "x"},
    "/dcp_services/{id}": {"name": "x"},
    "/dcp_services/{id}/dcp_datasources": {"name": "x", "keyfield_locator_type": "uid"},
    "/dcp_datasources/{id}": {"name": "x"},
    "/dcp_datasources/{id}/dcp_datasource_attributes": {"name": "x", "datatype": "long"},
    "/dcp_datasource_attributes/{id}": {"description": "x"},
}
# %C2%B2 is a superscript two and %D9%A1 an Arabic-Indic one: digits to str.isdigit(), but not ids.
NON_NUMERIC_IDS = [
    "abc",
    "-1",
    "1.0",
    "0x1",
    "1e3",
    "+1",
    "%201",
    "1%20",
    "%C2%B2",
    "%D9%A1",
    "99999999999999999999",
    "0",
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template"), ID_ENDPOINTS, ids=[f"{m} {t}" for m, t in ID_ENDPOINTS])
async def test_ids_that_do_not_exist_are_404(http: httpx.AsyncClient, world: World, method: str, template: str) -> None:
    body = VALID_BODY[template] if method in ("POST", "PUT") else None
    for raw_id in [str(world.ids["missing"]), *NON_NUMERIC_IDS]:
        url = V1 + template.replace("{id}", raw_id)
        response = await http.request(method, url, json=body, headers=world.owner.headers)
        assert_error(response, 404, "NOT_FOUND")


async def test_other_scripts_digits_do_not_name_an_object(http: httpx.AsyncClient, world: World) -> None:
    # int() reads ARABIC-INDIC digits too; the project must answer only to ASCII ones.
    project = world.ids["project"]
    arabic_indic = "".join(chr(0x660 + int(digit)) for digit in str(project))
    response = await http.get(V1 + f"/projects/{quote(arabic_indic)}", headers=world.owner.headers)
    assert_error(response, 404, "NOT_FOUND")
    assert (await http.get(V1 + f"/projects/{project}", headers=world.owner.headers)).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/experiment/v1/nope",
        "/experiment/v1/projects/1/extra",
        "/experiment/v1/dcp_services/1/dcp_datasources/2",
        "/experiment/v2/projects",
        "/api/v1/projects",
        "/nope",
        "/console/nope",
    ],
)
async def test_unknown_routes_are_404(http: httpx.AsyncClient, world: World, path: str) -> None:
    for headers in (world.owner.headers, {}):
        for method in ("GET", "POST"):
            body = assert_error(await http.request(method, path, headers=headers), 404, "ROUTE_NOT_FOUND")
            assert "errors" not in body


WRONG_METHODS: list[tuple[str, str]] = [
    ("DELETE", "/projects"),
    ("PUT", "/projects"),
    ("DELETE", "/projects/{project}"),
    ("POST", "/projects/{project}"),
    ("DELETE", "/dcp_services"),
    ("PATCH", "/dcp_services/{service}"),
    ("POST", "/dcp_services/{service}"),
    ("DELETE", "/dcp_services/{service}/dcp_datasources"),
    ("POST", "/dcp_datasources/{table}"),
    ("PATCH", "/dcp_datasources/{table}"),
    ("PUT", "/dcp_datasources/{table}/dcp_datasource_attributes"),
    ("POST", "/dcp_datasource_attributes/{attribute}"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("method", "template"), WRONG_METHODS, ids=[f"{m} {t}" for m, t in WRONG_METHODS])
async def test_wrong_methods_are_405(http: httpx.AsyncClient, world: World, method: str, template: str) -> None:
    response = await http.request(method, world.path(template), json={"name": "x"}, headers=world.owner.headers)
    body = assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert method in body["message"]
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert method not in allowed
    assert "GET" in allowed or "POST" in allowed


async def test_head_answers_like_get_without_a_body(http: httpx.AsyncClient, world: World) -> None:
    for template in ("/projects", "/projects/{project}", "/dcp_services/{service}/dcp_datasources"):
        response = await http.head(world.path(template), headers=world.owner.headers)
        assert response.status_code == 200
        assert response.content == b""
    response = await http.head(world.path("/projects/{missing}"), headers=world.owner.headers)
    assert response.status_code == 404
