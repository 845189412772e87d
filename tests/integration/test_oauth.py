"""OAuth 2.0 access tokens from a configured issuer, verified by JWKS or a public key file."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from services._runtime.settings import OAuthSettings, Settings
from services.schema.credentials import Credentials
from services.wiring.keys import identity_signer
from services.wiring.suite import start_suite

ISSUER = "https://idp.example.test/"
AUDIENCE = "open-dcp"


@dataclass(frozen=True)
class Issuer:
    key: rsa.RSAPrivateKey
    kid: str

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "integration-1",
            "iat": now,
            "exp": now + 300,
            "scope": "dcp:read dcp:write",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer(key=_new_key(), kid="key-1")


@pytest.fixture(scope="module")
def jwks_url(issuer: Issuer) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": issuer.kid, "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class OAuthPlatform:
    http_url: str
    channel: grpc.aio.Channel
    credentials: Credentials


@pytest.fixture(scope="module")
async def oauth_platform(settings: Settings, pool: asyncpg.Pool, jwks_url: str) -> AsyncIterator[OAuthPlatform]:
    configured = settings.with_overrides(oauth=OAuthSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url))
    suite = await start_suite(configured, pool, identity_signer(configured, allow_generated=False))
    try:
        yield OAuthPlatform(suite.http_url, suite.channel, suite.schema.credentials)
    finally:
        await suite.stop(1)


async def _account(oauth_platform: OAuthPlatform) -> int:
    return (await oauth_platform.credentials.create_account("oauth")).id


async def test_a_valid_access_token_reads_and_writes(oauth_platform: OAuthPlatform, issuer: Issuer) -> None:
    account = await _account(oauth_platform)
    headers = {"Authorization": f"Bearer {issuer.token(account_id=account)}"}
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        created = await http.post("/experiment/v1/dcp_services", json={"name": "via oauth"}, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["account_id"] == account
        listed = await http.get("/experiment/v1/dcp_services", headers=headers)
        assert [s["name"] for s in listed.json()] == ["via oauth"]
        whoami = (await http.get("/api/whoami", headers=headers)).json()
        assert whoami == {
            "accountId": str(account),
            "accountName": "oauth",
            "scopes": ["read", "write"],
            "credentialKind": "oauth",
        }


async def test_scopes_decide_reads_and_writes(oauth_platform: OAuthPlatform, issuer: Issuer) -> None:
    account = await _account(oauth_platform)
    read_only = {"Authorization": f"Bearer {issuer.token(account_id=account, scope='dcp:read')}"}
    nothing = {"Authorization": f"Bearer {issuer.token(account_id=account, scope='profile email')}"}
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        assert (await http.get("/experiment/v1/dcp_services", headers=read_only)).status_code == 200
        refused = await http.post("/experiment/v1/dcp_services", json={"name": "x"}, headers=read_only)
        assert refused.status_code == 403
        assert refused.json()["code"] == "INSUFFICIENT_SCOPE"
        assert (await http.get("/experiment/v1/dcp_services", headers=nothing)).status_code == 403
        assert (await http.get("/experiment/v1/dcp_services", headers=read_only)).json() == []


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://elsewhere.example.test/"},
        {"aud": "someone-else"},
        {"exp": int(time.time()) - 3600},
        {"account_id": None},
        {"account_id": "not-a-number"},
        {"account_id": 987654321},
        {"account_id": True},
        {"account_id": [1]},
        {"account_id": 2**70},
        {"account_id": 0},
        {"account_id": -1},
    ],
    ids=[
        "wrong issuer",
        "wrong audience",
        "expired",
        "no account claim",
        "bad account claim",
        "unknown account",
        "boolean account claim",
        "list account claim",
        "account claim beyond 64 bits",
        "account claim 0",
        "negative account claim",
    ],
)
async def test_tokens_that_do_not_hold_are_401(
    oauth_platform: OAuthPlatform, issuer: Issuer, claims: dict[str, Any]
) -> None:
    account = await _account(oauth_platform)
    token = issuer.token(**{"account_id": account, **claims})
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        response = await http.get("/experiment/v1/dcp_services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "spelling",
    [str, float, lambda a: a + 0.9],
    ids=["as a string", "as a float", "with a fraction"],
)
async def test_an_account_claim_must_be_a_json_integer(
    oauth_platform: OAuthPlatform, issuer: Issuer, spelling: Callable[[int], object]
) -> None:
    # Each spelling names a real account once truncated or parsed; none may be taken as it.
    account = await _account(oauth_platform)
    token = issuer.token(account_id=spelling(account))
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        response = await http.get("/experiment/v1/dcp_services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "UNAUTHENTICATED"
    assert "account_id" in response.json()["message"]


async def test_a_token_signed_by_another_key_is_401(oauth_platform: OAuthPlatform, issuer: Issuer) -> None:
    account = await _account(oauth_platform)
    forged = Issuer(key=_new_key(), kid=issuer.kid).token(account_id=account)
    unknown_kid = Issuer(key=_new_key(), kid="key-2").token(account_id=account)
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        for token in (forged, unknown_kid):
            response = await http.get("/experiment/v1/dcp_services", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401


async def test_internal_grpc_callers_may_send_the_access_token(oauth_platform: OAuthPlatform, issuer: Issuer) -> None:
    account = await _account(oauth_platform)
    schema = schema_service_pb2_grpc.SchemaServiceStub(oauth_platform.channel)
    identity = await schema.WhoAmI(
        schema_service_pb2.WhoAmIRequest(),
        metadata=(("authorization", f"Bearer {issuer.token(account_id=account)}"),),
    )
    assert identity.account_id == account
    assert identity.credential_kind == "oauth"


async def test_a_public_key_file_works_instead_of_jwks(
    settings: Settings, pool: asyncpg.Pool, issuer: Issuer, tmp_path: Path
) -> None:
    pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "issuer.pem"
    key_file.write_bytes(pem)
    configured = settings.with_overrides(
        oauth=OAuthSettings(issuer=ISSUER, audience=AUDIENCE, public_key_file=key_file)
    )
    suite = await start_suite(configured, pool, identity_signer(configured, allow_generated=False))
    try:
        account = (await suite.schema.credentials.create_account("pem")).id
        async with httpx.AsyncClient(base_url=suite.http_url) as http:
            good = await http.get(
                "/experiment/v1/dcp_services", headers={"Authorization": f"Bearer {issuer.token(account_id=account)}"}
            )
            assert good.status_code == 200
            forged = Issuer(key=_new_key(), kid="x").token(account_id=account)
            bad = await http.get("/experiment/v1/dcp_services", headers={"Authorization": f"Bearer {forged}"})
            assert bad.status_code == 401
    finally:
        await suite.stop(1)


async def test_a_read_only_token_may_count_and_evaluate_an_unsaved_audience(
    oauth_platform: OAuthPlatform, issuer: Issuer
) -> None:
    account = await _account(oauth_platform)
    writer = {"Authorization": f"Bearer {issuer.token(account_id=account)}"}
    reader = {"Authorization": f"Bearer {issuer.token(account_id=account, scope='dcp:read')}"}
    async with httpx.AsyncClient(base_url=oauth_platform.http_url) as http:
        service = (await http.post("/experiment/v1/dcp_services", json={"name": "s"}, headers=writer)).json()
        project = (
            await http.post(
                "/experiment/v1/projects", json={"project_name": "p", "dcp_service_id": service["id"]}, headers=writer
            )
        ).json()
        counted = await http.post(
            f"/experiment/v1/projects/{project['id']}/audiences/count", json={"conditions": []}, headers=reader
        )
        assert (counted.status_code, counted.json()) == (200, {"count": 0})
        evaluated = await http.post(
            f"/api/audiences/evaluate/{service['id']}/u1",
            json={"project_id": project["id"], "conditions": []},
            headers=reader,
        )
        assert evaluated.status_code == 200, evaluated.text
        assert [a["audienceId"] for a in evaluated.json()["audiences"]] == [None]
        saving = await http.post(
            f"/experiment/v1/projects/{project['id']}/audiences", json={"name": "a"}, headers=reader
        )
        assert saving.status_code == 403


async def test_an_access_token_stops_working_when_it_expires_though_the_gateway_just_reused_it(
    settings: Settings, pool: asyncpg.Pool, issuer: Issuer, jwks_url: str
) -> None:
    configured = settings.with_overrides(
        oauth=OAuthSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, leeway_seconds=0)
    )
    suite = await start_suite(configured, pool, identity_signer(configured, allow_generated=False))
    try:
        account = (await suite.schema.credentials.create_account("expiring")).id
        expires_at = int(time.time()) + 2
        headers = {"Authorization": f"Bearer {issuer.token(account_id=account, exp=expires_at)}"}
        async with httpx.AsyncClient(base_url=suite.http_url, headers=headers) as http:
            # Requests right up to the expiry: a gateway reusing its answer for a full second
            # after the last of them would still be serving the token after it expired.
            while time.time() < expires_at - 0.2:
                assert (await http.get("/api/whoami")).status_code == 200
            await asyncio.sleep(expires_at - time.time() + 0.05)
            expired = await http.get("/api/whoami")
        assert expired.status_code == 401, expired.text
        assert "expired" in expired.json()["message"]
    finally:
        await suite.stop(1)
