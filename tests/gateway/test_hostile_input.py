"""Input built to break the gateway answers 4xx with the v1 JSON error body naming the field, never 5xx."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from typing import Any

import grpc
import httpx
import orjson
import pytest

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.errors import MAX_VIOLATIONS, MORE_FIELD, InvalidArgument
from tests.conftest import MakeAccount, RunningPlatform
from tests.gateway.test_audience_api import World, make_world
from tests.gateway.test_bad_input import assert_error

V1 = "/experiment/v1"
HUGE = "1" + "0" * 5000


@pytest.fixture
async def world(http: httpx.AsyncClient, make_account: MakeAccount) -> World:
    return await make_world(http, await make_account())


async def raw(world: World, method: str, path: str, body: bytes, **headers: str) -> httpx.Response:
    return await world.http.request(
        method, path, content=body, headers={**world.account.headers, "content-type": "application/json", **headers}
    )


# JSON bodies


async def test_a_5000_digit_integer_is_a_400_naming_its_field(world: World) -> None:
    profile = f"/api/customer_profile/{world.service}/{world.crm}/c1"
    response = await raw(world, "POST", profile, b'{"data": {"ltv": ' + HUGE.encode() + b"}}")
    assert_error(response, 400, "INVALID_FIELD", "data.ltv")
    response = await raw(world, "POST", V1 + "/dcp_services", b'{"name": "x", "pii_guard": -' + HUGE.encode() + b"}")
    assert_error(response, 400, "INVALID_FIELD", "pii_guard")
    # The connection stays usable: the next request on it is answered.
    assert (await world.call("GET", V1 + "/dcp_services")).status_code == 200


async def test_numbers_beyond_64_bits_and_doubles_beyond_range_are_400(world: World) -> None:
    profile = f"/api/customer_profile/{world.service}/{world.crm}/c1"
    for text, field in [(str(2**64), "data.ltv"), (str(-(2**63) - 1), "data.ltv"), ("1e400", "data.score")]:
        name = field.removeprefix("data.")
        response = await raw(world, "POST", profile, f'{{"data": {{"{name}": {text}}}}}'.encode())
        assert_error(response, 400, "INVALID_FIELD", field)
    response = await raw(world, "POST", f"/api/audiences/evaluate/{world.service}/u1", b'{"audience_ids": [1, 2e999]}')
    assert_error(response, 400, "INVALID_FIELD", "audience_ids[1]")


async def test_duplicate_keys_are_refused_naming_the_key(world: World) -> None:
    profile = f"/api/customer_profile/{world.service}/{world.crm}/c1"
    response = await raw(world, "POST", profile, b'{"data": {"ltv": 1, "ltv": 2}}')
    body = assert_error(response, 400, "DUPLICATE_KEY", "ltv")
    assert "ltv" in body["message"]
    assert (await world.call("GET", profile)).status_code == 404
    response = await raw(world, "POST", V1 + "/dcp_services", b'{"name": "a", "name": "b"}')
    assert_error(response, 400, "DUPLICATE_KEY", "name")


# Echoed input and gRPC's metadata limit


async def test_many_or_long_unknown_attribute_names_keep_their_status(world: World) -> None:
    profile = f"/api/customer_profile/{world.service}/{world.crm}/c1"
    many = {f"unknown_attribute_{i:03}_" + "x" * 40: 1 for i in range(100)}
    response = await world.call("POST", profile, {"data": many})
    body = assert_error(response, 400, "INVALID_FIELD")
    assert len(body["errors"]) <= MAX_VIOLATIONS + 1
    assert body["errors"][-1]["field"] == MORE_FIELD
    assert "more" in body["errors"][-1]["message"]

    response = await world.call("POST", profile, {"data": {"n" * 3000: 1}})
    body = assert_error(response, 400, "INVALID_FIELD")
    assert len(response.content) < 4000
    assert "…" in response.text


async def test_long_locator_names_and_export_formats_are_400(world: World) -> None:
    response = await world.call(
        "POST",
        f"{V1}/dcp_services/{world.service}/dcp_datasources",
        {"name": "t", "keyfield_locator_type": "cookie", "keyfield_locator_name": "x" * 4097},
    )
    assert_error(response, 400, "INVALID_FIELD", "keyfield_locator_name")
    response = await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": "f" * 4097})
    body = assert_error(response, 400, "INVALID_FIELD", "format")
    assert len(body["message"]) < 300


async def test_the_empty_export_format_is_refused(world: World) -> None:
    response = await world.call("POST", f"{V1}/dcp_datasources/{world.crm}/exports", {"format": ""})
    assert_error(response, 400, "INVALID_FIELD", "format")


def test_status_details_are_cut_to_fit_and_say_so() -> None:
    error = InvalidArgument(
        "ü" * 10_000,
        violations=[(f"field_{i}_" + "f" * 1000, "d" * 5000) for i in range(500)],
        metadata={f"k{i}": "v" * 10_000 for i in range(100)},
    )
    status = error.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.ByteSize() < 4096
    assert status.message.endswith("…")


async def test_a_huge_error_still_reaches_a_grpc_caller_with_its_status(
    running: RunningPlatform, make_account: MakeAccount
) -> None:
    account = await make_account()
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    service = await schema.CreateDcpService(
        schema_service_pb2.CreateDcpServiceRequest(dcp_service=resources_pb2.DcpService(name="s")),
        metadata=account.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await schema.CreateTable(
            schema_service_pb2.CreateTableRequest(
                dcp_service_id=service.id,
                table=resources_pb2.Table(
                    name="t", keyfield_locator_type=resources_pb2.LOCATOR_TYPE_COOKIE, keyfield_locator_name="é" * 9000
                ),
            ),
            metadata=account.metadata,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# Headers


async def test_a_non_ascii_request_id_is_replaced_by_a_fresh_one(world: World) -> None:
    for supplied in ["é-request".encode(), b"a b", b"x" * 200, b"\xff\xfe"]:
        response = await world.http.get(
            V1 + "/dcp_services", headers=[(b"Token", world.account.token.encode()), (b"X-Request-Id", supplied)]
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"].encode() != supplied
        assert response.headers["x-request-id"].isascii()
    kept = await world.http.get(V1 + "/dcp_services", headers={**world.account.headers, "X-Request-Id": "abc-123.x"})
    assert kept.headers["x-request-id"] == "abc-123.x"


# Path ids


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_nul_in_a_customer_id_is_400(world: World, method: str) -> None:
    response = await world.call(method, f"/api/customer_profile/{world.service}/{world.crm}/a%00b")
    assert_error(response, 400, "INVALID_FIELD", "customer_id")


async def test_a_nul_in_consolidated_and_evaluate_ids_is_400(world: World) -> None:
    for path in [
        f"/api/consolidatedCustomerView/{world.service}/a%00b",
        f"/api/consolidatedCustomerView/{world.service}/{world.optimizely}/a%00b",
    ]:
        assert_error(await world.call("GET", path), 400, "INVALID_FIELD", "user_id")
    response = await world.call("POST", f"/api/audiences/evaluate/{world.service}/a%00b", {})
    assert_error(response, 400, "INVALID_FIELD", "optimizely_user_id")


async def test_a_5000_character_customer_id_is_400(world: World) -> None:
    response = await world.call("GET", f"/api/customer_profile/{world.service}/{world.crm}/{'c' * 5000}")
    body = assert_error(response, 400, "INVALID_FIELD", "customer_id")
    assert len(body["message"]) < 300


async def test_invalid_utf8_in_a_path_id_is_refused_not_replaced(world: World) -> None:
    for bad in ["%FF", "%C3", "a%80b"]:
        response = await world.call("POST", f"/api/customer_profile/{world.service}/{world.crm}/{bad}", {"data": {}})
        assert_error(response, 400, "INVALID_FIELD", "customer_id")
    # Neither wrote the customer U+FFFD that lenient decoding would have made of them.
    response = await world.call("GET", f"/api/customer_profile/{world.service}/{world.crm}/%EF%BF%BD")
    assert response.status_code == 404


async def test_a_path_id_of_0_is_refused_not_taken_as_absent(world: World) -> None:
    response = await world.call("GET", f"/api/consolidatedCustomerView/{world.service}/0/u1")
    body = assert_error(response, 404, "NOT_FOUND", "optimizely_table_id")
    assert "start at 1" in body["message"]
    response = await world.call("GET", f"{V1}/dcp_services/{2**63}")
    assert_error(response, 404, "NOT_FOUND", "service_id")


# Audience conditions


async def test_condition_values_beyond_64_bits_are_400(world: World) -> None:
    leaf = world.leaf(world.crm, "ltv", "gt", 0)
    as_text = orjson.dumps(["and", leaf]).decode().replace('"value":0', f'"value":{2**70}')
    response = await world.call(
        "POST", f"{V1}/projects/{world.project}/audiences", {"name": "a", "conditions": as_text}
    )
    assert_error(response, 400, "INVALID_FIELD", "conditions[1].value")
    huge = as_text.replace(str(2**70), HUGE)
    response = await world.call("POST", f"{V1}/projects/{world.project}/audiences", {"name": "a", "conditions": huge})
    assert_error(response, 400, "INVALID_FIELD", "conditions[1].value")
    body = orjson.dumps({"name": "a", "conditions": ["and", leaf]}).replace(b'"value":0', f'"value":{2**70}'.encode())
    response = await raw(world, "POST", f"{V1}/projects/{world.project}/audiences", body)
    assert_error(response, 400, "INVALID_FIELD", "conditions[1].value")


# Wide tables


async def _export(world: World, table: int, export_format: str) -> bytes:
    started = await world.call("POST", f"{V1}/dcp_datasources/{table}/exports", {"format": export_format})
    assert started.status_code == 201, started.text
    deadline = time.monotonic() + 60
    while True:
        export = (await world.call("GET", f"{V1}/dcp_datasources/{table}/exports/{started.json()['id']}")).json()
        if export["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, export
        await asyncio.sleep(0.1)
    assert export["status"] == "done", export
    async with httpx.AsyncClient() as client:
        return (await client.get(export["download_url"])).content


async def test_a_table_wider_than_postgresqls_1664_columns_exports(world: World, running: RunningPlatform) -> None:
    table = (
        await world.call(
            "POST",
            f"{V1}/dcp_services/{world.service}/dcp_datasources",
            {"name": "wide", "keyfield_locator_type": "cookie", "keyfield_locator_name": "wide_id"},
        )
    ).json()["id"]
    schema = schema_service_pb2_grpc.SchemaServiceStub(running.channel)
    names = [f"a{i:04}" for i in range(1700)]
    gate = asyncio.Semaphore(16)

    async def create(name: str) -> None:
        async with gate:
            await schema.CreateAttribute(
                schema_service_pb2.CreateAttributeRequest(
                    dcp_datasource_id=table,
                    attribute=resources_pb2.Attribute(name=name, datatype=resources_pb2.DATATYPE_LONG),
                ),
                metadata=world.account.metadata,
            )

    await asyncio.gather(*(create(name) for name in names))
    data: dict[str, Any] = {"a0000": 1, "a0999": 2, "a1699": 3}
    await world.write(table, "c1", data)

    rows = list(csv.reader(io.StringIO((await _export(world, table, "csv")).decode())))
    # Created concurrently, the attributes' registration order is not their names' order.
    assert rows[0][0] == "customerId"
    assert sorted(rows[0][1:]) == names
    assert len(rows) == 2
    values = dict(zip(rows[0], rows[1], strict=True))
    assert (values["customerId"], values["a0000"], values["a0999"], values["a1699"], values["a0001"]) == (
        "c1",
        "1",
        "2",
        "3",
        "",
    )
    lines = (await _export(world, table, "jsonl")).splitlines()
    assert [orjson.loads(line) for line in lines] == [{"customerId": "c1", "data": data}]


# Callers that go away


async def test_a_caller_gone_before_its_body_arrived_is_no_error_of_the_gateway(
    world: World, running: RunningPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    url = httpx.URL(running.http_url)
    token = world.account.headers["Token"]
    for _ in range(3):
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            f"POST {V1}/projects HTTP/1.1\r\nHost: {url.host}\r\nToken: {token}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"project_name": '.encode()
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.3)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
    assert (await world.call("GET", "/api/whoami")).status_code == 200
