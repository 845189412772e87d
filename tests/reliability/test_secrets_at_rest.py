"""S3 secret keys at rest: sealed in the database, shown to their own account, rotated without loss.

Someone who reads the catalog (a backup, a replica, a leaked dump) finds no
service's S3 secret key; a sealed value moved to another row opens nowhere;
a key rotation leaves every row readable with the new key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services._runtime.settings import Settings
from services.schema.keyfile import read_keys
from services.schema.sealing import Keyring, SecretKeyUnknown, SecretsKey, SecretUnreadable, new_key, sealed_key_id
from services.wiring.keys import SECRETS_KEY_FILE, identity_signer, with_secrets_key
from services.wiring.suite import start_suite
from tests.conftest import MakeAccount, TestAccount, empty_tables
from tests.e2e.processes import DCP, base_env

V1 = "/experiment/v1"


@pytest.fixture(autouse=True)
async def _leave_no_foreign_seals(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """These tests seal rows with keys the rest of the suite does not have: none may outlive its test."""
    yield
    await empty_tables(pool)


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _new_service(http: httpx.AsyncClient, account: TestAccount) -> dict[str, Any]:
    service: dict[str, Any] = _ok(
        await http.post(f"{V1}/dcp_services", json={"name": "shop"}, headers=account.headers), 201
    )
    return service


async def _stored(pool: asyncpg.Pool, service_id: int) -> str:
    stored: str = await pool.fetchval("SELECT aws_secret_key FROM catalog.dcp_services WHERE id = $1", service_id)
    return stored


async def _whole_row(pool: asyncpg.Pool, service_id: int) -> str:
    text: str = await pool.fetchval("SELECT row_to_json(s)::text FROM catalog.dcp_services s WHERE id = $1", service_id)
    return text


def _key_id(key: str) -> str:
    return SecretsKey.parse(key, source="test").id


@contextlib.asynccontextmanager
async def _platform(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The services and gateway started anew on the same database: a restart, as far as the rows can tell."""
    suite = await start_suite(settings, pool, identity_signer(settings, allow_generated=False))
    try:
        async with httpx.AsyncClient(base_url=suite.http_url, timeout=30) as client:
            yield client
    finally:
        await suite.stop(1)


async def _secrets_shown(http: httpx.AsyncClient, account: TestAccount, service_id: int) -> tuple[str, str]:
    """The secret as the service object shows it, and as its Optimizely table shows it."""
    service = _ok(await http.get(f"{V1}/dcp_services/{service_id}", headers=account.headers))
    tables = _ok(await http.get(f"{V1}/dcp_services/{service_id}/dcp_datasources", headers=account.headers))
    return service["aws_secret_key"], tables[0]["aws_secret_key"]


def _dcp(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([DCP, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False)


async def test_a_new_services_secret_is_stored_sealed_and_shown_to_its_own_account(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, settings: Settings
) -> None:
    account = await make_account()
    service = await _new_service(http, account)
    secret = service["aws_secret_key"]

    assert await _secrets_shown(http, account, service["id"]) == (secret, secret)
    stored = await _stored(pool, service["id"])
    assert secret not in await _whole_row(pool, service["id"])
    assert sealed_key_id(stored) == _key_id(settings.secrets_key or "")
    # Another account still learns nothing about it.
    other = await make_account()
    assert (await http.get(f"{V1}/dcp_services/{service['id']}", headers=other.headers)).status_code == 404


async def test_a_plaintext_row_of_an_older_database_is_sealed_when_the_schema_service_starts(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, settings: Settings
) -> None:
    account = await make_account()
    service = await _new_service(http, account)
    secret = service["aws_secret_key"]
    # As every database made before sealing holds it.
    await pool.execute("UPDATE catalog.dcp_services SET aws_secret_key = $2 WHERE id = $1", service["id"], secret)
    # Replicas that have not restarted yet keep serving it.
    assert await _secrets_shown(http, account, service["id"]) == (secret, secret)

    async with _platform(settings, pool) as restarted:
        stored = await _stored(pool, service["id"])
        assert secret not in await _whole_row(pool, service["id"])
        assert sealed_key_id(stored) == _key_id(settings.secrets_key or "")
        assert await _secrets_shown(restarted, account, service["id"]) == (secret, secret)
    # A second start finds nothing to seal and rewrites nothing.
    async with _platform(settings, pool) as again:
        assert await _stored(pool, service["id"]) == stored
        assert await _secrets_shown(again, account, service["id"]) == (secret, secret)


async def test_a_rotation_reseals_every_row_and_only_the_new_key_is_then_needed(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    old = settings.secrets_key or ""
    accounts = [await make_account() for _ in range(3)]
    services = [await _new_service(http, account) for account in accounts]
    secrets = {s["id"]: s["aws_secret_key"] for s in services}
    # One row still plaintext from an older version: the rotation seals it too.
    plain = services[2]["id"]
    await pool.execute("UPDATE catalog.dcp_services SET aws_secret_key = $2 WHERE id = $1", plain, secrets[plain])

    new = new_key()
    env = {**base_env(), "DCP_DATABASE_URL": database_url, "DCP_SECRETS_KEY": old}
    rotated = await asyncio.to_thread(_dcp, ["secrets", "rotate", "--batch-size", "2"], env, new + "\n")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 3 of 3" in rotated.stdout
    assert "DCP_SECRETS_PREVIOUS_KEYS" in rotated.stdout
    for service_id, secret in secrets.items():
        assert sealed_key_id(await _stored(pool, service_id)) == _key_id(new)
        assert secret not in await _whole_row(pool, service_id)

    during_rollout = replace(settings, secrets_key=new, secrets_previous_keys=(old,))
    async with _platform(during_rollout, pool) as client:
        for account, service in zip(accounts, services, strict=True):
            assert await _secrets_shown(client, account, service["id"]) == (service["aws_secret_key"],) * 2
    async with _platform(replace(settings, secrets_key=new), pool) as client:
        for account, service in zip(accounts, services, strict=True):
            assert await _secrets_shown(client, account, service["id"]) == (service["aws_secret_key"],) * 2

    # Started with a key that sealed none of the rows, the platform refuses to start and says which key it needs.
    with pytest.raises(SecretKeyUnknown, match=_key_id(new)) as refused:
        async with _platform(replace(settings, secrets_key=new_key()), pool):
            pass
    assert refused.value.key_ids == [_key_id(new)]

    # Run again (with the new key current), it finds nothing left to do.
    again = await asyncio.to_thread(
        _dcp, ["secrets", "rotate"], {**env, "DCP_SECRETS_KEY": new, "DCP_SECRETS_PREVIOUS_KEYS": old}, new
    )
    assert again.returncode == 0, again.stderr
    assert "re-encrypted 0 of 3" in again.stdout


async def test_a_rotation_with_a_key_that_opens_nothing_changes_nothing(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    service = await _new_service(http, await make_account())
    stored = await _stored(pool, service["id"])
    wrong = new_key()
    env = {**base_env(), "DCP_DATABASE_URL": database_url, "DCP_SECRETS_KEY": wrong}
    refused = await asyncio.to_thread(_dcp, ["secrets", "rotate"], env, new_key())
    assert refused.returncode != 0
    assert _key_id(settings.secrets_key or "") in refused.stderr
    assert f"DCP service(s) {service['id']}" in refused.stderr
    assert await _stored(pool, service["id"]) == stored


async def test_a_sealed_secret_copied_into_another_services_row_opens_nowhere(
    http: httpx.AsyncClient, make_account: MakeAccount, pool: asyncpg.Pool, settings: Settings
) -> None:
    owner, thief = await make_account(), await make_account()
    owners = await _new_service(http, owner)
    thiefs = await _new_service(http, thief)
    await pool.execute(
        "UPDATE catalog.dcp_services SET aws_secret_key = $2 WHERE id = $1",
        thiefs["id"],
        await _stored(pool, owners["id"]),
    )

    response = await http.get(f"{V1}/dcp_services/{thiefs['id']}", headers=thief.headers)
    assert response.status_code == 500
    assert owners["aws_secret_key"] not in response.text
    tables = await http.get(f"{V1}/dcp_services/{thiefs['id']}/dcp_datasources", headers=thief.headers)
    assert tables.status_code == 500
    assert owners["aws_secret_key"] not in tables.text
    # The owner is not affected.
    assert await _secrets_shown(http, owner, owners["id"]) == (owners["aws_secret_key"],) * 2
    # And a restart names the row instead of serving it.
    with pytest.raises(SecretUnreadable, match=f"DCP service\\(s\\) {thiefs['id']} "):
        async with _platform(settings, pool):
            pass


async def test_separate_processes_need_the_key_and_new_key_makes_one(database_url: str) -> None:
    env = {**base_env(), "DCP_DATABASE_URL": database_url, "DCP_IDENTITY_KEY": "x" * 48, "DCP_GRPC_PORT": "0"}
    refused = await asyncio.to_thread(_dcp, ["serve", "schema"], env)
    assert refused.returncode != 0
    assert "DCP_SECRETS_KEY must be set" in refused.stderr
    assert "dcp secrets new-key" in refused.stderr

    made = await asyncio.to_thread(_dcp, ["secrets", "new-key"], base_env())
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert Keyring.from_text(key).current.id == _key_id(key)
    assert key != (await asyncio.to_thread(_dcp, ["secrets", "new-key"], base_env())).stdout.strip()


def test_dcp_up_keeps_the_key_it_made_owner_only_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "dcp"
    first = with_secrets_key(Settings(data_dir=data_dir), allow_generated=True)
    path = data_dir / SECRETS_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_keys(path) == [first.secrets_key]
    assert with_secrets_key(Settings(data_dir=data_dir), allow_generated=True) == first
    # A configured key wins, and no file is made for it.
    configured = new_key()
    other_dir = tmp_path / "configured"
    chosen = with_secrets_key(Settings(data_dir=other_dir, secrets_key=configured), allow_generated=True)
    assert chosen.secrets_key == configured
    assert not (other_dir / SECRETS_KEY_FILE).exists()


async def test_rotating_the_data_dirs_key_keeps_the_old_one_behind_the_new(
    http: httpx.AsyncClient,
    make_account: MakeAccount,
    pool: asyncpg.Pool,
    settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> None:
    account = await make_account()
    service = await _new_service(http, account)
    key_file = tmp_path / SECRETS_KEY_FILE
    key_file.write_text((settings.secrets_key or "") + "\n")
    new = new_key()
    rotated = await asyncio.to_thread(
        _dcp,
        ["secrets", "rotate", "--data-dir", str(tmp_path)],
        {**base_env(), "DCP_DATABASE_URL": database_url},
        new,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1 of 1" in rotated.stdout
    assert read_keys(key_file) == [new, settings.secrets_key]
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert sealed_key_id(await _stored(pool, service["id"])) == _key_id(new)
    # What `dcp up` reads at its next start opens the rows.
    restarted = with_secrets_key(replace(settings, secrets_key=None, data_dir=tmp_path), allow_generated=True)
    assert restarted.secrets_key == new
    assert restarted.secrets_previous_keys == (settings.secrets_key,)
    async with _platform(restarted, pool) as client:
        assert await _secrets_shown(client, account, service["id"]) == (service["aws_secret_key"],) * 2
