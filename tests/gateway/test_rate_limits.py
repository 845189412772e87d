"""Per-account rate limits at the gateway, in process and shared through a real Redis."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from dcp.common.v1 import error_reason_pb2
from gateway.app import GatewayClients, create_app
from gateway.ratelimit import (
    DEFAULT_KEY_PREFIX,
    LocalRateLimiter,
    RateLimiter,
    RatePolicy,
    RedisRateLimiter,
    open_redis,
)
from services.wiring.gateway import start_gateway
from tests.conftest import MakeAccount, RunningPlatform

SERVICES = "/experiment/v1/dcp_services"

# A limited gateway of its own: (requests per second, burst) -> client.
MakeGateway = Callable[[float, int], Awaitable[httpx.AsyncClient]]


def allowance(response: httpx.Response) -> tuple[int, int, int]:
    """RateLimit-Limit, -Remaining and -Reset, as integers."""
    return (
        int(response.headers["RateLimit-Limit"]),
        int(response.headers["RateLimit-Remaining"]),
        int(response.headers["RateLimit-Reset"]),
    )


def has_rate_limit_headers(response: httpx.Response) -> bool:
    return any(name.lower().startswith("ratelimit-") for name in response.headers)


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[Callable[[], Redis]]:
    """Opens Redis clients as gateway replicas do, each its own, closed after the test."""
    opened: list[Redis] = []

    def open_one() -> Redis:
        opened.append(open_redis(redis_url))
        return opened[-1]

    yield open_one
    for client in opened:
        await client.aclose()


@pytest.fixture
async def gateways(running: RunningPlatform) -> AsyncIterator[Callable[[RateLimiter], httpx.AsyncClient]]:
    """Gateway apps over the running services, each with the limiter it is given."""
    clients: list[httpx.AsyncClient] = []

    def make(limiter: RateLimiter) -> httpx.AsyncClient:
        app = create_app(GatewayClients.over(running.channel), limiter=limiter)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway"))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture(params=["in_process", "redis"])
def make_gateway(
    request: pytest.FixtureRequest,
    gateways: Callable[[RateLimiter], httpx.AsyncClient],
    redis_clients: Callable[[], Redis],
    redis_key_prefix: str,
) -> MakeGateway:
    """A new gateway replica each call; with Redis, replicas of one test share allowances as in production."""

    async def make(per_second: float, burst: int) -> httpx.AsyncClient:
        policy = RatePolicy(per_second, burst)
        if request.param == "redis":
            return gateways(RedisRateLimiter(redis_clients(), policy, key_prefix=redis_key_prefix))
        return gateways(LocalRateLimiter(policy))

    return make


async def test_headers_count_down_and_the_request_beyond_the_burst_changes_nothing(
    make_gateway: MakeGateway, make_account: MakeAccount, http: httpx.AsyncClient
) -> None:
    gateway = await make_gateway(0.2, 3)
    account = await make_account()

    seen = [allowance(await gateway.get(SERVICES, headers=account.headers)) for _ in range(3)]

    # A fresh allowance is full: the first request's refill is exactly one interval (5 s).
    assert seen[0] == (3, 2, 5)
    assert [remaining for _, remaining, _ in seen] == [2, 1, 0]
    assert all(5 * i < reset <= 5 * (i + 1) for i, (_, _, reset) in enumerate(seen))

    refused = await gateway.post(SERVICES, json={"name": "refused"}, headers=account.headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body["status"] == 429
    assert body["code"] == "RATE_LIMITED"
    assert "retry in" in body["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert allowance(refused)[:2] == (3, 0)
    assert refused.headers["x-request-id"]

    # The unlimited platform gateway shows the refused POST created nothing.
    listed = await http.get(SERVICES, headers=account.headers)
    assert listed.status_code == 200
    assert listed.json() == []


async def test_every_answer_to_an_authenticated_request_carries_the_headers(
    make_gateway: MakeGateway, make_account: MakeAccount
) -> None:
    gateway = await make_gateway(0.2, 5)
    account = await make_account()

    created = await gateway.post(SERVICES, json={"name": "s"}, headers=account.headers)
    missing = await gateway.get(f"{SERVICES}/999999", headers=account.headers)
    invalid = await gateway.post(SERVICES, json={"name": 5}, headers=account.headers)

    assert [created.status_code, missing.status_code, invalid.status_code] == [201, 404, 400]
    assert [allowance(r)[1] for r in (created, missing, invalid)] == [4, 3, 2]


async def test_a_request_that_fails_authentication_is_not_counted(
    make_gateway: MakeGateway, make_account: MakeAccount
) -> None:
    gateway = await make_gateway(0.2, 2)
    account = await make_account()

    for headers in ({}, {"Token": "not-a-token"}):
        rejected = await gateway.get(SERVICES, headers=headers)
        assert rejected.status_code == 401
        assert not has_rate_limit_headers(rejected)

    served = await gateway.get(SERVICES, headers=account.headers)
    assert allowance(served)[:2] == (2, 1)


async def test_the_allowance_refills_after_waiting(make_gateway: MakeGateway, make_account: MakeAccount) -> None:
    gateway = await make_gateway(1, 1)
    account = await make_account()

    first = await gateway.get(SERVICES, headers=account.headers)
    assert (first.status_code, allowance(first)) == (200, (1, 0, 1))
    refused = await gateway.get(SERVICES, headers=account.headers)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after == 1

    await asyncio.sleep(retry_after + 0.25)

    again = await gateway.get(SERVICES, headers=account.headers)
    assert again.status_code == 200
    assert allowance(again)[:2] == (1, 0)


async def test_accounts_are_limited_independently(make_gateway: MakeGateway, make_account: MakeAccount) -> None:
    gateway = await make_gateway(0.2, 1)
    busy, quiet = await make_account(), await make_account()

    assert (await gateway.get(SERVICES, headers=busy.headers)).status_code == 200
    assert (await gateway.get(SERVICES, headers=busy.headers)).status_code == 429

    served = await gateway.get(SERVICES, headers=quiet.headers)
    assert served.status_code == 200
    assert allowance(served)[:2] == (1, 0)


async def test_gateways_sharing_a_redis_share_each_account_allowance(
    gateways: Callable[[RateLimiter], httpx.AsyncClient],
    redis_clients: Callable[[], Redis],
    redis_key_prefix: str,
    make_account: MakeAccount,
) -> None:
    policy = RatePolicy(0.2, 3)
    first, second = (gateways(RedisRateLimiter(redis_clients(), policy, key_prefix=redis_key_prefix)) for _ in range(2))
    account = await make_account()

    remaining = []
    for gateway in (first, second, first):
        response = await gateway.get(SERVICES, headers=account.headers)
        assert response.status_code == 200
        remaining.append(allowance(response)[1])
    assert remaining == [2, 1, 0]
    assert (await second.get(SERVICES, headers=account.headers)).status_code == 429


async def test_an_account_key_in_redis_expires_when_its_allowance_is_full_again(
    gateways: Callable[[RateLimiter], httpx.AsyncClient],
    redis_clients: Callable[[], Redis],
    redis_key_prefix: str,
    make_account: MakeAccount,
) -> None:
    redis = redis_clients()
    gateway = gateways(RedisRateLimiter(redis, RatePolicy(0.2, 2), key_prefix=redis_key_prefix))
    account = await make_account()

    response = await gateway.get(SERVICES, headers=account.headers)

    assert allowance(response) == (2, 1, 5)
    assert 0 < await redis.pttl(f"{redis_key_prefix}{account.id}") <= 5000


async def test_an_unreachable_redis_serves_requests_unlimited_and_warns_once(
    gateways: Callable[[RateLimiter], httpx.AsyncClient], make_account: MakeAccount, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = open_redis(f"redis://127.0.0.1:{port}")
    try:
        gateway = gateways(RedisRateLimiter(redis, RatePolicy(0.2, 1)))
        account = await make_account()
        with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
            responses = [await gateway.get(SERVICES, headers=account.headers) for _ in range(3)]
    finally:
        await redis.aclose()

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert not any(has_rate_limit_headers(r) for r in responses)
    warnings = [r for r in caplog.records if r.name == "gateway.ratelimit"]
    assert len(warnings) == 1
    assert "Redis is unavailable" in warnings[0].getMessage()


async def test_the_platform_gateway_limits_as_its_settings_say(
    running: RunningPlatform, make_account: MakeAccount, http: httpx.AsyncClient
) -> None:
    settings = running.settings.with_overrides(rate_limit_per_second=0.2, rate_limit_burst=2)
    gateway = await start_gateway(settings, GatewayClients.over(running.channel))
    try:
        account = await make_account()
        async with httpx.AsyncClient(base_url=f"http://{gateway.host}:{gateway.port}", timeout=30) as client:
            statuses = [(await client.get(SERVICES, headers=account.headers)).status_code for _ in range(3)]
    finally:
        await gateway.stop()
    assert statuses == [200, 200, 429]

    # The session's gateway runs with the default rate of 0: no limit, and no headers.
    unlimited = await http.get(SERVICES, headers=account.headers)
    assert unlimited.status_code == 200
    assert not has_rate_limit_headers(unlimited)


async def test_the_platform_gateway_counts_in_redis_when_one_is_configured(
    running: RunningPlatform, make_account: MakeAccount, redis_url: str, redis_clients: Callable[[], Redis]
) -> None:
    settings = running.settings.with_overrides(rate_limit_per_second=1, rate_limit_burst=5, redis_url=redis_url)
    gateway = await start_gateway(settings, GatewayClients.over(running.channel))
    try:
        account = await make_account()
        async with httpx.AsyncClient(base_url=f"http://{gateway.host}:{gateway.port}", timeout=30) as client:
            response = await client.get(SERVICES, headers=account.headers)
    finally:
        await gateway.stop()

    # The key carries the production prefix, which another run sharing this
    # Redis may also count under: only what holds either way is asserted.
    assert response.status_code == 200
    limit, remaining, _ = allowance(response)
    assert limit == 5
    assert 0 <= remaining < 5
    assert 0 < await redis_clients().pttl(f"{DEFAULT_KEY_PREFIX}{account.id}") <= 5000


async def test_idle_accounts_leave_the_in_process_limiter_and_its_size_is_capped() -> None:
    idle = LocalRateLimiter(RatePolicy(1000, 1))
    await idle.take(1)
    await asyncio.sleep(0.01)
    await idle.take(2)
    assert len(idle) == 1

    capped = LocalRateLimiter(RatePolicy(0.2, 1), max_accounts=3)
    for account_id in range(1, 11):
        taken = await capped.take(account_id)
        assert taken.allowed
    assert len(capped) == 3
    # The most recent accounts are remembered; the least recent start afresh.
    assert not (await capped.take(10)).allowed
    assert (await capped.take(1)).allowed


def test_the_gateway_code_is_an_error_reason() -> None:
    assert error_reason_pb2.ErrorReason.Value("RATE_LIMITED") == 20
