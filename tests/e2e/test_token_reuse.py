"""A gateway reuses a verified token for at most a second: what that may and may not change.

Two gateway processes serve one platform: the test process's own (in the
session platform) and a `dcp serve gateway` beside it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from gateway.auth import REUSE_SECONDS
from services._runtime.caching import REFRESH_AHEAD
from tests.conftest import MakeAccount, RunningPlatform
from tests.e2e.processes import Running, base_env

WHOAMI = "/api/whoami"


@pytest.fixture
async def second_gateway(running: RunningPlatform) -> AsyncIterator[str]:
    env = {**base_env(), "DCP_SCHEMA_ADDRESS": running.grpc_address, "DCP_HTTP_PORT": "0"}
    process = Running(["serve", "gateway"], env)
    try:
        match = await asyncio.to_thread(process.wait_for, r"serving REST on (http://\S+)")
        yield match.group(1)
        assert process.stop() == 0, "".join(process.output)
    finally:
        process.kill()


async def test_a_revoked_token_stops_working_within_a_second_on_every_gateway(
    running: RunningPlatform, second_gateway: str, make_account: MakeAccount
) -> None:
    account = await make_account()
    token_id = int(account.token.rsplit(":", 1)[1])
    gateways = [
        httpx.AsyncClient(base_url=url, headers=account.headers, timeout=30)
        for url in (running.http_url, second_gateway)
    ]
    try:
        # Both gateways have verified the token and may now reuse that answer.
        for gateway in gateways:
            assert (await gateway.get(WHOAMI)).status_code == 200

        await running.parts.credentials.revoke_token(token_id)
        revoked_at = time.monotonic()
        answers: list[tuple[float, int, str]] = []
        while time.monotonic() < revoked_at + REUSE_SECONDS + 0.5:
            for gateway in gateways:
                sent_at = time.monotonic()
                response = await gateway.get(WHOAMI)
                answers.append((sent_at - revoked_at, response.status_code, response.json().get("code", "")))
    finally:
        for gateway in gateways:
            await gateway.aclose()

    late = [(status, code) for sent, status, code in answers if sent >= REUSE_SECONDS]
    assert late, "no request was sent after the reuse window"
    assert set(late) == {(403, "TOKEN_REVOKED")}, answers


def _authentications() -> float:
    # The session platform runs in this process, so its counters are this registry's.
    total = 0.0
    for line in generate_latest(REGISTRY).decode().splitlines():
        match = re.fullmatch(r"grpc_server_handled_total\{(.*)\} (\S+)", line)
        if match and {'grpc_method="Authenticate"', 'grpc_code="OK"'} <= set(match.group(1).split(",")):
            total += float(match.group(2))
    return total


async def test_a_steady_client_costs_about_one_verification_a_second(
    running: RunningPlatform, make_account: MakeAccount
) -> None:
    account = await make_account()
    async with httpx.AsyncClient(base_url=running.http_url, headers=account.headers, timeout=30) as http:
        before = _authentications()
        started = time.monotonic()
        for _ in range(5):
            answers = await asyncio.gather(*(http.get(WHOAMI) for _ in range(20)))
            assert {answer.status_code for answer in answers} == {200}
        elapsed = time.monotonic() - started
    verifications = _authentications() - before
    # 100 requests; the token is asked about once, then again each time an answer nears its end.
    assert 1 <= verifications <= elapsed / (REUSE_SECONDS * REFRESH_AHEAD) + 1, (verifications, elapsed)
