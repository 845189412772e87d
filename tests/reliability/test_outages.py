"""Outages are explicit: a database or store that cannot be reached answers 503 UNAVAILABLE with Retry-After
(never 500) in bounded time, readiness says so while liveness does not, the log stays small, and everything
works again once the part is back, without a restart.

Each test runs its own servers (a PostgreSQL cluster, an S3 server, a `dcp up`) so it may stop and kill them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import GatewayClients
from services._runtime.s3 import open_store
from services._runtime.settings import ImportSettings, S3Settings, Settings
from services.schema.model import TokenKind
from services.wiring.connections import grpc_channel, migrate_all, opened_pool
from services.wiring.gateway import start_gateway
from services.wiring.keys import identity_signer
from services.wiring.suite import Suite, start_suite
from tests.conftest import TEST_SECRETS_KEY
from tests.e2e.processes import Running, base_env
from tests.reliability.pgcluster import PgCluster
from tests.servers import S3Process, free_port

V1 = "/experiment/v1"

# Short bounds, so an outage shows within a second; production defaults are longer.
CONNECT_SECONDS = 1.0
ACQUIRE_SECONDS = 1.0
STATEMENT_SECONDS = 2.0
COMMAND_SECONDS = 3.0
# No answer may take longer than the longest wait for the database, plus a second.
ANSWER_BOUND_SECONDS = max(CONNECT_SECONDS, ACQUIRE_SECONDS, STATEMENT_SECONDS, COMMAND_SECONDS) + 1.0
HEALTH_INTERVAL_SECONDS = 0.3
HEALTH_TIMEOUT_SECONDS = 0.5
OUTAGE_SECONDS = 3.0


def _settings(database_url: str, **changes: Any) -> Settings:
    return Settings(
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        identity_key=secrets.token_urlsafe(48),
        secrets_key=TEST_SECRETS_KEY,
        **changes,
    )


def _short_database_timeouts(database_url: str) -> Settings:
    return _settings(
        database_url,
        db_connect_timeout_seconds=CONNECT_SECONDS,
        db_acquire_timeout_seconds=ACQUIRE_SECONDS,
        db_statement_timeout_seconds=STATEMENT_SECONDS,
        db_command_timeout_seconds=COMMAND_SECONDS,
        db_health_interval_seconds=HEALTH_INTERVAL_SECONDS,
        db_health_timeout_seconds=HEALTH_TIMEOUT_SECONDS,
    )


@dataclass
class Platform:
    suite: Suite
    http: httpx.AsyncClient
    headers: dict[str, str]

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self.headers)

    async def created(self, path: str, body: Any) -> dict[str, Any]:
        response = await self.post(path, body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def table(self, *attributes: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A DCP service and a table with these attributes."""
        service = await self.created(f"{V1}/dcp_services", {"name": "outages"})
        table = await self.created(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        )
        for attribute in attributes:
            await self.created(f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", attribute)
        return service["id"], table


@contextlib.asynccontextmanager
async def running_platform(settings: Settings, store: Any = None) -> AsyncIterator[Platform]:
    """The services and the gateway in this process, as `dcp up` runs them, on `settings`' database."""
    assert settings.database_url is not None
    async with opened_pool(settings.database_url, settings) as pool:
        await migrate_all(pool)
        signer = identity_signer(settings, allow_generated=False)
        suite = await start_suite(settings, pool, signer, store=store)
        try:
            account = await suite.schema.credentials.create_account("outages")
            issued = await suite.schema.credentials.issue_token(account.id, TokenKind.CLASSIC)
            async with httpx.AsyncClient(base_url=suite.http_url, timeout=30) as http:
                yield Platform(suite, http, {"Token": issued.secret})
        finally:
            await suite.stop(1)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorded_logs() -> Iterator[_Records]:
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        yield records
    finally:
        root.removeHandler(records)


# PostgreSQL stopped and started again under load


@dataclass
class Answer:
    sent: float
    elapsed: float
    status: int
    code: str | None
    retry_after: str | None


@dataclass
class Probe:
    sent: float
    readyz: int
    readyz_body: dict[str, Any]
    healthz: int


@dataclass
class Outage:
    stopped: float = 0.0
    """When the database had shut down (pg_ctl returned)."""
    restarting: float = 0.0
    """When the database was asked to start again (it may answer before `restarted`)."""
    restarted: float = 0.0
    """When the database accepted connections again."""
    answers: list[Answer] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)
    read_back: dict[str, int | None] = field(default_factory=dict)
    ready_after: int = 0
    logs: list[logging.LogRecord] = field(default_factory=list)

    def during(self) -> list[Answer]:
        """Answers to requests sent and answered while the database was down."""
        return [a for a in self.answers if a.sent >= self.stopped and a.sent + a.elapsed <= self.restarting]


@pytest.fixture(scope="module")
async def outage() -> AsyncIterator[Outage]:
    """Writes profiles through REST from four clients while PostgreSQL shuts down (fast) and, after
    a few seconds, starts again; records every answer, the probes, the log, and reads the writes back."""
    cluster = await asyncio.to_thread(PgCluster)
    try:
        await asyncio.to_thread(cluster.start)
        async with running_platform(_short_database_timeouts(cluster.url)) as running:
            yield await _outage_under_load(cluster, running)
    finally:
        await asyncio.to_thread(cluster.destroy)


async def _outage_under_load(cluster: PgCluster, running: Platform) -> Outage:
    service, table = await running.table({"name": "n", "datatype": "long"})
    path = f"/api/customer_profile/{service}/{table['id']}"
    seen = Outage()
    done = asyncio.Event()

    async def write(writer: int) -> None:
        for number in range(1, 100_000):
            if done.is_set():
                return
            customer = f"w{writer}-{number}"
            sent = time.monotonic()
            try:
                response = await running.post(f"{path}/{customer}", {"data": {"n": number}})
            except httpx.HTTPError:
                seen.answers.append(Answer(sent, time.monotonic() - sent, 0, None, None))
                continue
            elapsed = time.monotonic() - sent
            code = response.json().get("code") if response.status_code >= 400 else None
            seen.answers.append(Answer(sent, elapsed, response.status_code, code, response.headers.get("retry-after")))
            if response.status_code == 201:
                seen.acknowledged[customer] = number
            await asyncio.sleep(0.01)

    async def probe() -> None:
        while not done.is_set():
            sent = time.monotonic()
            readyz = await running.http.get("/readyz")
            healthz = await running.http.get("/healthz")
            seen.probes.append(Probe(sent, readyz.status_code, readyz.json(), healthz.status_code))
            await asyncio.sleep(0.2)

    with recorded_logs() as records:
        tasks = [asyncio.create_task(write(n)) for n in range(4)] + [asyncio.create_task(probe())]
        try:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.stop, "fast")
            seen.stopped = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            seen.restarting = time.monotonic()
            await asyncio.to_thread(cluster.start)
            seen.restarted = time.monotonic()
            deadline = seen.restarted + 15
            while not any(a.status == 201 and a.sent > seen.restarted for a in seen.answers):
                assert time.monotonic() < deadline, "no write succeeded after the database came back"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
        finally:
            done.set()
            await asyncio.gather(*tasks)
        seen.logs = list(records.records)

    for _ in range(50):
        seen.ready_after = (await running.http.get("/readyz")).status_code
        if seen.ready_after == 200:
            break
        await asyncio.sleep(0.1)

    semaphore = asyncio.Semaphore(8)

    async def read(customer: str) -> None:
        async with semaphore:
            response = await running.get(f"{path}/{customer}")
        seen.read_back[customer] = response.json()["data"].get("n") if response.status_code == 200 else None

    await asyncio.gather(*(read(customer) for customer in seen.acknowledged))
    return seen


async def test_while_the_database_is_down_every_answer_is_503_unavailable_with_retry_after(outage: Outage) -> None:
    during = outage.during()
    assert len(during) >= 20, f"too few requests during the outage: {len(during)}"
    assert {(a.status, a.code) for a in during} == {(503, "UNAVAILABLE")}
    assert all(a.retry_after is not None and 1 <= int(a.retry_after) <= 5 for a in during)
    # Before, during and after: nothing but stored or unavailable, and never a long wait.
    assert Counter(a.status for a in outage.answers).keys() <= {201, 503}, Counter(a.status for a in outage.answers)
    slowest = max(a.elapsed for a in outage.answers)
    assert slowest < ANSWER_BOUND_SECONDS, f"an answer took {slowest:.2f} s"


async def test_readiness_follows_the_database_and_liveness_does_not(outage: Outage) -> None:
    # The services notice within one check interval and its timeout.
    settled = outage.stopped + HEALTH_INTERVAL_SECONDS + HEALTH_TIMEOUT_SECONDS + 0.5
    down = [p for p in outage.probes if settled <= p.sent and p.sent + 0.5 < outage.restarting]
    assert down, "no readiness probe while the database was down"
    assert {p.readyz for p in down} == {503}
    body = down[-1].readyz_body
    assert body["status"] == "not ready"
    assert "not serving" in body["services"]["profiles"]
    assert all(p.healthz == 200 for p in outage.probes)
    assert outage.ready_after == 200


async def test_writes_work_again_after_the_restart_and_no_acknowledged_write_is_lost(outage: Outage) -> None:
    recovered = min(a.sent for a in outage.answers if a.status == 201 and a.sent > outage.restarting)
    assert recovered - outage.restarted < 5.0
    after = [a for a in outage.answers if a.sent > recovered + 0.5]
    assert len(after) >= 20
    assert {a.status for a in after} == {201}
    assert outage.acknowledged
    lost = {c: n for c, n in outage.acknowledged.items() if outage.read_back.get(c) != n}
    assert not lost, f"{len(lost)} acknowledged writes are missing or changed, e.g. {list(lost.items())[:5]}"


async def test_the_log_has_one_traceback_per_distinct_failure_not_one_per_request(outage: Outage) -> None:
    # A failure: what was being done (the logger and its message), why (the exception and where it was raised).
    failures = Counter(
        (r.name, r.msg, r.exc_info[0].__name__, _where(r.exc_info[2]))
        for r in outage.logs
        if r.exc_info and r.exc_info[0] is not None
    )
    unavailable = sum(1 for a in outage.answers if a.status == 503)
    assert failures, "the outage left no traceback at all"
    assert max(failures.values()) == 1, failures
    assert unavailable >= 5 * sum(failures.values()), (unavailable, failures)
    assert len(outage.logs) < unavailable, "a log line per failed request"


def _where(tb: Any) -> str:
    frames = traceback.extract_tb(tb)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


# A statement that outlasts the statement timeout


async def test_a_statement_held_past_the_statement_timeout_is_503_in_bounded_time(database_url: str) -> None:
    async with running_platform(_short_database_timeouts(database_url)) as running:
        service, table = await running.table({"name": "n", "datatype": "long"})
        profile = f"/api/customer_profile/{service}/{table['id']}/held"
        assert (await running.post(profile, {"data": {"n": 1}})).status_code == 201
        blocker = await asyncpg.connect(database_url)
        try:
            async with blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM profiles.profiles WHERE datasource_id = $1 AND customer_id = 'held' FOR UPDATE",
                    table["id"],
                )
                sent = time.monotonic()
                held = await running.post(profile, {"data": {"n": 2}})
                elapsed = time.monotonic() - sent
            assert (held.status_code, held.json()["code"]) == (503, "UNAVAILABLE")
            assert held.headers["retry-after"] == "2"
            assert STATEMENT_SECONDS <= elapsed < STATEMENT_SECONDS + 1.0
        finally:
            await blocker.close()
        again = await running.post(profile, {"data": {"n": 3}})
        assert again.status_code == 201
        assert again.json()["data"] == {"n": 3}


# The S3 store gone in the middle of an import


async def _until(running: Platform, table_id: int, done: Any, within: float, what: str) -> dict[str, Any]:
    """The first upload of the table's history for which `done` holds, once one does."""
    deadline = time.monotonic() + within
    while True:
        response = await running.get(f"{V1}/dcp_datasources/{table_id}/uploads")
        assert response.status_code == 200, response.text
        uploads: list[dict[str, Any]] = response.json()
        found = [u for u in uploads if done(u)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{what}: {uploads}"
        await asyncio.sleep(0.05)


async def test_an_import_whose_store_goes_away_says_so_while_it_retries_and_ends_clearly(
    database_url: str, pool: asyncpg.Pool
) -> None:
    # Asking for `pool` empties the shared database first: start-up opens every secret stored in it.
    store_server = S3Process()
    await asyncio.to_thread(store_server.start)
    try:
        # A bucket of its own: the suite's other importers, on the same database, must not claim its upload.
        s3 = S3Settings(
            endpoint_url=store_server.url,
            access_key_id="testing",
            secret_access_key="testing",
            bucket=f"outage-{secrets.token_hex(4)}",
        )
        settings = _settings(
            database_url,
            s3=s3,
            imports=ImportSettings(poll_seconds=0.2, retry_seconds=1.0, retry_max_seconds=2.0),
        )
        async with open_store(s3) as store:
            await store.ensure_bucket(s3.region)
            await store.keep_versions()
            async with running_platform(settings, store) as running:
                _, table = await running.table({"name": "n", "datatype": "long"})
                # Large enough that most of it is still unread when the store goes away.
                body = "customerId,n\n" + "".join(f"c{i},{i}\n" for i in range(1_500_000))
                await store.put(f"{table['s3_path']}/big.csv", body.encode())
                del body

                started = await _until(running, table["id"], lambda u: u["status"] == "processing", 30, "never started")
                await asyncio.sleep(0.3)
                await asyncio.to_thread(store_server.kill)

                waiting = await _until(
                    running,
                    table["id"],
                    lambda u: u["id"] == started["id"] and "the file store cannot be reached" in (u["error"] or ""),
                    30,
                    "the history never said the store cannot be reached",
                )
                assert waiting["status"] in ("pending", "processing")
                assert re.search(r"; retrying in [\d.]+ s \(attempt \d+\)$", waiting["error"]), waiting["error"]

                # A store comes back, without the file (its objects lived in the process that died).
                await asyncio.to_thread(store_server.start)
                await store.ensure_bucket(s3.region)
                await store.keep_versions()
                ended = await _until(
                    running,
                    table["id"],
                    lambda u: u["id"] == started["id"] and u["status"] not in ("pending", "processing"),
                    60,
                    "never ended",
                )
                assert ended["status"] == "failed"
                assert ended["error"] == "the file was removed from the bucket before it could be imported"
                assert ended["rows_ok"] == 0
    finally:
        await asyncio.to_thread(store_server.stop)


# `dcp up` brings its embedded PostgreSQL back


def test_dcp_up_restarts_its_embedded_postgresql_when_it_dies(tmp_path: Path) -> None:
    data_dir = tmp_path / "dcp"
    up = Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], base_env())
    try:
        rest = up.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
        token = up.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
        with httpx.Client(base_url=rest, timeout=30) as http:
            assert http.post(f"{V1}/dcp_services", json={"name": "kept"}, headers={"Token": token}).status_code == 201
            postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGKILL)

            up.wait_for(rf"embedded PostgreSQL \(pid {postmaster}\) is gone; restarting it", timeout=30)
            restarted = int(up.wait_for(r"embedded PostgreSQL restarted \(pid (\d+)\)", timeout=60).group(1))
            assert restarted != postmaster

            deadline = time.monotonic() + 15
            while True:
                listed = http.get(f"{V1}/dcp_services", headers={"Token": token})
                if listed.status_code == 200 or time.monotonic() > deadline:
                    break
                assert listed.status_code == 503, listed.text
                time.sleep(0.2)
            assert listed.status_code == 200, listed.text
            assert [s["name"] for s in listed.json()] == ["kept"]
            # Readiness follows at the next health check.
            deadline = time.monotonic() + 10
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, http.get("/readyz").text
                time.sleep(0.2)
        assert up.stop() == 0
        # Stopping `dcp up` stops the server it restarted, as it does the first.
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
    finally:
        up.kill()


# A backend gRPC server the gateway cannot reach


async def test_a_service_the_gateway_cannot_reach_is_503_unavailable_with_retry_after() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    async with grpc_channel(nobody) as channel:
        gateway = await start_gateway(Settings(http_port=0), GatewayClients.over(channel))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=30) as http:
                sent = time.monotonic()
                answer = await http.get(f"{V1}/dcp_services", headers={"Token": "a" * 64 + ":1"})
                assert time.monotonic() - sent < ANSWER_BOUND_SECONDS
                assert answer.status_code == 503
                assert answer.json()["code"] == "UNAVAILABLE"
                assert answer.headers["retry-after"] == "2"
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.headers["retry-after"] == "2"
                assert ready.json()["services"]["schema"].startswith("unreachable")
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await gateway.stop()
