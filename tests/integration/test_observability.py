"""What an operator sees of a running platform: `/metrics`, exported traces and JSON log lines."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from gateway.app import GatewayClients
from gateway.auth import REUSE_SECONDS
from services._runtime import logs, tracing
from services._runtime.caching import REFRESH_AHEAD
from services._runtime.db import create_pool
from services._runtime.interceptors import request_id
from services._runtime.s3 import ObjectStore, open_store
from services._runtime.settings import Settings
from services.schema.credentials import Credentials
from services.schema.model import TokenKind
from services.wiring.gateway import start_gateway
from services.wiring.keys import identity_signer
from services.wiring.suite import start_suite
from tests.conftest import MakeAccount, RunningPlatform, TestAccount
from tests.e2e.processes import Running, base_env
from tests.integration.test_imports import make_table

V1 = "/experiment/v1"
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SpanKind.SPAN_KIND_CLIENT


class Scrape:
    """One reading of `/metrics`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        return sum(
            value
            for sample, sample_labels, value in self._samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {labels[label] for sample, labels, _ in self._samples if sample == name and label in labels}


async def _scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def _service(http: httpx.AsyncClient, account: TestAccount) -> int:
    created = await http.post(f"{V1}/dcp_services", json={"name": "observed"}, headers=account.headers)
    assert created.status_code == 201, created.text
    service_id: int = created.json()["id"]
    return service_id


# Metrics


async def test_metrics_count_rest_and_grpc_calls_by_route_template_and_code(
    http: httpx.AsyncClient, make_account: MakeAccount, running: RunningPlatform
) -> None:
    account = await make_account()
    service_id = await _service(http, account)
    # A token not used yet, so that its verification is counted here.
    fresh = {"Token": (await running.parts.credentials.issue_token(account.id, TokenKind.CLASSIC)).secret}
    before = await _scrape(http)
    started = time.monotonic()
    for _ in range(3):
        assert (await http.get(f"{V1}/dcp_services/{service_id}", headers=fresh)).status_code == 200
    missing = 987_654_321
    assert (await http.get(f"{V1}/dcp_services/{missing}", headers=fresh)).status_code == 404
    assert (await http.get(f"{V1}/dcp_services/{service_id}", headers={"Token": "wrong"})).status_code == 401
    elapsed = time.monotonic() - started
    after = await _scrape(http)

    route = f"{V1}/dcp_services/{{service_id}}"
    for status, count in (("200", 3), ("404", 1), ("401", 1)):
        labels = {"method": "GET", "route": route, "status": status}
        assert (
            after.value("http_server_requests_total", **labels) - before.value("http_server_requests_total", **labels)
            == count
        ), status
        assert (
            after.value("http_server_request_duration_seconds_count", **labels)
            - before.value("http_server_request_duration_seconds_count", **labels)
            == count
        ), status
    # Ids in paths never become label values.
    assert str(missing) not in after.text
    assert route in after.label_values("http_server_requests_total", "route")

    get_service = {"grpc_service": "dcp.schema.v1.SchemaService", "grpc_method": "GetDcpService"}
    for code, count in (("OK", 3), ("NOT_FOUND", 1)):
        assert (
            after.value("grpc_server_handled_total", grpc_code=code, **get_service)
            - before.value("grpc_server_handled_total", grpc_code=code, **get_service)
            == count
        ), code
        assert (
            after.value("grpc_server_handling_seconds_count", grpc_code=code, **get_service)
            - before.value("grpc_server_handling_seconds_count", grpc_code=code, **get_service)
            == count
        ), code
    authenticate = {"grpc_service": "dcp.schema.v1.AuthService", "grpc_method": "Authenticate", "grpc_type": "unary"}

    def verifications(code: str) -> float:
        return after.value("grpc_server_handled_total", grpc_code=code, **authenticate) - before.value(
            "grpc_server_handled_total", grpc_code=code, **authenticate
        )

    # The gateway reuses a verified token for up to a second, and never a refusal.
    assert 1 <= verifications("OK") <= elapsed / (REUSE_SECONDS * REFRESH_AHEAD) + 1
    assert verifications("UNAUTHENTICATED") == 1


async def test_pool_gauges_follow_the_process_pools(running: RunningPlatform, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        before = await _scrape(http)
        opened = await create_pool(database_url, min_size=2, max_size=7)
        try:
            async with opened.acquire(), opened.acquire():
                held = await _scrape(http)
        finally:
            await opened.close()
        after = await _scrape(http)
    # Other pools of this process (the platform's) come and go as they work; this one's share is exact.
    assert held.value("dcp_db_pool_max_size") == before.value("dcp_db_pool_max_size") + 7
    assert held.value("dcp_db_pool_size") >= 2
    assert held.value("dcp_db_pool_in_use") >= 2
    # A closed pool leaves the gauges.
    assert after.value("dcp_db_pool_max_size") == before.value("dcp_db_pool_max_size")
    for scrape in (before, held, after):
        size = scrape.value("dcp_db_pool_size")
        assert size >= 1
        assert scrape.value("dcp_db_pool_in_use") + scrape.value("dcp_db_pool_idle") == size
        assert size <= scrape.value("dcp_db_pool_max_size")


async def test_import_counters_follow_a_real_upload(
    http: httpx.AsyncClient, store: ObjectStore, make_account: MakeAccount
) -> None:
    table = await make_table(http, store, await make_account())
    before = await _scrape(http)
    await table.put("people.csv", "customerId,ltv,name\nc1,1,Ann\nc2,not-a-number,Bob\nc3,3,Cy\n")
    [upload] = await table.finished()
    assert upload["status"] == "partially_processed", upload
    after = await _scrape(http)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("dcp_import_rows_imported_total") == 2
    assert grew("dcp_import_rows_rejected_total") == 1
    assert grew("dcp_import_files_total", status="partially_processed") == 1
    assert grew("dcp_import_files_total", status="processed") == 0
    assert grew("dcp_import_lag_seconds_count") == 1
    # The file waited at most the test's own duration between arriving in S3 and being finished.
    assert 0 <= grew("dcp_import_lag_seconds_sum") < 60


async def test_a_dcp_serve_process_serves_metrics_on_its_own_port(
    database_url: str, s3_server: str, settings: Settings, make_account: MakeAccount
) -> None:
    account = await make_account()
    env = {
        **base_env(),
        "DCP_DATABASE_URL": database_url,
        "DCP_IDENTITY_KEY": secrets.token_urlsafe(48),
        "DCP_SECRETS_KEY": settings.secrets_key or "",
        "DCP_GRPC_PORT": "0",
        "DCP_METRICS_PORT": "0",
        "DCP_S3_ENDPOINT_URL": s3_server,
        "DCP_S3_ACCESS_KEY_ID": "testing",
        "DCP_S3_SECRET_ACCESS_KEY": "testing",
    }
    process = Running(["serve", "schema"], env)
    try:
        metrics_url = (await asyncio.to_thread(process.wait_for, r"schema metrics on (http://\S+)")).group(1)
        address = (await asyncio.to_thread(process.wait_for, r"serving gRPC on (\S+)")).group(1)
        async with grpc.aio.insecure_channel(address) as channel:
            schema = schema_service_pb2_grpc.SchemaServiceStub(channel)
            for _ in range(2):
                await schema.WhoAmI(schema_service_pb2.WhoAmIRequest(), metadata=account.metadata)
        async with httpx.AsyncClient() as client:
            scraped = await client.get(metrics_url)
        assert scraped.status_code == 200
        scrape = Scrape(scraped.text)
        assert (
            scrape.value(
                "grpc_server_handled_total",
                grpc_method="WhoAmI",
                grpc_code="OK",
                grpc_service="dcp.schema.v1.SchemaService",
            )
            == 2
        )
        assert scrape.value("dcp_db_pool_size") >= 1
        assert scrape.value("dcp_db_pool_max_size") == Settings().db_pool_max_size
        assert process.stop() == 0, "".join(process.output)
    finally:
        process.kill()


# Logs


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON log lines written while the test runs, every statement included (DEBUG)."""
    buffer = io.StringIO()
    handler = logs.handler("json", buffer)
    root = logging.getLogger()
    database = logging.getLogger("services._runtime.db")
    levels = root.level, database.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    database.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        database.setLevel(levels[1])


async def test_the_request_id_of_a_rest_call_reaches_its_database_statements_in_the_logs(
    http: httpx.AsyncClient, make_account: MakeAccount, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    account = await make_account()
    service_id = await _service(http, account)
    rid = f"obs-{secrets.token_hex(6)}"
    response = await http.get(f"{V1}/dcp_services/{service_id}", headers={**account.headers, "X-Request-Id": rid})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == rid
    statements = [line for line in json_lines() if line["request_id"] == rid]
    assert statements, json_lines()
    assert all(line["logger"] == "services._runtime.db" for line in statements)
    assert any("catalog." in line["message"] for line in statements), statements
    # Tracing is off here: the lines say nothing of traces.
    assert not any("trace_id" in line for line in statements)


async def test_slow_and_failing_statements_are_logged_with_their_request_id(
    pool: asyncpg.Pool, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    token = request_id.set("slow-and-failing")
    try:
        await pool.fetchval("SELECT pg_sleep(1.05)")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1 / $1::int", 0)
        await asyncio.sleep(0)  # the statements' log lines are written just after them
    finally:
        request_id.reset(token)
    lines = [line for line in json_lines() if line["request_id"] == "slow-and-failing"]
    [slow] = [line for line in lines if line["level"] == "WARNING"]
    assert slow["message"].startswith("slow query (1.")
    assert "pg_sleep" in slow["message"]
    [failed] = [line for line in lines if line["level"] == "INFO"]
    assert "DivisionByZeroError (SQLSTATE 22012)" in failed["message"]
    # Statement text only: bound values (possibly personal data) never reach the logs.
    assert failed["message"].endswith("SELECT 1 / $1::int")


# Traces


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


@dataclass
class Collector:
    """An OTLP/HTTP collector: it accepts POST /v1/traces and keeps the spans."""

    spans: list[ExportedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        received: list[ExportedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=str(resource.get("service.name")),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(received)

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, predicate: Callable[[ExportedSpan], bool]) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans if predicate(s)]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, str]]:
    kept = Collector()
    answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            kept.receive(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield kept, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class TracedPlatform:
    collector: Collector
    http_url: str
    store: ObjectStore
    credentials: Credentials

    async def account(self) -> TestAccount:
        account = await self.credentials.create_account("traced")
        issued = await self.credentials.issue_token(account.id, TokenKind.CLASSIC)
        return TestAccount(account.id, issued.secret)


@pytest.fixture(scope="module")
async def traced(
    settings: Settings, pool: asyncpg.Pool, collector: tuple[Collector, str]
) -> AsyncIterator[TracedPlatform]:
    """`dcp up` as it runs with DCP_OTLP_ENDPOINT set, on a bucket of its own."""
    kept, endpoint = collector
    configured = settings.with_overrides(
        otlp_endpoint=endpoint, s3=replace(settings.s3, bucket=f"traced-{secrets.token_hex(4)}")
    )
    async with tracing.traced(configured, "dcp"), open_store(configured.s3) as store:
        await store.ensure_bucket(configured.s3.region)
        await store.keep_versions()
        suite = await start_suite(configured, pool, identity_signer(configured, allow_generated=False), store=store)
        try:
            yield TracedPlatform(kept, suite.http_url, store, suite.schema.credentials)
        finally:
            await suite.stop(1)


async def _trace_of(kept: Collector, predicate: Callable[[ExportedSpan], bool], within: float = 10) -> str:
    """The trace id of the first exported span that satisfies `predicate`."""
    deadline = time.monotonic() + within
    while True:
        await tracing.flush()
        found = kept.find(predicate)
        if found:
            return found[0].trace_id
        if time.monotonic() > deadline:
            raise AssertionError(f"no such span was exported; got {[s.name for s in kept.find(lambda _: True)]}")
        await asyncio.sleep(0.05)


async def test_one_rest_call_is_one_trace_from_gateway_to_database(
    traced: TracedPlatform, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    rid = f"traced-{secrets.token_hex(6)}"
    upstream_trace, upstream_span = secrets.token_hex(16), secrets.token_hex(8)
    account = await traced.account()
    async with httpx.AsyncClient(base_url=traced.http_url) as http:
        service_id = await _service(http, account)
        # A token not used yet: its verification is part of this request.
        fresh = (await traced.credentials.issue_token(account.id, TokenKind.CLASSIC)).secret
        response = await http.get(
            f"{V1}/dcp_services/{service_id}",
            headers={
                "Token": fresh,
                "X-Request-Id": rid,
                # A load balancer's trace goes on through the platform.
                "traceparent": f"00-{upstream_trace}-{upstream_span}-01",
            },
        )
    assert response.status_code == 200
    trace_id = await _trace_of(traced.collector, lambda s: s.attributes.get("dcp.request_id") == rid)
    assert trace_id == upstream_trace
    await _trace_of(traced.collector, lambda s: s.trace_id == trace_id and s.name.startswith("SELECT"))
    spans = traced.collector.trace(trace_id)
    assert {s.service for s in spans} == {"dcp"}

    [gateway] = [s for s in spans if s.kind == SERVER and s.name.startswith("GET ")]
    assert gateway.name == f"GET {V1}/dcp_services/{{service_id}}"
    assert gateway.parent_id == upstream_span
    assert gateway.attributes["http.response.status_code"] == 200
    assert gateway.attributes["dcp.request_id"] == rid

    [server] = [s for s in spans if s.kind == SERVER and s.name == "dcp.schema.v1.SchemaService/GetDcpService"]
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["dcp.request_id"] == rid
    # The gateway calls the service in its own process without the wire, so without a client
    # span: the call's server span hangs off the REST request's.
    assert server.parent_id == gateway.span_id
    # Authentication is part of the same request.
    assert any(s.kind == SERVER and s.name == "dcp.schema.v1.AuthService/Authenticate" for s in spans)

    statements = [s for s in spans if s.attributes.get("db.system.name") == "postgresql"]
    under_server = [s for s in statements if s.parent_id == server.span_id]
    assert under_server, [s.name for s in statements]
    assert all(s.attributes["dcp.request_id"] == rid for s in under_server)
    assert any("catalog." in s.attributes["db.query.text"] for s in under_server)

    # The log lines of the request name it and its trace.
    lines = [line for line in json_lines() if line["request_id"] == rid]
    assert lines
    assert {line["trace_id"] for line in lines} == {trace_id}
    assert {line["span_id"] for line in lines} <= {s.span_id for s in spans}


async def test_applying_an_upload_is_one_trace_with_its_s3_reads_and_statements(traced: TracedPlatform) -> None:
    async with httpx.AsyncClient(base_url=traced.http_url, timeout=30) as http:
        table = await make_table(http, traced.store, await traced.account())
        await table.put("traced.csv", "customerId,ltv\nc1,1\nc2,2\n")
        [upload] = await table.finished()
    assert upload["status"] == "processed", upload
    trace_id = await _trace_of(
        traced.collector, lambda s: s.name == "import upload" and s.attributes.get("dcp.upload_id") == upload["id"]
    )
    spans = traced.collector.trace(trace_id)
    [root] = [s for s in spans if s.name == "import upload"]
    assert root.parent_id == ""
    assert root.attributes["dcp.table_id"] == table.id
    [read] = [s for s in spans if s.name == "S3.GetObject"]
    assert (read.kind, read.parent_id) == (CLIENT, root.span_id)
    assert read.attributes["http.response.status_code"] == 200
    assert any(s.attributes.get("db.system.name") == "postgresql" for s in spans)


async def test_background_polling_starts_no_traces(traced: TracedPlatform) -> None:
    await asyncio.sleep(1)  # several rounds of the import worker and the export runner
    await tracing.flush()
    roots = traced.collector.find(lambda s: s.parent_id == "")
    # Only requests and uploads start traces: no root is a bare statement or S3 call.
    assert all(s.kind == SERVER or s.name == "import upload" for s in roots), {s.name for s in roots}


async def test_a_gateway_with_a_metrics_port_keeps_metrics_off_its_public_port(running: RunningPlatform) -> None:
    gateway = await start_gateway(replace(running.settings, metrics_port=0), GatewayClients.over(running.channel))
    try:
        async with httpx.AsyncClient(base_url=f"http://{gateway.host}:{gateway.port}") as public:
            assert (await public.get("/healthz")).status_code == 200
            hidden = await public.get("/metrics")
            assert hidden.status_code == 404
            assert hidden.json()["code"] == "ROUTE_NOT_FOUND"
    finally:
        await gateway.stop()
