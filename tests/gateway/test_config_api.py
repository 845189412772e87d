"""The v1 config API through the real gateway: projects, DCP services, tables, attributes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests.conftest import MakeAccount
from tests.conftest import TestAccount as Account

V1 = "/experiment/v1"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

PROJECT_KEYS = {"id", "account_id", "project_name", "dcp_service_id", "created", "last_modified"}
SERVICE_KEYS = {
    "id",
    "account_id",
    "archived",
    "aws_access_key",
    "aws_secret_key",
    "created",
    "last_modified",
    "name",
    "s3_path",
    "pii_guard",
    "alias_blocked_customer_ids",
    "alias_max_users_per_customer_id",
}
TABLE_KEYS = {
    "id",
    "archived",
    "attributes",
    "aws_access_key",
    "aws_secret_key",
    "created",
    "dcp_service_id",
    "description",
    "is_optimizely",
    "keyfield_locator_name",
    "keyfield_locator_type",
    "last_modified",
    "name",
    "s3_path",
    "import_mode",
}
ATTRIBUTE_SUMMARY_KEYS = {"archived", "datatype", "description", "format", "id", "is_value_public", "name"}
ATTRIBUTE_KEYS = ATTRIBUTE_SUMMARY_KEYS | {"created", "dcp_datasource_id", "last_modified"}


@pytest.fixture
async def account(make_account: MakeAccount) -> Account:
    return await make_account()


def is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def assert_timestamps(entity: dict[str, Any]) -> None:
    for key in ("created", "last_modified"):
        assert isinstance(entity[key], str), (key, entity[key])
        assert TIMESTAMP.match(entity[key]), (key, entity[key])
    assert entity["last_modified"] >= entity["created"]


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert {"status", "code", "message"} <= set(body) <= {"status", "code", "message", "errors"}, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert all(set(e) == {"field", "message"} and e["message"] for e in body["errors"]), body
    return body


async def post(http: httpx.AsyncClient, account: Account, path: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(V1 + path, json=body, headers=account.headers)


async def put(http: httpx.AsyncClient, account: Account, path: str, body: dict[str, Any]) -> httpx.Response:
    return await http.put(V1 + path, json=body, headers=account.headers)


async def get(http: httpx.AsyncClient, account: Account, path: str) -> Any:
    response = await http.get(V1 + path, headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def delete(http: httpx.AsyncClient, account: Account, path: str) -> httpx.Response:
    return await http.delete(V1 + path, headers=account.headers)


async def new_service(http: httpx.AsyncClient, account: Account, name: str = "My DCP Service") -> dict[str, Any]:
    response = await post(http, account, "/dcp_services", {"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_table(
    http: httpx.AsyncClient,
    account: Account,
    service_id: int,
    name: str = "CRM",
    locator_type: str = "cookie",
    locator_name: str | None = "crm_id",
    **extra: Any,
) -> dict[str, Any]:
    body = {"name": name, "keyfield_locator_type": locator_type, **extra}
    if locator_name is not None:
        body["keyfield_locator_name"] = locator_name
    response = await post(http, account, f"/dcp_services/{service_id}/dcp_datasources", body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def new_attribute(
    http: httpx.AsyncClient,
    account: Account,
    table_id: int,
    name: str = "LTV",
    datatype: str = "long",
    **extra: Any,
) -> dict[str, Any]:
    response = await post(
        http,
        account,
        f"/dcp_datasources/{table_id}/dcp_datasource_attributes",
        {"name": name, "datatype": datatype, **extra},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# Projects


async def test_project_create_get_list(http: httpx.AsyncClient, account: Account) -> None:
    assert await get(http, account, "/projects") == []
    response = await post(http, account, "/projects", {"project_name": "Web"})
    assert response.status_code == 201, response.text
    project = response.json()
    assert set(project) == PROJECT_KEYS
    assert is_id(project["id"])
    assert project["account_id"] == account.id
    assert project["project_name"] == "Web"
    assert project["dcp_service_id"] is None
    assert_timestamps(project)
    assert await get(http, account, f"/projects/{project['id']}") == project
    second = (await post(http, account, "/projects", {"project_name": "App"})).json()
    assert await get(http, account, "/projects") == [project, second]


async def test_project_created_already_linked(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    response = await post(http, account, "/projects", {"project_name": "Web", "dcp_service_id": service["id"]})
    assert response.status_code == 201, response.text
    assert response.json()["dcp_service_id"] == service["id"]
    assert (await get(http, account, f"/projects/{response.json()['id']}"))["dcp_service_id"] == service["id"]


async def test_project_put_is_a_partial_update(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    project = (await post(http, account, "/projects", {"project_name": "Web"})).json()

    linked = await put(http, account, f"/projects/{project['id']}", {"dcp_service_id": service["id"]})
    assert linked.status_code == 202, linked.text
    assert linked.json()["dcp_service_id"] == service["id"]
    assert linked.json()["project_name"] == "Web"
    assert linked.json()["created"] == project["created"]
    assert linked.json()["last_modified"] > project["last_modified"]

    renamed = await put(http, account, f"/projects/{project['id']}", {"project_name": "Website"})
    assert renamed.status_code == 202, renamed.text
    assert renamed.json()["project_name"] == "Website"
    assert renamed.json()["dcp_service_id"] == service["id"]
    assert renamed.json()["last_modified"] > linked.json()["last_modified"]

    unlinked = await put(http, account, f"/projects/{project['id']}", {"dcp_service_id": None})
    assert unlinked.status_code == 202, unlinked.text
    assert unlinked.json()["dcp_service_id"] is None
    assert unlinked.json()["project_name"] == "Website"
    assert await get(http, account, f"/projects/{project['id']}") == unlinked.json()


async def test_empty_project_put_changes_nothing(http: httpx.AsyncClient, account: Account) -> None:
    project = (await post(http, account, "/projects", {"project_name": "Web"})).json()
    response = await put(http, account, f"/projects/{project['id']}", {})
    assert response.status_code == 202, response.text
    assert response.json() == project
    assert await get(http, account, f"/projects/{project['id']}") == project


@pytest.mark.parametrize("target", ["missing", "archived"])
async def test_project_link_to_unusable_service_is_refused(
    http: httpx.AsyncClient, account: Account, target: str
) -> None:
    service = await new_service(http, account)
    service_id = service["id"]
    if target == "missing":
        service_id += 1000
    else:
        assert (await delete(http, account, f"/dcp_services/{service_id}")).status_code == 204
    project = (await post(http, account, "/projects", {"project_name": "Web"})).json()

    refused = await put(http, account, f"/projects/{project['id']}", {"dcp_service_id": service_id})
    assert_error(refused, 400, "INVALID_FIELD", "dcp_service_id")
    assert await get(http, account, f"/projects/{project['id']}") == project

    refused = await post(http, account, "/projects", {"project_name": "App", "dcp_service_id": service_id})
    assert_error(refused, 400, "INVALID_FIELD", "dcp_service_id")
    assert await get(http, account, "/projects") == [project]


async def test_project_linked_to_a_later_archived_service_can_still_be_renamed(
    http: httpx.AsyncClient, account: Account
) -> None:
    service = await new_service(http, account)
    project = (await post(http, account, "/projects", {"project_name": "Web", "dcp_service_id": service["id"]})).json()
    assert (await delete(http, account, f"/dcp_services/{service['id']}")).status_code == 204
    # A read-modify-write client sends the existing link back unchanged.
    response = await put(http, account, f"/projects/{project['id']}", {**project, "project_name": "Website"})
    assert response.status_code == 202, response.text
    assert response.json()["project_name"] == "Website"
    assert response.json()["dcp_service_id"] == service["id"]


# DCP services


async def test_service_create_get_list(http: httpx.AsyncClient, account: Account) -> None:
    assert await get(http, account, "/dcp_services") == []
    service = await new_service(http, account, "My DCP Service")
    assert set(service) == SERVICE_KEYS
    assert is_id(service["id"])
    assert service["account_id"] == account.id
    assert service["archived"] is False
    assert service["name"] == "My DCP Service"
    assert service["s3_path"] == f"dcp/{service['id']}"
    assert isinstance(service["aws_access_key"], str)
    assert len(service["aws_access_key"]) >= 16
    assert isinstance(service["aws_secret_key"], str)
    assert len(service["aws_secret_key"]) >= 32
    assert service["aws_access_key"] != service["aws_secret_key"]
    assert_timestamps(service)
    assert await get(http, account, f"/dcp_services/{service['id']}") == service
    assert await get(http, account, "/dcp_services") == [service]


async def test_service_create_sets_the_guards_sent_and_defaults_the_rest(
    http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    first = await make_account()
    response = await post(
        http,
        first,
        "/dcp_services",
        {"name": "guarded", "pii_guard": False, "alias_blocked_customer_ids": [], "alias_max_users_per_customer_id": 7},
    )
    assert response.status_code == 201, response.text
    service = response.json()
    assert (
        service["pii_guard"],
        service["alias_blocked_customer_ids"],
        service["alias_max_users_per_customer_id"],
    ) == (
        False,
        [],
        7,
    )
    assert service["created"] == service["last_modified"]
    assert await get(http, first, f"/dcp_services/{service['id']}") == service

    second = await make_account()
    response = await post(http, second, "/dcp_services", {"name": "blocked", "alias_blocked_customer_ids": [" Guest "]})
    assert response.status_code == 201, response.text
    service = response.json()
    assert (
        service["pii_guard"],
        service["alias_blocked_customer_ids"],
        service["alias_max_users_per_customer_id"],
    ) == (
        True,
        ["guest"],
        100,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alias_max_users_per_customer_id", 1_000_001),
        ("alias_max_users_per_customer_id", 0),
        ("alias_blocked_customer_ids", ["x" * 256]),
        ("alias_blocked_customer_ids", ["guest", "nul\x00"]),
        ("alias_blocked_customer_ids", ["tab\there"]),
    ],
)
async def test_a_bad_guard_refuses_the_new_service_naming_its_field(
    http: httpx.AsyncClient, account: Account, field: str, value: Any
) -> None:
    response = await post(http, account, "/dcp_services", {"name": "x", field: value})
    assert_error(response, 400, "INVALID_FIELD", field)
    assert response.json()["message"].startswith(f"{field}:")
    assert await get(http, account, "/dcp_services") == []

    service = await new_service(http, account)
    refused = await put(http, account, f"/dcp_services/{service['id']}", {field: value})
    assert_error(refused, 400, "INVALID_FIELD", field)
    assert await get(http, account, f"/dcp_services/{service['id']}") == service


async def test_service_create_provisions_the_optimizely_table(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    tables = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert isinstance(tables, list)
    assert len(tables) == 1
    optimizely = tables[0]
    assert set(optimizely) == TABLE_KEYS
    assert optimizely["is_optimizely"] is True
    assert optimizely["keyfield_locator_type"] == "uid"
    assert optimizely["keyfield_locator_name"] is None
    assert optimizely["name"] == "Optimizely"
    assert optimizely["archived"] is False
    assert optimizely["attributes"] == []
    assert optimizely["dcp_service_id"] == service["id"]
    assert optimizely["s3_path"] == f"dcp/{service['id']}/{optimizely['id']}"
    assert optimizely["aws_access_key"] == service["aws_access_key"]
    assert optimizely["aws_secret_key"] == service["aws_secret_key"]
    assert_timestamps(optimizely)
    assert await get(http, account, f"/dcp_datasources/{optimizely['id']}") == optimizely


async def test_each_service_has_its_own_key_pair(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    first = await new_service(http, await make_account())
    second = await new_service(http, await make_account())
    assert first["aws_access_key"] != second["aws_access_key"]
    assert first["aws_secret_key"] != second["aws_secret_key"]


async def test_service_rename(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account, "Old")
    response = await put(http, account, f"/dcp_services/{service['id']}", {"name": "New"})
    assert response.status_code == 202, response.text
    renamed = response.json()
    assert renamed["name"] == "New"
    assert renamed["last_modified"] > service["last_modified"]
    assert {k: v for k, v in renamed.items() if k not in ("name", "last_modified")} == {
        k: v for k, v in service.items() if k not in ("name", "last_modified")
    }
    assert await get(http, account, f"/dcp_services/{service['id']}") == renamed


async def test_empty_service_put_changes_nothing(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    response = await put(http, account, f"/dcp_services/{service['id']}", {})
    assert response.status_code == 202, response.text
    assert response.json() == service
    assert await get(http, account, f"/dcp_services/{service['id']}") == service


async def test_second_active_service_is_refused_until_the_first_is_archived(
    http: httpx.AsyncClient, account: Account
) -> None:
    first = await new_service(http, account, "First")
    refused = await post(http, account, "/dcp_services", {"name": "Second"})
    body = assert_error(refused, 400, "SERVICE_LIMIT_REACHED")
    assert "archive" in body["message"].lower()
    assert await get(http, account, "/dcp_services") == [first]

    assert (await delete(http, account, f"/dcp_services/{first['id']}")).status_code == 204
    second = await new_service(http, account, "Second")
    services = await get(http, account, "/dcp_services")
    assert [(s["id"], s["archived"]) for s in services] == [(first["id"], True), (second["id"], False)]
    # The new service gets its own Optimizely table.
    tables = await get(http, account, f"/dcp_services/{second['id']}/dcp_datasources")
    assert [(t["is_optimizely"], t["archived"]) for t in tables] == [(True, False)]


async def test_service_limit_holds_under_concurrent_creates(http: httpx.AsyncClient, account: Account) -> None:
    responses = await asyncio.gather(*(post(http, account, "/dcp_services", {"name": f"s{i}"}) for i in range(5)))
    assert sorted(r.status_code for r in responses) == [201, 400, 400, 400, 400]
    assert len(await get(http, account, "/dcp_services")) == 1


async def test_the_service_limit_is_per_account(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    await new_service(http, await make_account())
    await new_service(http, await make_account())


async def test_service_delete_archives_it_and_its_tables(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    await new_table(http, account, service["id"])
    response = await delete(http, account, f"/dcp_services/{service['id']}")
    assert response.status_code == 204
    assert response.content == b""
    archived = await get(http, account, f"/dcp_services/{service['id']}")
    assert archived["archived"] is True
    assert archived["last_modified"] > service["last_modified"]
    tables = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert len(tables) == 2
    assert all(t["archived"] for t in tables)
    for table in tables:
        assert (await get(http, account, f"/dcp_datasources/{table['id']}"))["archived"] is True
    # Deleting again is harmless.
    assert (await delete(http, account, f"/dcp_services/{service['id']}")).status_code == 204
    assert await get(http, account, f"/dcp_services/{service['id']}") == archived


async def test_archived_service_cannot_be_renamed_or_given_tables(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    assert (await delete(http, account, f"/dcp_services/{service['id']}")).status_code == 204
    before = await get(http, account, f"/dcp_services/{service['id']}")
    assert_error(await put(http, account, f"/dcp_services/{service['id']}", {"name": "X"}), 400, "RESOURCE_ARCHIVED")
    created = await post(
        http,
        account,
        f"/dcp_services/{service['id']}/dcp_datasources",
        {"name": "CRM", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
    )
    assert_error(created, 400, "RESOURCE_ARCHIVED")
    assert await get(http, account, f"/dcp_services/{service['id']}") == before
    assert len(await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")) == 1


# Tables


@pytest.mark.parametrize(
    ("locator_type", "locator_name"),
    [
        ("cookie", "_my_hashedEmailcookie"),
        ("query parameter", "utm_id"),
        ("js_variable", "window$user_id9"),
        ("uid", None),
    ],
)
async def test_table_create_with_each_locator_type(
    http: httpx.AsyncClient, account: Account, locator_type: str, locator_name: str | None
) -> None:
    service = await new_service(http, account)
    table = await new_table(
        http, account, service["id"], "My Data Warehouse", locator_type, locator_name, description="First party"
    )
    assert set(table) == TABLE_KEYS
    assert is_id(table["id"])
    assert table["name"] == "My Data Warehouse"
    assert table["description"] == "First party"
    assert table["keyfield_locator_type"] == locator_type
    assert table["keyfield_locator_name"] == locator_name
    assert table["is_optimizely"] is False
    assert table["archived"] is False
    assert table["attributes"] == []
    assert table["dcp_service_id"] == service["id"]
    assert table["s3_path"] == f"dcp/{service['id']}/{table['id']}"
    assert table["aws_access_key"] == service["aws_access_key"]
    assert table["aws_secret_key"] == service["aws_secret_key"]
    assert_timestamps(table)
    assert await get(http, account, f"/dcp_datasources/{table['id']}") == table


async def test_table_description_defaults_to_null(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    assert table["description"] is None


async def test_valid_locator_names_are_accepted(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    for index, locator_name in enumerate(["a", "_", "A_b$9", "Z" * 255]):
        table = await new_table(http, account, service["id"], f"t{index}", locator_name=locator_name)
        assert table["keyfield_locator_name"] == locator_name


async def test_table_list_puts_the_optimizely_table_first(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    first = await new_table(http, account, service["id"], "A")
    second = await new_table(http, account, service["id"], "B", "uid", None)
    tables = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert isinstance(tables, list)
    assert [t["is_optimizely"] for t in tables] == [True, False, False]
    assert tables[1:] == [first, second]
    for table in tables:
        assert await get(http, account, f"/dcp_datasources/{table['id']}") == table


async def test_table_put_is_a_partial_update(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"], "CRM", description="from the CRM")
    path = f"/dcp_datasources/{table['id']}"

    renamed = await put(http, account, path, {"name": "Salesforce"})
    assert renamed.status_code == 202, renamed.text
    assert renamed.json()["name"] == "Salesforce"
    assert renamed.json()["description"] == "from the CRM"
    assert renamed.json()["keyfield_locator_type"] == "cookie"
    assert renamed.json()["keyfield_locator_name"] == "crm_id"
    assert renamed.json()["created"] == table["created"]
    assert renamed.json()["last_modified"] > table["last_modified"]

    relocated = await put(
        http, account, path, {"keyfield_locator_type": "js_variable", "keyfield_locator_name": "sfdc_id"}
    )
    assert relocated.status_code == 202, relocated.text
    assert relocated.json()["keyfield_locator_type"] == "js_variable"
    assert relocated.json()["keyfield_locator_name"] == "sfdc_id"
    assert relocated.json()["name"] == "Salesforce"

    renamed_locator = await put(http, account, path, {"keyfield_locator_name": "sfdc_uid"})
    assert renamed_locator.status_code == 202, renamed_locator.text
    assert renamed_locator.json()["keyfield_locator_type"] == "js_variable"
    assert renamed_locator.json()["keyfield_locator_name"] == "sfdc_uid"

    cleared = await put(http, account, path, {"description": None})
    assert cleared.status_code == 202, cleared.text
    assert cleared.json()["description"] is None
    assert cleared.json()["name"] == "Salesforce"

    to_uid = await put(http, account, path, {"keyfield_locator_type": "uid"})
    assert to_uid.status_code == 202, to_uid.text
    assert to_uid.json()["keyfield_locator_type"] == "uid"
    assert to_uid.json()["keyfield_locator_name"] is None
    assert await get(http, account, path) == to_uid.json()


async def test_import_mode_defaults_to_partial(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    assert table["import_mode"] == "partial"
    listed = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert [t["import_mode"] for t in listed] == ["partial", "partial"]
    assert (await get(http, account, f"/dcp_datasources/{table['id']}"))["import_mode"] == "partial"


@pytest.mark.parametrize("mode", ["partial", "all_or_nothing"])
async def test_table_create_with_each_import_mode(http: httpx.AsyncClient, account: Account, mode: str) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"], import_mode=mode)
    assert set(table) == TABLE_KEYS
    assert table["import_mode"] == mode
    assert await get(http, account, f"/dcp_datasources/{table['id']}") == table
    listed = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert listed[1] == table


async def test_import_mode_put_changes_only_the_mode(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"], description="from the CRM")
    path = f"/dcp_datasources/{table['id']}"

    strict = await put(http, account, path, {"import_mode": "all_or_nothing"})
    assert strict.status_code == 202, strict.text
    assert strict.json()["import_mode"] == "all_or_nothing"
    assert strict.json()["last_modified"] > table["last_modified"]
    ignored = {"import_mode", "last_modified"}
    assert {k: v for k, v in strict.json().items() if k not in ignored} == {
        k: v for k, v in table.items() if k not in ignored
    }
    assert await get(http, account, path) == strict.json()

    # Another field's change leaves the mode alone.
    renamed = await put(http, account, path, {"name": "Salesforce"})
    assert renamed.status_code == 202, renamed.text
    assert renamed.json()["import_mode"] == "all_or_nothing"

    # A read-modify-write client sends the whole object back.
    lenient = await put(http, account, path, {**renamed.json(), "import_mode": "partial"})
    assert lenient.status_code == 202, lenient.text
    assert lenient.json()["import_mode"] == "partial"
    assert lenient.json()["name"] == "Salesforce"
    assert await get(http, account, path) == lenient.json()


async def test_the_optimizely_table_import_mode_can_change(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    response = await put(http, account, f"/dcp_datasources/{optimizely['id']}", {"import_mode": "all_or_nothing"})
    assert response.status_code == 202, response.text
    assert response.json()["import_mode"] == "all_or_nothing"
    assert response.json()["is_optimizely"] is True
    assert response.json()["keyfield_locator_type"] == "uid"
    assert await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources") == [response.json()]


BAD_IMPORT_MODES: list[Any] = ["", "Partial", "ALL_OR_NOTHING", "all-or-nothing", "strict", None, 1, True, ["partial"]]


async def test_bad_import_modes_are_refused_and_change_nothing(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"], import_mode="all_or_nothing")
    tables_path = f"/dcp_services/{service['id']}/dcp_datasources"
    before = await get(http, account, tables_path)
    for mode in BAD_IMPORT_MODES:
        created = await post(
            http, account, tables_path, {"name": "ERP", "keyfield_locator_type": "uid", "import_mode": mode}
        )
        updated = await put(http, account, f"/dcp_datasources/{table['id']}", {"name": "X", "import_mode": mode})
        for response in (created, updated):
            body = assert_error(response, 400, "INVALID_FIELD", "import_mode")
            assert "import_mode" in body["message"], body
            assert "'partial'" in body["message"], body
            assert "'all_or_nothing'" in body["message"], body
    assert await get(http, account, tables_path) == before


async def test_table_delete_archives_it(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    response = await delete(http, account, f"/dcp_datasources/{table['id']}")
    assert response.status_code == 204
    assert response.content == b""
    archived = await get(http, account, f"/dcp_datasources/{table['id']}")
    assert archived["archived"] is True
    assert archived["last_modified"] > table["last_modified"]
    listed = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert [t["archived"] for t in listed] == [False, True]
    # The service and its Optimizely table are untouched.
    assert (await get(http, account, f"/dcp_services/{service['id']}"))["archived"] is False


async def test_table_put_unarchives_like_an_attribute(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "LTV", "long")
    path = f"/dcp_datasources/{table['id']}"
    assert (await delete(http, account, path)).status_code == 204
    archived = await get(http, account, path)

    restored = await put(http, account, path, {"archived": False, "description": "back again"})
    assert restored.status_code == 202, restored.text
    assert restored.json()["archived"] is False
    assert restored.json()["description"] == "back again"
    assert restored.json()["attributes"] == archived["attributes"]
    assert restored.json()["last_modified"] > archived["last_modified"]
    assert await get(http, account, path) == restored.json()
    # Active again: it takes values and attributes as before.
    await asyncio.sleep(1.1)  # the profiles service's copy of the registry lives a second
    written = await http.post(
        f"/api/customer_profile/{service['id']}/{table['id']}/c1", json={"data": {"LTV": 3}}, headers=account.headers
    )
    assert written.status_code == 201, written.text
    assert (await new_attribute(http, account, table["id"], "score", "double"))["archived"] is False
    # Unarchiving an active table is harmless, and PUT may archive too, after its other changes.
    assert (await put(http, account, path, {"archived": False})).status_code == 202
    again = await put(http, account, path, {"archived": True, "name": "retired"})
    assert again.status_code == 202, again.text
    assert (again.json()["archived"], again.json()["name"]) == (True, "retired")
    assert (await put(http, account, path, {"archived": True})).json() == again.json()
    assert (await get(http, account, f"/dcp_datasource_attributes/{attribute['id']}"))["archived"] is False


async def test_lists_show_archived_tables_and_attributes_for_unarchiving(
    http: httpx.AsyncClient, account: Account
) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    kept = await new_attribute(http, account, table["id"], "kept", "long")
    retired = await new_attribute(http, account, table["id"], "retired", "long")
    assert (await delete(http, account, f"/dcp_datasource_attributes/{retired['id']}")).status_code == 204
    assert (await delete(http, account, f"/dcp_datasources/{table['id']}")).status_code == 204

    [optimizely, listed] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert (optimizely["archived"], listed["id"], listed["archived"]) == (False, table["id"], True)
    assert [(a["id"], a["archived"]) for a in listed["attributes"]] == [(kept["id"], False), (retired["id"], True)]
    attributes = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")
    assert [(a["id"], a["archived"]) for a in attributes] == [(kept["id"], False), (retired["id"], True)]


async def test_a_table_of_an_archived_service_stays_archived(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    assert (await delete(http, account, f"/dcp_services/{service['id']}")).status_code == 204
    tables = f"/dcp_services/{service['id']}/dcp_datasources"
    before = await get(http, account, tables)
    for listed in before:
        response = await put(http, account, f"/dcp_datasources/{listed['id']}", {"archived": False})
        body = assert_error(response, 400, "RESOURCE_ARCHIVED")
        assert f"DCP service {service['id']} is archived" in body["message"]
    assert await get(http, account, tables) == before
    assert before[1]["id"] == table["id"]


async def test_the_optimizely_table_cannot_be_archived_by_put(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    response = await put(http, account, f"/dcp_datasources/{optimizely['id']}", {"archived": True, "name": "x"})
    assert_error(response, 400, "OPTIMIZELY_TABLE_IMMUTABLE")
    assert await get(http, account, f"/dcp_datasources/{optimizely['id']}") == optimizely


async def test_archived_table_refuses_changes(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    assert (await delete(http, account, f"/dcp_datasources/{table['id']}")).status_code == 204
    before = await get(http, account, f"/dcp_datasources/{table['id']}")
    assert_error(await put(http, account, f"/dcp_datasources/{table['id']}", {"name": "X"}), 400, "RESOURCE_ARCHIVED")
    created = await post(
        http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes", {"name": "a", "datatype": "long"}
    )
    assert_error(created, 400, "RESOURCE_ARCHIVED")
    assert await get(http, account, f"/dcp_datasources/{table['id']}") == before


async def test_optimizely_table_cannot_be_archived(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert_error(await delete(http, account, f"/dcp_datasources/{optimizely['id']}"), 400, "OPTIMIZELY_TABLE_IMMUTABLE")
    assert await get(http, account, f"/dcp_datasources/{optimizely['id']}") == optimizely


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"}, "OPTIMIZELY_TABLE_IMMUTABLE"),
        ({"keyfield_locator_type": "query parameter", "keyfield_locator_name": "q"}, "OPTIMIZELY_TABLE_IMMUTABLE"),
        ({"keyfield_locator_type": "js_variable", "keyfield_locator_name": "v"}, "OPTIMIZELY_TABLE_IMMUTABLE"),
        ({"keyfield_locator_name": "crm_id"}, "INVALID_FIELD"),
    ],
)
async def test_optimizely_table_cannot_be_relocated(
    http: httpx.AsyncClient, account: Account, change: dict[str, Any], code: str
) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert_error(await put(http, account, f"/dcp_datasources/{optimizely['id']}", change), 400, code)
    assert await get(http, account, f"/dcp_datasources/{optimizely['id']}") == optimizely


async def test_optimizely_table_can_be_renamed(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    # A read-modify-write client sends the whole object back, uid locator included.
    response = await put(http, account, f"/dcp_datasources/{optimizely['id']}", {**optimizely, "name": "Web visitors"})
    assert response.status_code == 202, response.text
    assert response.json()["name"] == "Web visitors"
    assert response.json()["is_optimizely"] is True
    assert response.json()["keyfield_locator_type"] == "uid"
    assert response.json()["keyfield_locator_name"] is None
    tables = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert tables == [response.json()]


async def test_table_attributes_hold_the_shortened_form(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    ltv = await new_attribute(http, account, table["id"], "LTV", "long", description="Life-time value")
    seen = await new_attribute(
        http, account, table["id"], "Last seen", "datetime", format="epoch", is_value_public=True
    )
    assert (await delete(http, account, f"/dcp_datasource_attributes/{ltv['id']}")).status_code == 204

    read = await get(http, account, f"/dcp_datasources/{table['id']}")
    assert isinstance(read["attributes"], list)
    for summary in read["attributes"]:
        assert set(summary) == ATTRIBUTE_SUMMARY_KEYS
    assert read["attributes"] == [
        {
            "archived": True,
            "datatype": "long",
            "description": "Life-time value",
            "format": None,
            "id": ltv["id"],
            "is_value_public": False,
            "name": "LTV",
        },
        {
            "archived": False,
            "datatype": "datetime",
            "description": None,
            "format": "epoch",
            "id": seen["id"],
            "is_value_public": True,
            "name": "Last seen",
        },
    ]
    listed = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    assert listed[1]["attributes"] == read["attributes"]


# Attributes


@pytest.mark.parametrize(
    ("datatype", "datetime_format"),
    [
        ("string", None),
        ("bool", None),
        ("long", None),
        ("double", None),
        ("datetime", "yyyy-mm-dd"),
        ("datetime", "yyyy-mm-ddThh:mm:ssZ"),
        ("datetime", "epoch"),
    ],
)
async def test_attribute_register_each_datatype(
    http: httpx.AsyncClient, account: Account, datatype: str, datetime_format: str | None
) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    extra = {"format": datetime_format} if datetime_format else {}
    attribute = await new_attribute(
        http, account, table["id"], "Life-time value", datatype, description="Predicted LTV", **extra
    )
    assert set(attribute) == ATTRIBUTE_KEYS
    assert is_id(attribute["id"])
    assert attribute["name"] == "Life-time value"
    assert attribute["datatype"] == datatype
    assert attribute["format"] == datetime_format
    assert attribute["description"] == "Predicted LTV"
    assert attribute["is_value_public"] is False
    assert attribute["archived"] is False
    assert attribute["dcp_datasource_id"] == table["id"]
    assert_timestamps(attribute)
    assert await get(http, account, f"/dcp_datasource_attributes/{attribute['id']}") == attribute
    assert await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes") == [attribute]


async def test_attribute_on_the_optimizely_table(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    [optimizely] = await get(http, account, f"/dcp_services/{service['id']}/dcp_datasources")
    attribute = await new_attribute(http, account, optimizely["id"], "segment", "string", is_value_public=True)
    assert attribute["dcp_datasource_id"] == optimizely["id"]
    assert attribute["is_value_public"] is True


async def test_attribute_list_is_in_creation_order(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    created = [await new_attribute(http, account, table["id"], name, "string") for name in ("z", "a", "m")]
    listed = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")
    assert listed == created


async def test_datetime_requires_a_format_and_others_refuse_one(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    path = f"/dcp_datasources/{table['id']}/dcp_datasource_attributes"
    assert_error(await post(http, account, path, {"name": "d", "datatype": "datetime"}), 400, "INVALID_FIELD", "format")
    assert_error(
        await post(http, account, path, {"name": "d", "datatype": "long", "format": "epoch"}),
        400,
        "INVALID_FIELD",
        "format",
    )
    assert await get(http, account, path) == []


async def test_attribute_names_are_case_sensitive(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    upper = await new_attribute(http, account, table["id"], "LTV", "long")
    lower = await new_attribute(http, account, table["id"], "ltv", "double")
    listed = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")
    assert [(a["name"], a["datatype"]) for a in listed] == [("LTV", "long"), ("ltv", "double")]
    assert upper["id"] != lower["id"]


async def test_attribute_names_of_1_to_255_characters(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    for name in ["x", "y" * 255, "Life-time value", "naïve name ✓", "a.b/c:d", "💡" * 255]:
        attribute = await new_attribute(http, account, table["id"], name, "string")
        assert attribute["name"] == name
        assert (await get(http, account, f"/dcp_datasource_attributes/{attribute['id']}"))["name"] == name


async def test_attribute_name_of_256_characters_is_refused(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    path = f"/dcp_datasources/{table['id']}/dcp_datasource_attributes"
    assert_error(
        await post(http, account, path, {"name": "x" * 256, "datatype": "string"}), 400, "INVALID_FIELD", "name"
    )
    assert await get(http, account, path) == []


async def test_duplicate_active_attribute_name_conflicts(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    first = await new_attribute(http, account, table["id"], "LTV", "long")
    path = f"/dcp_datasources/{table['id']}/dcp_datasource_attributes"
    body = assert_error(
        await post(http, account, path, {"name": "LTV", "datatype": "string"}), 409, "ALREADY_EXISTS", "name"
    )
    assert "LTV" in body["message"]
    assert await get(http, account, path) == [first]


async def test_same_attribute_name_in_two_tables(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    first = await new_table(http, account, service["id"], "A")
    second = await new_table(http, account, service["id"], "B")
    await new_attribute(http, account, first["id"], "LTV", "long")
    await new_attribute(http, account, second["id"], "LTV", "long")


async def test_concurrent_registrations_of_one_name_make_one_attribute(
    http: httpx.AsyncClient, account: Account
) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    path = f"/dcp_datasources/{table['id']}/dcp_datasource_attributes"
    responses = await asyncio.gather(
        *(post(http, account, path, {"name": "LTV", "datatype": "long"}) for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "ALREADY_EXISTS", "name")
    assert len(await get(http, account, path)) == 1


async def test_archived_attribute_name_can_be_reused(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    old = await new_attribute(http, account, table["id"], "LTV", "long")
    assert (await delete(http, account, f"/dcp_datasource_attributes/{old['id']}")).status_code == 204
    new = await new_attribute(http, account, table["id"], "LTV", "double")
    assert new["id"] != old["id"]
    listed = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")
    assert [(a["id"], a["datatype"], a["archived"]) for a in listed] == [
        (old["id"], "long", True),
        (new["id"], "double", False),
    ]


async def test_attribute_put_updates_description_and_visibility(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "LTV", "long", description="old")
    path = f"/dcp_datasource_attributes/{attribute['id']}"

    described = await put(http, account, path, {"description": "Predicted LTV"})
    assert described.status_code == 202, described.text
    assert described.json()["description"] == "Predicted LTV"
    assert described.json()["is_value_public"] is False
    assert described.json()["last_modified"] > attribute["last_modified"]
    assert described.json()["created"] == attribute["created"]

    public = await put(http, account, path, {"is_value_public": True})
    assert public.status_code == 202, public.text
    assert public.json()["is_value_public"] is True
    assert public.json()["description"] == "Predicted LTV"

    cleared = await put(http, account, path, {"description": None})
    assert cleared.status_code == 202, cleared.text
    assert cleared.json()["description"] is None
    assert cleared.json()["is_value_public"] is True
    assert await get(http, account, path) == cleared.json()
    unchanged = {"name": "LTV", "datatype": "long", "format": None, "dcp_datasource_id": table["id"]}
    assert {k: cleared.json()[k] for k in unchanged} == unchanged


async def test_attribute_put_ignores_unchanged_name_and_datatype(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "Seen", "datetime", format="yyyy-mm-dd")
    path = f"/dcp_datasource_attributes/{attribute['id']}"
    response = await put(
        http,
        account,
        path,
        {"name": "Seen", "datatype": "datetime", "format": "yyyy-mm-dd", "description": "first visit"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["description"] == "first visit"
    # A read-modify-write client sends the whole object back.
    whole = await put(http, account, path, {**response.json(), "is_value_public": True})
    assert whole.status_code == 202, whole.text
    assert whole.json()["is_value_public"] is True
    assert whole.json()["description"] == "first visit"


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "ltv"), ("name", "LTV2"), ("datatype", "double"), ("datatype", "datetime"), ("format", "epoch")],
)
async def test_attribute_name_datatype_and_format_cannot_change(
    http: httpx.AsyncClient, account: Account, field: str, value: str
) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "LTV", "long")
    path = f"/dcp_datasource_attributes/{attribute['id']}"
    response = await put(http, account, path, {field: value, "description": "changed"})
    assert_error(response, 400, "READ_ONLY_FIELD", field)
    assert await get(http, account, path) == attribute


async def test_attribute_delete_archives_and_put_unarchives(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "LTV", "long")
    path = f"/dcp_datasource_attributes/{attribute['id']}"

    response = await delete(http, account, path)
    assert response.status_code == 204
    assert response.content == b""
    archived = await get(http, account, path)
    assert archived["archived"] is True
    assert archived["last_modified"] > attribute["last_modified"]
    assert {k: v for k, v in archived.items() if k not in ("archived", "last_modified")} == {
        k: v for k, v in attribute.items() if k not in ("archived", "last_modified")
    }
    listed = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")
    assert listed == [archived]
    # Deleting again is harmless.
    assert (await delete(http, account, path)).status_code == 204

    restored = await put(http, account, path, {"archived": False})
    assert restored.status_code == 202, restored.text
    assert restored.json()["archived"] is False
    assert await get(http, account, path) == restored.json()


async def test_unarchive_while_the_name_is_taken_conflicts(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    old = await new_attribute(http, account, table["id"], "LTV", "long")
    assert (await delete(http, account, f"/dcp_datasource_attributes/{old['id']}")).status_code == 204
    await new_attribute(http, account, table["id"], "LTV", "double")
    before = await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes")

    response = await put(http, account, f"/dcp_datasource_attributes/{old['id']}", {"archived": False})
    body = assert_error(response, 409, "ALREADY_EXISTS", "name")
    assert "LTV" in body["message"]
    assert await get(http, account, f"/dcp_datasources/{table['id']}/dcp_datasource_attributes") == before


async def test_failed_unarchive_keeps_the_other_changes_out(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    old = await new_attribute(http, account, table["id"], "LTV", "long", description="old")
    assert (await delete(http, account, f"/dcp_datasource_attributes/{old['id']}")).status_code == 204
    await new_attribute(http, account, table["id"], "LTV", "double")
    before = await get(http, account, f"/dcp_datasource_attributes/{old['id']}")
    response = await put(
        http, account, f"/dcp_datasource_attributes/{old['id']}", {"archived": False, "description": "new"}
    )
    assert_error(response, 409, "ALREADY_EXISTS", "name")
    assert await get(http, account, f"/dcp_datasource_attributes/{old['id']}") == before


async def test_attribute_put_archived_true_archives(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"], "LTV", "long")
    path = f"/dcp_datasource_attributes/{attribute['id']}"
    response = await put(http, account, path, {"archived": True, "description": "retired"})
    assert response.status_code == 202, response.text
    assert response.json()["archived"] is True
    assert response.json()["description"] == "retired"
    assert await get(http, account, path) == response.json()


# Conventions


async def test_ids_are_integers_everywhere(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    table = await new_table(http, account, service["id"])
    attribute = await new_attribute(http, account, table["id"])
    project = (await post(http, account, "/projects", {"project_name": "p", "dcp_service_id": service["id"]})).json()
    assert all(is_id(v) for v in (service["id"], service["account_id"], table["id"], table["dcp_service_id"]))
    assert all(is_id(v) for v in (attribute["id"], attribute["dcp_datasource_id"], project["id"]))
    assert all(is_id(v) for v in (project["account_id"], project["dcp_service_id"]))


async def test_responses_are_json(http: httpx.AsyncClient, account: Account) -> None:
    service = await new_service(http, account)
    for path in ("/dcp_services", f"/dcp_services/{service['id']}", f"/dcp_services/{service['id']}/dcp_datasources"):
        response = await http.get(V1 + path, headers=account.headers)
        assert response.headers["content-type"].startswith("application/json")
