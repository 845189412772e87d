"""The OpenAPI document: it covers every route and only routes, it is valid OpenAPI 3.1, and the
gateway's real answers (successes and every kind of refusal) match the schemas it documents."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import grpc
import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.app import GatewayClients, create_app
from gateway.console_files import ConsoleStore
from gateway.openapi import template
from gateway.ratelimit import LocalRateLimiter, RatePolicy
from services._runtime.s3 import ObjectStore
from services.schema.model import TokenKind
from tests.conftest import MakeAccount, RunningPlatform
from tests.gateway.test_audience_api import make_world

V1 = "/experiment/v1"
DOCUMENT_URI = "urn:open-dcp:openapi"
# The console's own files and the Prometheus scrape are not part of the REST API: the
# console is a client of the API, and /metrics is plain text for Prometheus (and not served
# at all when metrics have a port of their own).
UNDOCUMENTED = re.compile(r"^/console(/|$)|^/docs/static/|^/metrics$")


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Contract:
    """The document, and checks of real answers against what it says of them."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.checked: set[tuple[str, str, int]] = set()

    def _at(self, pointer: str) -> Any:
        node: Any = self.document
        for part in pointer.split("/")[1:]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def validate(self, value: Any, pointer: str) -> None:
        validator = Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer}"},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path))
        assert not errors, f"{pointer}: {value!r} does not match: " + "; ".join(
            f"{list(error.absolute_path)}: {error.message}" for error in errors[:5]
        )

    def check(self, method: str, path: str, response: httpx.Response) -> Any:
        """Asserts that the answer is one the document describes for this operation; returns its JSON, if any."""
        operation = self.document["paths"][path][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method} {path} answered {status}, which it does not document ({sorted(operation['responses'])}): "
            f"{response.text[:300]}"
        )
        pointer = _pointer("paths", path, method.lower(), "responses", status)
        documented = operation["responses"][status]
        if "$ref" in documented:
            pointer = documented["$ref"][1:]
            documented = self._at(pointer)
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in response.headers, f"{method} {path} {status}: no {name} header"
            if name in response.headers:
                raw = response.headers[name]
                value: Any = int(raw) if header["schema"].get("type") == "integer" else raw
                self.validate(value, pointer + _pointer("headers", name, "schema"))
        content = documented.get("content")
        if content is None:
            assert response.content == b"", f"{method} {path} {status} has a body it does not document"
            self.checked.add((method, path, response.status_code))
            return None
        media_type = response.headers["content-type"].split(";")[0].strip()
        assert media_type in content, f"{method} {path} {status}: {media_type} is not one of {sorted(content)}"
        body = response.json() if media_type == "application/json" else response.text
        self.validate(body, pointer + _pointer("content", media_type, "schema"))
        self.checked.add((method, path, response.status_code))
        return body


@pytest.fixture
async def contract(http: httpx.AsyncClient) -> Contract:
    answer = await http.get("/openapi.json")
    assert answer.status_code == 200
    return Contract(answer.json())


@pytest.fixture
def app(running: RunningPlatform) -> Starlette:
    return create_app(GatewayClients.over(running.channel), console=ConsoleStore(None, "bucket", "us-east-1"))


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def test_every_route_is_documented_and_every_operation_is_a_route(app: Starlette, contract: Contract) -> None:
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route)
        if UNDOCUMENTED.match(route.path):
            continue
        for method in (route.methods or set()) - {"HEAD"}:
            served.add((method, template(route.path)))
    documented = _operations(contract.document)
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert len(documented) >= 55
    # The areas the v1 surface and its extensions cover, each present.
    ids = {op["operationId"] for item in contract.document["paths"].values() for op in item.values()}
    for expected in (
        "createDcpService",
        "getProfile",
        "mergeAliases",
        "getConsolidatedView",
        "resolveVisitor",
        "whoAmI",
        "listUploads",
        "listUploadErrors",
        "cancelUpload",
        "getUploadTemplate",
        "validateUpload",
        "exportTable",
        "listServiceExports",
        "createAudience",
        "listAudienceMembers",
        "countAudienceMembers",
        "evaluateAudiences",
        "getRoot",
        "getLiveness",
    ):
        assert expected in ids


async def test_the_document_is_valid_openapi_31_and_every_operation_says_what_it_is(contract: Contract) -> None:
    document = contract.document
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    tags = {tag["name"] for tag in document["tags"]}
    ids: list[str] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            ids.append(operation["operationId"])
            assert operation["summary"], where
            assert len(operation["tags"]) == 1, where
            assert operation["tags"][0] in tags, where
            statuses = set(operation["responses"])
            assert any(s.startswith(("2", "3")) for s in statuses), where
            if operation["security"]:
                # Every authenticated operation documents every refusal that any request can earn.
                assert {"401", "403", "429", "503"} <= statuses, where
                assert operation["security"] == [{"token": []}, {"bearer": []}], where
            else:
                assert method == "get", where
                assert not path.startswith(f"{V1}/dcp"), where
            names = re.findall(r"{(\w+)}", path)
            parameters = operation.get("parameters", [])
            assert [p["name"] for p in parameters if p["in"] == "path"] == names, where
            if "requestBody" in operation:
                assert {"400", "413"} <= statuses, where
    assert len(ids) == len(set(ids)), "operationIds repeat"
    # Stateful testing follows these from what a create answers to the object it made.
    links = {
        ("post", f"{V1}/dcp_services", "201"): ("getDcpService", {"service_id": "$response.body#/id"}),
        ("post", f"{V1}/dcp_services/{{service_id}}/dcp_datasources", "201"): (
            "getTable",
            {"table_id": "$response.body#/id"},
        ),
        ("post", f"{V1}/dcp_datasources/{{table_id}}/dcp_datasource_attributes", "201"): (
            "getAttribute",
            {"attribute_id": "$response.body#/id"},
        ),
        ("post", f"{V1}/projects/{{project_id}}/audiences", "201"): (
            "getAudience",
            {"audience_id": "$response.body#/id"},
        ),
        ("post", f"{V1}/dcp_datasources/{{table_id}}/exports", "201"): (
            "getTableExport",
            {"table_id": "$request.path.table_id", "export_id": "$response.body#/id"},
        ),
        ("post", f"{V1}/audiences/{{audience_id}}/exports", "201"): (
            "getAudienceExport",
            {"audience_id": "$request.path.audience_id", "export_id": "$response.body#/id"},
        ),
    }
    for (method, path, status), (operation_id, parameters) in links.items():
        answer = document["paths"][path][method]["responses"][status]
        assert {"operationId": operation_id, "parameters": parameters} in [
            {"operationId": link["operationId"], "parameters": link["parameters"]} for link in answer["links"].values()
        ], (method, path)
    linked = {
        link["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        for answer in op["responses"].values()
        for link in answer.get("links", {}).values()
    }
    assert linked <= set(ids), "a link names an operation that does not exist"


async def test_request_bodies_refuse_unknown_fields_and_name_what_is_required(
    http: httpx.AsyncClient, make_account: MakeAccount, contract: Contract
) -> None:
    """What the request schemas promise: no field beyond those listed (additionalProperties: false),
    and a body without a required field refused, naming it."""
    world = await make_world(http, await make_account())
    audience = await world.audience("a", ["and", world.leaf(world.crm, "ltv", "gt", 1)])
    ids = {
        "project_id": world.project,
        "service_id": world.service,
        "table_id": world.crm,
        "optimizely_table_id": world.optimizely,
        "attribute_id": world.attributes[(world.crm, "ltv")],
        "audience_id": audience["id"],
        "customer_id": "c1",
        "user_id": "u1",
        "optimizely_user_id": "u1",
    }
    checked = 0
    for path, item in contract.document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            schema = content["application/json"]["schema"]
            url = path.format(**ids)
            refused = await world.call(method.upper(), url, {"no_such_field": 1})
            body = contract.check(method, path, refused)
            assert schema["additionalProperties"] is False, (method, path)
            assert refused.status_code == 400, (method, path, refused.text)
            assert body["errors"][0]["field"] == "no_such_field", (method, path, body)
            required = schema.get("required", [])
            if required:
                empty = await world.call(method.upper(), url, {})
                body = contract.check(method, path, empty)
                assert empty.status_code == 400, (method, path, empty.text)
                named = {error["field"] for error in body.get("errors", [])}
                assert named & set(required), (method, path, body, required)
            checked += 1
    assert checked >= 15


async def test_config_answers_match_their_schemas(
    http: httpx.AsyncClient, make_account: MakeAccount, contract: Contract
) -> None:
    account = await make_account()

    async def call(method: str, path: str, url: str, body: Any = None, status: int = 200) -> Any:
        response = await http.request(method, url, json=body, headers=account.headers)
        assert response.status_code == status, response.text
        return contract.check(method, path, response)

    assert await call("GET", f"{V1}/dcp_services", f"{V1}/dcp_services") == []
    service = await call("POST", f"{V1}/dcp_services", f"{V1}/dcp_services", {"name": "shop"}, 201)
    sid = service["id"]
    assert await call("GET", f"{V1}/dcp_services/{{service_id}}", f"{V1}/dcp_services/{sid}") == service
    assert [s["id"] for s in await call("GET", f"{V1}/dcp_services", f"{V1}/dcp_services")] == [sid]
    changed = await call(
        "PUT",
        f"{V1}/dcp_services/{{service_id}}",
        f"{V1}/dcp_services/{sid}",
        {"pii_guard": True, "alias_blocked_customer_ids": ["unknown"], "id": sid},
        202,
    )
    assert changed["pii_guard"] is True

    tables_path = f"{V1}/dcp_services/{{service_id}}/dcp_datasources"
    [optimizely] = await call("GET", tables_path, f"{V1}/dcp_services/{sid}/dcp_datasources")
    assert optimizely["is_optimizely"] is True
    table = await call(
        "POST",
        tables_path,
        f"{V1}/dcp_services/{sid}/dcp_datasources",
        {"name": "crm", "keyfield_locator_type": "uid", "keyfield_locator_name": None, "dcp_service_id": sid},
        201,
    )
    tid = table["id"]
    attributes_path = f"{V1}/dcp_datasources/{{table_id}}/dcp_datasource_attributes"
    attribute = await call(
        "POST",
        attributes_path,
        f"{V1}/dcp_datasources/{tid}/dcp_datasource_attributes",
        {"name": "day", "datatype": "datetime", "format": "yyyy-mm-dd", "description": "first order"},
        201,
    )
    plain = await call(
        "POST",
        attributes_path,
        f"{V1}/dcp_datasources/{tid}/dcp_datasource_attributes",
        {"name": "ltv", "datatype": "long"},
        201,
    )
    assert plain["format"] is None
    assert plain["description"] is None
    aid = attribute["id"]
    attribute_path = f"{V1}/dcp_datasource_attributes/{{attribute_id}}"
    assert await call("GET", attribute_path, f"{V1}/dcp_datasource_attributes/{aid}") == attribute
    listed = await call("GET", attributes_path, f"{V1}/dcp_datasources/{tid}/dcp_datasource_attributes")
    assert [a["id"] for a in listed] == [aid, plain["id"]]
    await call("PUT", attribute_path, f"{V1}/dcp_datasource_attributes/{aid}", {"archived": True}, 202)
    await call("DELETE", attribute_path, f"{V1}/dcp_datasource_attributes/{plain['id']}", status=204)

    table_path = f"{V1}/dcp_datasources/{{table_id}}"
    fetched = await call("GET", table_path, f"{V1}/dcp_datasources/{tid}")
    assert [a["archived"] for a in fetched["attributes"]] == [True, True]
    await call(
        "PUT",
        table_path,
        f"{V1}/dcp_datasources/{tid}",
        {"description": "all customers", "import_mode": "all_or_nothing"},
        202,
    )
    await call("DELETE", table_path, f"{V1}/dcp_datasources/{tid}", status=204)

    project = await call(
        "POST", f"{V1}/projects", f"{V1}/projects", {"project_name": "web", "dcp_service_id": sid}, 201
    )
    unlinked = await call("POST", f"{V1}/projects", f"{V1}/projects", {"project_name": "app"}, 201)
    assert unlinked["dcp_service_id"] is None
    await call("GET", f"{V1}/projects/{{project_id}}", f"{V1}/projects/{project['id']}")
    await call("PUT", f"{V1}/projects/{{project_id}}", f"{V1}/projects/{project['id']}", {}, 202)
    assert len(await call("GET", f"{V1}/projects", f"{V1}/projects")) == 2
    await call("DELETE", f"{V1}/dcp_services/{{service_id}}", f"{V1}/dcp_services/{sid}", status=204)


async def test_profile_audience_upload_and_export_answers_match_their_schemas(
    http: httpx.AsyncClient, make_account: MakeAccount, contract: Contract
) -> None:
    world = await make_world(http, await make_account())
    s, crm, opt = world.service, world.crm, world.optimizely

    async def call(method: str, path: str, url: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        response = await world.http.request(method, url, json=body, headers=world.account.headers, **kw)
        assert response.status_code == status, response.text
        return contract.check(method, path, response)

    profile_path = "/api/customer_profile/{service_id}/{table_id}/{customer_id}"
    written = await call(
        "POST",
        profile_path,
        f"/api/customer_profile/{s}/{crm}/c1",
        {"data": {"ltv": 5, "score": 1.5, "vip": True, "category": "shoes", "day": "2024-01-02", "ms": None}},
        201,
    )
    assert written["data"]["ltv"] == 5
    await call("GET", profile_path, f"/api/customer_profile/{s}/{crm}/c1")
    await call("GET", profile_path, f"/api/customer_profile/{s}/{crm}/with%2Fslash", status=404)
    alias_path = "/api/alias/{service_id}/{optimizely_table_id}/{user_id}"
    aliases = await call("POST", alias_path, f"/api/alias/{s}/{opt}/u1", {"data": {str(crm): "c1"}}, 201)
    assert aliases["data"] == {str(crm): "c1"}
    await call("GET", alias_path, f"/api/alias/{s}/{opt}/u1")
    view = await call(
        "GET", "/api/consolidatedCustomerView/{service_id}/{user_id}", f"/api/consolidatedCustomerView/{s}/u1"
    )
    assert {p["datasourceId"] for p in view} >= {str(crm)}
    await call(
        "GET",
        "/api/consolidatedCustomerView/{service_id}/{optimizely_table_id}/{user_id}",
        f"/api/consolidatedCustomerView/{s}/{opt}/u1",
    )
    await call("POST", "/api/resolve/{service_id}/{user_id}", f"/api/resolve/{s}/u2", {"cookies": {"crm_id": "c1"}})
    await call("GET", "/api/whoami", "/api/whoami")

    audience = await world.audience("big", ["and", world.leaf(crm, "ltv", "gt", 1)])
    await call("GET", f"{V1}/audiences/{{audience_id}}", f"{V1}/audiences/{audience['id']}")
    await call("GET", f"{V1}/projects/{{project_id}}/audiences", f"{V1}/projects/{world.project}/audiences")
    count = await call(
        "GET", f"{V1}/audiences/{{audience_id}}/members/count", f"{V1}/audiences/{audience['id']}/members/count"
    )
    assert count["count"] >= 1
    members = await call("GET", f"{V1}/audiences/{{audience_id}}/members", f"{V1}/audiences/{audience['id']}/members")
    assert {"optimizely_user_id": "u1"} in members
    assert len(members) == count["count"]
    await call(
        "POST",
        f"{V1}/projects/{{project_id}}/audiences/count",
        f"{V1}/projects/{world.project}/audiences/count",
        {"conditions": ["and", world.leaf(crm, "ltv", "gt", 1)]},
    )
    evaluate = "/api/audiences/evaluate/{service_id}/{optimizely_user_id}"
    saved = await call("POST", evaluate, f"/api/audiences/evaluate/{s}/u1", {})
    assert saved["audiences"][0]["matched"] is True
    draft = await call(
        "POST",
        evaluate,
        f"/api/audiences/evaluate/{s}/u1",
        {"project_id": world.project, "conditions": ["and", world.leaf(crm, "ltv", "lt", 1)]},
    )
    assert draft["audiences"][0]["audienceId"] is None

    exports_path = f"{V1}/dcp_datasources/{{table_id}}/exports"
    export = await call("POST", exports_path, f"{V1}/dcp_datasources/{crm}/exports", None, 201)
    assert export["dcp_datasource_id"] == crm
    jsonl = await call(
        "POST",
        f"{V1}/audiences/{{audience_id}}/exports",
        f"{V1}/audiences/{audience['id']}/exports",
        {"format": "jsonl"},
        201,
    )
    assert jsonl["audience_id"] == audience["id"]
    for _ in range(200):
        done = await call("GET", f"{exports_path}/{{export_id}}", f"{V1}/dcp_datasources/{crm}/exports/{export['id']}")
        if done["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert done["status"] == "done", done
    await call(
        "GET",
        f"{V1}/audiences/{{audience_id}}/exports/{{export_id}}",
        f"{V1}/audiences/{audience['id']}/exports/{jsonl['id']}",
    )
    await call("GET", exports_path, f"{V1}/dcp_datasources/{crm}/exports")
    await call("GET", f"{V1}/audiences/{{audience_id}}/exports", f"{V1}/audiences/{audience['id']}/exports")
    # A second export makes two pages of one: the first says where the next is.
    await call("POST", exports_path, f"{V1}/dcp_datasources/{crm}/exports", {"format": "csv"}, 201)
    paged = await world.http.get(
        f"{V1}/dcp_services/{s}/exports", params={"per_page": 1}, headers=world.account.headers
    )
    contract.check("GET", f"{V1}/dcp_services/{{service_id}}/exports", paged)
    assert 'rel="next"' in paged.headers["link"]

    uploads = f"{V1}/dcp_datasources/{{table_id}}/uploads"
    assert await call("GET", uploads, f"{V1}/dcp_datasources/{crm}/uploads") == []
    await call("POST", uploads, f"{V1}/dcp_datasources/{crm}/uploads", {"file_name": "a.csv"}, 201)
    template_answer = await call(
        "GET", f"{V1}/dcp_datasources/{{table_id}}/template", f"{V1}/dcp_datasources/{crm}/template"
    )
    assert template_answer.startswith("customerId,ltv")
    report = await call(
        "POST",
        f"{V1}/dcp_datasources/{{table_id}}/validate",
        f"{V1}/dcp_datasources/{crm}/validate?file_name=a.csv",
        content=b"customerId,ltv\nc1,5\nc2,five\n",
    )
    assert (report["rows_ok"], report["rows_failed"]) == (1, 1)
    # No body is an empty file, reported as an upload of it would end; the document asks for none.
    empty = await call(
        "POST", f"{V1}/dcp_datasources/{{table_id}}/validate", f"{V1}/dcp_datasources/{crm}/validate", content=b""
    )
    assert (empty["status"], empty["error"]) == ("failed", "the file is empty")
    validate = contract.document["paths"][f"{V1}/dcp_datasources/{{table_id}}/validate"]["post"]
    assert validate["requestBody"]["required"] is False

    await call(
        "DELETE",
        "/api/alias/{service_id}/{optimizely_table_id}/{user_id}/{table_id}",
        f"/api/alias/{s}/{opt}/u1/{crm}",
        status=204,
    )
    await call("DELETE", profile_path, f"/api/customer_profile/{s}/{crm}/c1", status=204)


async def test_every_kind_of_refusal_matches_the_error_schema(
    http: httpx.AsyncClient, make_account: MakeAccount, running: RunningPlatform, contract: Contract
) -> None:
    account = await make_account()
    service = f"{V1}/dcp_services/{{service_id}}"

    async def refused(method: str, path: str, url: str, status: int, **kw: Any) -> dict[str, Any]:
        response = await http.request(method, url, **{"headers": account.headers, **kw})
        assert response.status_code == status, response.text
        body: dict[str, Any] = contract.check(method, path, response)
        assert body["status"] == status
        return body

    sid = (await http.post(f"{V1}/dcp_services", json={"name": "s"}, headers=account.headers)).json()["id"]
    bad = await refused("PUT", service, f"{V1}/dcp_services/{sid}", 400, json={"pii_guard": "yes"})
    assert bad["errors"] == [{"field": "pii_guard", "message": bad["errors"][0]["message"]}]
    await refused("POST", f"{V1}/dcp_services", f"{V1}/dcp_services", 400, json={"name": "second"})
    await refused(
        "POST",
        f"{V1}/dcp_services",
        f"{V1}/dcp_services",
        400,
        content=b"{",
        headers={**account.headers, "content-type": "application/json"},
    )
    await refused("GET", service, f"{V1}/dcp_services/{sid}", 401, headers={})
    personal = await make_account(kind=TokenKind.PERSONAL)
    await refused("GET", service, f"{V1}/dcp_services/{sid}", 403, headers=personal.headers)
    await refused("GET", service, f"{V1}/dcp_services/987654321", 404)
    await refused("GET", service, f"{V1}/dcp_services/x", 404)
    tables = f"{V1}/dcp_services/{{service_id}}/dcp_datasources"
    table = {"name": "crm", "keyfield_locator_type": "uid"}
    made = await http.post(f"{V1}/dcp_services/{sid}/dcp_datasources", json=table, headers=account.headers)
    tid = made.json()["id"]
    attributes = f"{V1}/dcp_datasources/{{table_id}}/dcp_datasource_attributes"
    ltv = {"name": "ltv", "datatype": "long"}
    assert (await http.post(attributes.format(table_id=tid), json=ltv, headers=account.headers)).status_code == 201
    await refused("POST", attributes, attributes.format(table_id=tid), 409, json=ltv)
    await refused("POST", tables, tables.format(service_id=sid), 413, json={"name": "x" * 2_000_000})
    await refused(
        "GET", f"{V1}/dcp_datasources/{{table_id}}/uploads", f"{V1}/dcp_datasources/1/uploads?per_page=0", 400
    )

    # 405 is not an operation's answer: it says which methods the path takes.
    wrong = await http.request("PATCH", f"{V1}/dcp_services/{sid}", headers=account.headers)
    assert wrong.status_code == 405
    contract.validate(wrong.json(), "/components/responses/MethodNotAllowed/content/application~1json/schema")
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT", "DELETE"}

    # 429: a gateway that allows one request a second, over the same services.
    limited = create_app(GatewayClients.over(running.channel), limiter=LocalRateLimiter(RatePolicy(0.01, 1)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://gateway") as client:
        first = await client.get(f"{V1}/dcp_services/{sid}", headers=account.headers)
        contract.check("GET", service, first)
        assert first.headers["ratelimit-limit"] == "1"
        second = await client.get(f"{V1}/dcp_services/{sid}", headers=account.headers)
        assert second.status_code == 429
        contract.check("GET", service, second)

    # 503: a gateway whose services cannot be reached.
    with socket.socket() as unlistened:  # bound, never listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        port = unlistened.getsockname()[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stranded = create_app(GatewayClients.over(channel))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stranded), base_url="http://gw") as client:
                down = await client.get(f"{V1}/dcp_services/{sid}", headers=account.headers)
                assert down.status_code == 503
                contract.check("GET", service, down)
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                contract.check("GET", "/readyz", ready)


async def test_the_unauthenticated_routes_answer_as_documented(http: httpx.AsyncClient, contract: Contract) -> None:
    index = await http.get("/", headers={"Accept": "application/json"})
    body = contract.check("GET", "/", index)
    assert body["links"] == {
        "console": "/console/",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz",
    }
    assert body["name"] == "Open DCP"
    assert body["version"]
    for accept in ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "*/*"):
        browser = await http.get("/", headers={"Accept": accept})
        assert browser.status_code == 302, accept
        assert browser.headers["location"] == "/console/"
        contract.check("GET", "/", browser)
    assert (await http.get("/", headers={"Accept": "text/html;q=0.5, application/json"})).status_code == 200
    for path in ("/experiment/v1/", "/api/"):
        assert contract.check("GET", path, await http.get(path)) == body
    contract.check("GET", "/healthz", await http.get("/healthz"))
    contract.check("GET", "/readyz", await http.get("/readyz"))
    contract.check("GET", "/openapi.json", await http.get("/openapi.json"))
    docs = await http.get("/docs")
    contract.check("GET", "/docs", docs)
    assert "script-src 'self'" in docs.headers["content-security-policy"]


async def test_an_upload_in_the_history_matches_its_schema(
    http: httpx.AsyncClient, make_account: MakeAccount, contract: Contract, store: ObjectStore
) -> None:
    world = await make_world(http, await make_account())
    table = await http.get(f"{V1}/dcp_datasources/{world.crm}", headers=world.account.headers)
    body = b"customerId,ltv\nc1,5\nc2,five\n"
    await store.put(f"{table.json()['s3_path']}/a.csv", body)
    listing = f"{V1}/dcp_datasources/{{table_id}}/uploads"
    for _ in range(600):
        answer = await http.get(f"{V1}/dcp_datasources/{world.crm}/uploads", headers=world.account.headers)
        uploads = contract.check("GET", listing, answer)
        if uploads and uploads[0]["status"] not in ("pending", "processing"):
            break
        await asyncio.sleep(0.05)
    assert uploads[0]["status"] == "partially_processed", uploads
    answer = await http.get(
        f"{V1}/dcp_datasources/{world.crm}/uploads/{uploads[0]['id']}", headers=world.account.headers
    )
    upload = contract.check("GET", f"{listing}/{{upload_id}}", answer)
    assert (upload["size_bytes"], upload["bytes_read"]) == (len(body), len(body))
