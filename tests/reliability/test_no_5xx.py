"""No input earns a 5xx: generated bodies, path ids and headers against every endpoint of the OpenAPI document.

Hypothesis generates the requests (derandomized, so every run sends the same
ones); they are then sent to the running gateway, with the token of an
account that owns one of everything, or with none. Every answer must be below
500, and every error must be the v1 JSON error body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MakeAccount
from tests.gateway.test_audience_api import make_world

EXAMPLES_PER_ENDPOINT = 25
HUGE_INT = "1" + "0" * 5000


@dataclass(frozen=True)
class Attempt:
    method: str
    path: str
    body: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from(["", "\x00", "é✓", "x" * 5000, "csv", "jsonl", "cookie", "long"]),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    )


FIELD_NAMES = [
    "name",
    "project_name",
    "dcp_service_id",
    "description",
    "keyfield_locator_type",
    "keyfield_locator_name",
    "datatype",
    "format",
    "is_value_public",
    "archived",
    "conditions",
    "segmentation",
    "data",
    "audience_ids",
    "project_id",
    "cookies",
    "ltv",
    "import_mode",
]

RAW_BODIES = [
    b"",
    b"{",
    b"[" * 5000 + b"]" * 5000,
    b'{"data": ' * 3000 + b"{}" + b"}" * 3000,
    b'{"name": ' + HUGE_INT.encode() + b"}",
    b'{"data": {"ltv": ' + HUGE_INT.encode() + b"}}",
    b'{"data": {"ltv": -' + HUGE_INT.encode() + b"}}",
    b'{"name": 1e999, "data": {"score": -1e999}}',
    b'{"name": NaN}',
    b'{"name": Infinity}',
    b'{"name": "a", "name": "b"}',
    b'{"data": {"ltv": 1, "ltv": 2}}',
    b'{"name": "\\u0000"}',
    b'{"name": "\\ud800"}',
    b'{"name": "\xff\xfe"}',
    b'{"format": ""}',
    b'{"format": "' + b"f" * 4097 + b'"}',
    b'{"conditions": "[\\"and\\", {\\"value\\": ' + HUGE_INT.encode() + b'}]"}',
    b'{"audience_ids": [' + str(2**64).encode() + b"]}",
    b'{"data": {' + b",".join(b'"k%d": 1' % i for i in range(100)) + b"}}",
    b'{"data": {"' + b"n" * 3000 + b'": 1}}',
    b'{"keyfield_locator_type": "cookie", "keyfield_locator_name": "' + b"x" * 4097 + b'", "name": "t"}',
]

SPECIAL_TEXT_IDS = [
    "a%00b",
    "%FF",
    "%C3%28",
    "%ED%A0%80",
    "x" * 5000,
    "%20",
    "0",
    "%E2%9C%93",
    "..",
    "a%2Fb",
]
SPECIAL_NUMERIC_IDS = ["0", "-1", "00", str(2**63), str(2**63 - 1), "9" * 5000, "1e3", "%00", "%FF", "%D9%A1", "x"]

REQUEST_IDS = [b"\xc3\xa9-request", b"\xff", b"a" * 300, b"ok-1", b"", b"a b", b"\x7f"]


def _segment(name: str, kind: str, real: dict[str, str]) -> st.SearchStrategy[str]:
    generated = st.text(min_size=1, max_size=40).map(lambda text: quote(text, safe=""))
    if kind == "integer":
        special = st.sampled_from(SPECIAL_NUMERIC_IDS)
        numbers = st.integers(min_value=-(2**70), max_value=2**70).map(str)
        choices = [special, numbers, generated]
    else:
        choices = [st.sampled_from(SPECIAL_TEXT_IDS), generated]
    if name in real:
        choices.insert(0, st.just(real[name]))
    return st.one_of(*choices)


def _bodies() -> st.SearchStrategy[bytes | None]:
    def dumped(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    shaped = st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)), _json_values(), max_size=5)
    return st.one_of(
        st.none(),
        st.sampled_from(RAW_BODIES),
        shaped.map(dumped),
        _json_values().map(dumped),
        st.binary(max_size=40),
    )


def _headers(token: str) -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    credentials = st.sampled_from(
        [
            ((b"Token", token.encode()),),
            ((b"Authorization", b"Bearer " + token.encode()),),
            (),
            ((b"Token", b"t" * 5000),),
            ((b"Authorization", b"Bearer eyJ" + b"a" * 100 + b".eyJ.sig"),),
            ((b"Authorization", b"Basic abc"),),
            ((b"Token", "é".encode()),),
        ]
    )
    request_id = st.one_of(st.just(()), st.sampled_from(REQUEST_IDS).map(lambda rid: ((b"X-Request-Id", rid),)))
    return st.tuples(credentials, request_id).map(
        lambda parts: (*parts[0], *parts[1], (b"Content-Type", b"application/json"))
    )


def _attempts(method: str, template: str, operation: dict[str, Any], real: dict[str, str], token: str) -> list[Attempt]:
    """The requests Hypothesis makes for one endpoint; the same ones on every run."""
    kinds = {p["name"]: p["schema"]["type"] for p in operation.get("parameters", [])}
    segments = st.fixed_dictionaries({name: _segment(name, kind, real) for name, kind in kinds.items()})
    body = _bodies() if "requestBody" in operation else st.none()
    made: list[Attempt] = []

    @settings(
        max_examples=EXAMPLES_PER_ENDPOINT,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(segments=segments, body=body, headers=_headers(token))
    def collect(segments: dict[str, str], body: bytes | None, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        path = re.sub(r"{(\w+)}", lambda match: segments[match.group(1)], template)
        made.append(Attempt(method.upper(), path, body, headers))

    collect()
    return made


def assert_no_5xx(attempt: Attempt, response: httpx.Response) -> None:
    shown = f"{attempt.method} {attempt.path[:300]} body={(attempt.body or b'')[:300]!r} headers={attempt.headers}"
    assert response.status_code < 500, f"{shown} -> {response.status_code} {response.text[:500]}"
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", "").startswith("application/json"), f"{shown} -> {response.text}"
    body = response.json()
    assert isinstance(body, dict), shown
    assert {"status", "code", "message"} <= set(body), f"{shown} -> {body}"
    assert body["status"] == response.status_code, f"{shown} -> {body}"
    assert isinstance(body["code"], str), shown
    assert isinstance(body["message"], str), shown
    assert body["message"], shown
    for error in body.get("errors", []):
        assert set(error) == {"field", "message"}, f"{shown} -> {body}"


async def test_no_input_earns_a_5xx(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    account = await make_account()
    world = await make_world(http, account)
    audience = await world.audience("a", ["and", world.leaf(world.crm, "ltv", "gt", 1)])
    await world.write(world.crm, "c1", {"ltv": 5})
    export = (await world.call("POST", f"/experiment/v1/dcp_datasources/{world.crm}/exports", {})).json()
    real = {
        "project_id": str(world.project),
        "service_id": str(world.service),
        "table_id": str(world.crm),
        "optimizely_table_id": str(world.optimizely),
        "attribute_id": str(next(iter(world.attributes.values()))),
        "audience_id": str(audience["id"]),
        "export_id": str(export["id"]),
        "customer_id": "c1",
        "user_id": "u1",
        "optimizely_user_id": "u1",
    }

    document = (await http.get("/openapi.json")).json()
    assert len(document["paths"]) >= 20
    # Deleting last keeps the owned objects in place for the other methods.
    endpoints = sorted(
        ((method, path, operation) for path, item in document["paths"].items() for method, operation in item.items()),
        key=lambda endpoint: (endpoint[0] == "delete", endpoint[1], endpoint[0]),
    )
    sent = 0
    for method, path, operation in endpoints:
        for attempt in _attempts(method, path, operation, real, account.token):
            response = await http.request(
                attempt.method, attempt.path, content=attempt.body, headers=list(attempt.headers)
            )
            assert_no_5xx(attempt, response)
            sent += 1
    assert sent >= EXAMPLES_PER_ENDPOINT * len(endpoints) // 2


async def test_a_table_named_beyond_latin_1_gets_its_template(
    http: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    world = await make_world(http, account)
    name = 'Kunden "VIP" 顧客 ✓'
    renamed = await world.call("PUT", f"/experiment/v1/dcp_datasources/{world.crm}", {"name": name})
    assert renamed.status_code == 202, renamed.text

    response = await world.call("GET", f"/experiment/v1/dcp_datasources/{world.crm}/template")
    assert response.status_code == 200, response.text
    assert response.text.startswith("customerId,")
    disposition = response.headers["content-disposition"]
    # An ASCII stand-in for old clients, and the exact name for the rest.
    assert disposition.startswith('attachment; filename="Kunden _VIP_ __ _-template.csv"; ')
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == f"{name}-template.csv"
