"""Shared fixtures: a real PostgreSQL, the services over gRPC sockets, the gateway over HTTP."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx
import pytest

from services._runtime.db import create_pool
from services._runtime.s3 import ObjectStore, open_store
from services._runtime.settings import ImportSettings, S3Settings, Settings
from services.schema.model import TokenKind
from services.schema.sealing import new_key
from services.wiring.connections import migrate_all
from services.wiring.embedded_postgres import EmbeddedPostgres
from services.wiring.keys import identity_signer
from services.wiring.parts import SchemaParts
from services.wiring.suite import start_suite
from tests.servers import S3Process

# One secrets key for every platform a test starts on the shared database: start-up opens every stored secret.
TEST_SECRETS_KEY = new_key()


def _server_url() -> str | None:
    """A reachable PostgreSQL server: DCP_TEST_DATABASE_URL, PG* variables, or the local default."""
    explicit = os.environ.get("DCP_TEST_DATABASE_URL")
    if explicit:
        return explicit
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    auth = f"{user}:{password}@" if password else f"{user}@"
    return f"postgresql://{auth}{host}:{port}/{os.environ.get('PGDATABASE', 'postgres')}"


async def _reachable(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh database for this test session, dropped at the end."""
    server_url = _server_url()
    embedded: EmbeddedPostgres | None = None
    if server_url is None or not await _reachable(server_url):
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="dcp-test-pg-")))
        server_url = embedded.url
    name = f"dcp_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_url, min_size=1, max_size=10)
    await migrate_all(created)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture(autouse=True)
async def _clean_database(request: pytest.FixtureRequest) -> None:
    """Every test that touches the database starts from empty tables; ids go on counting, as they do in production."""
    if "pool" not in request.fixturenames and "running" not in request.fixturenames:
        return
    await empty_tables(request.getfixturevalue("pool"))


async def empty_tables(db: asyncpg.Pool) -> None:
    """Every service's tables emptied (migrations kept)."""
    tables = await db.fetch(
        "SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables"
        " WHERE schemaname IN ('catalog', 'profiles', 'aliases', 'imports') AND tablename <> 'schema_migrations'"
    )
    if tables:
        await db.execute(f"TRUNCATE {', '.join(t['name'] for t in tables)} CASCADE")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3 protocol server (moto's, accepting any key) on a free port, for the whole session.

    In a process of its own, as the platform meets S3: moto's own objects are
    then never collected, and warned about, in the middle of another test.
    """
    server = S3Process()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, s3_server: str) -> Settings:
    return Settings(
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        identity_key=secrets.token_urlsafe(48),
        secrets_key=TEST_SECRETS_KEY,
        s3=S3Settings(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"),
        # Quick rounds, so tests wait for imports in tenths of a second.
        imports=ImportSettings(poll_seconds=0.2),
        export_poll_seconds=0.2,
    )


@pytest.fixture(scope="session")
async def session_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    async with open_store(settings.s3) as store:
        await store.ensure_bucket(settings.s3.region)
        await store.keep_versions()
        yield store


@pytest.fixture
async def store(session_store: ObjectStore, settings: Settings) -> ObjectStore:
    """The upload bucket, emptied before each test that asks for it.

    Emptied in place rather than deleted and made again: the session's platform
    lists it several times a second, and a bucket gone for a moment is an outage
    it rightly logs as an error, in whichever test happens to be running.
    """
    await empty_bucket(session_store)
    await session_store.ensure_bucket(settings.s3.region)
    await session_store.keep_versions()
    return session_store


async def empty_bucket(store: ObjectStore) -> None:
    """Every version, delete marker and unfinished multipart upload of the bucket, removed."""
    client = store._client
    async for page in client.get_paginator("list_object_versions").paginate(Bucket=store.bucket):
        doomed = [
            {"Key": entry["Key"], "VersionId": entry["VersionId"]}
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        for start in range(0, len(doomed), 1000):
            await client.delete_objects(Bucket=store.bucket, Delete={"Objects": doomed[start : start + 1000]})
    async for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=store.bucket):
        for upload in page.get("Uploads", []):
            await client.abort_multipart_upload(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


@dataclass
class RunningPlatform:
    """The services and the gateway, started for real on free ports."""

    settings: Settings
    parts: SchemaParts
    grpc_address: str
    http_url: str
    channel: grpc.aio.Channel
    in_process: grpc.aio.Channel
    """What the gateway calls the services through: the same server's handlers, without the wire."""


@pytest.fixture(scope="session")
async def running(settings: Settings, pool: asyncpg.Pool, session_store: ObjectStore) -> AsyncIterator[RunningPlatform]:
    signer = identity_signer(settings, allow_generated=False)
    suite = await start_suite(settings, pool, signer, store=session_store)
    try:
        yield RunningPlatform(
            settings=settings,
            parts=suite.schema,
            grpc_address=suite.grpc_address,
            http_url=suite.http_url,
            channel=suite.channel,
            in_process=suite.in_process,
        )
    finally:
        await suite.stop(1)


@dataclass(frozen=True)
class TestAccount:
    """An account with a classic token, as `dcp tokens create` makes them."""

    __test__ = False  # a fixture value, not a test class

    id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Token": self.token}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


MakeAccount = Callable[..., Awaitable[TestAccount]]


@pytest.fixture
def make_account(running: RunningPlatform) -> MakeAccount:
    counter = iter(range(1, 1_000_000))

    async def make(name: str | None = None, kind: TokenKind = TokenKind.CLASSIC) -> TestAccount:
        credentials = running.parts.credentials
        account = await credentials.create_account(name or f"account-{next(counter)}")
        issued = await credentials.issue_token(account.id, kind)
        return TestAccount(id=account.id, token=issued.secret)

    return make


@pytest.fixture
async def http(running: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def _isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A developer's AWS profile or region must never change what the suite asserts."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "aws-config"
    empty.touch()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
