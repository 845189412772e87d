"""Two replicas of every service, each its own `dcp serve` process, on one database: one platform."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from services._runtime.s3 import open_store
from services._runtime.settings import Settings
from services.schema.model import TokenKind
from services.wiring.parts import schema_parts
from tests.e2e.processes import Running, base_env

V1 = "/experiment/v1"
REPLICAS = 2


class Replicas:
    """Every service twice; each dependent process reaches a service's replicas round robin."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, list[Running]] = {}
        self.addresses: dict[str, str] = {}
        self.gateways: list[str] = []

    async def start(self, service: str, extra: dict[str, str]) -> None:
        started = [Running(["serve", service], {**self.env, **extra}) for _ in range(REPLICAS)]
        self.processes[service] = started
        pattern = r"serving REST on (http://\S+)" if service == "gateway" else r"serving gRPC on (\S+)"
        found = [await asyncio.to_thread(p.wait_for, pattern) for p in started]
        if service == "gateway":
            self.gateways = [match.group(1) for match in found]
        else:
            self.addresses[service] = "ipv4:" + ",".join(match.group(1) for match in found)

    def stop_first_of_each(self) -> None:
        for started in self.processes.values():
            assert started[0].stop() == 0, "".join(started[0].output)

    def close(self) -> None:
        for started in self.processes.values():
            for process in started:
                process.kill()


@pytest.fixture
async def replicas(database_url: str, s3_server: str, settings: Settings) -> AsyncIterator[tuple[Replicas, str]]:
    bucket = f"replicas-{secrets.token_hex(4)}"
    env = {
        **base_env(),
        "DCP_DATABASE_URL": database_url,
        "DCP_IDENTITY_KEY": secrets.token_urlsafe(48),
        # The platform's own key: the in-process services read the rows these replicas seal.
        "DCP_SECRETS_KEY": settings.secrets_key or "",
        "DCP_GRPC_PORT": "0",
        "DCP_HTTP_PORT": "0",
        "DCP_S3_ENDPOINT_URL": s3_server,
        "DCP_S3_ACCESS_KEY_ID": "testing",
        "DCP_S3_SECRET_ACCESS_KEY": "testing",
        # A bucket of their own: the in-process platform other tests share must not take these files.
        "DCP_S3_BUCKET": bucket,
        "DCP_IMPORT_POLL_SECONDS": "0.2",
    }
    suite = Replicas(env)
    try:
        await suite.start("schema", {})
        schema = {"DCP_SCHEMA_ADDRESS": suite.addresses["schema"]}
        await suite.start("aliases", schema)
        await suite.start("profiles", {**schema, "DCP_ALIASES_ADDRESS": suite.addresses["aliases"]})
        await suite.start("imports", {**schema, "DCP_PROFILES_ADDRESS": suite.addresses["profiles"]})
        await suite.start(
            "gateway",
            {
                **schema,
                "DCP_PROFILES_ADDRESS": suite.addresses["profiles"],
                "DCP_ALIASES_ADDRESS": suite.addresses["aliases"],
                "DCP_IMPORTS_ADDRESS": suite.addresses["imports"],
            },
        )
        yield suite, bucket
    finally:
        suite.close()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_two_replicas_of_each_service_serve_one_consistent_platform(
    replicas: tuple[Replicas, str], pool: asyncpg.Pool, settings: Settings, s3_server: str
) -> None:
    suite, bucket = replicas
    credentials = schema_parts(settings, pool).credentials
    account = await credentials.create_account("replicated")
    token = (await credentials.issue_token(account.id, TokenKind.CLASSIC)).secret
    one, two = (httpx.AsyncClient(base_url=url, headers={"Token": token}, timeout=30) for url in suite.gateways)
    async with one, two:
        service = _ok(await one.post(f"{V1}/dcp_services", json={"name": "shop"}), 201)["id"]
        table = _ok(
            await two.post(
                f"{V1}/dcp_services/{service}/dcp_datasources",
                json={"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            ),
            201,
        )
        _ok(
            await one.post(
                f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes",
                json={"name": "ltv", "datatype": "long"},
            ),
            201,
        )
        optimizely = _ok(await two.get(f"{V1}/dcp_services/{service}/dcp_datasources"))[0]["id"]

        # Writes through either gateway land on either replica; reads through the other see them all.
        for i in range(20):
            writer, reader = (one, two) if i % 2 else (two, one)
            _ok(
                await writer.post(f"/api/customer_profile/{service}/{table['id']}/c{i}", json={"data": {"ltv": i}}), 201
            )
            _ok(
                await writer.post(
                    f"/api/alias/{service}/{optimizely}/u{i}", json={"data": {str(table["id"]): f"c{i}"}}
                ),
                201,
            )
            view = _ok(await reader.get(f"/api/consolidatedCustomerView/{service}/u{i}"))
            assert view == [
                {
                    "customerId": f"c{i}",
                    "dcpServiceId": str(service),
                    "datasourceId": str(table["id"]),
                    "data": {"ltv": i},
                }
            ]

        # One file, two importers: applied exactly once.
        rows = "".join(f"b{i},{i * 10}\n" for i in range(200))
        async with open_store(replace(settings.s3, bucket=bucket)) as store:
            await store.put(f"{table['s3_path']}/bulk.csv", f"customerId,ltv\n{rows}".encode())
        deadline = time.monotonic() + 60
        while True:
            uploads = _ok(await one.get(f"{V1}/dcp_datasources/{table['id']}/uploads"))
            if uploads and uploads[0]["status"] == "processed":
                break
            assert time.monotonic() < deadline, uploads
            await asyncio.sleep(0.2)
        assert len(uploads) == 1
        assert (uploads[0]["rows_total"], uploads[0]["rows_ok"]) == (200, 200)
        assert (
            await pool.fetchval("SELECT count(*) FROM profiles.applied_batches WHERE datasource_id = $1", table["id"])
            == 1
        )
        assert _ok(await two.get(f"/api/customer_profile/{service}/{table['id']}/b199"))["data"] == {"ltv": 1990}

        # With one replica of every service stopped, the others carry on alone.
        suite.stop_first_of_each()
        _ok(await two.post(f"/api/customer_profile/{service}/{table['id']}/after", json={"data": {"ltv": 1}}), 201)
        for i in range(10):
            _ok(await two.get(f"/api/customer_profile/{service}/{table['id']}/c{i}"))
        _ok(await two.get(f"{V1}/dcp_datasources/{table['id']}/uploads"))
