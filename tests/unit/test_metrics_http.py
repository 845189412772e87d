"""The REST metrics' labels and the `/metrics` port of a `dcp serve` process, without a platform."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services._runtime import metrics


def _requests(method: str, route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "http_server_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


async def _item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


async def _broken(request: Request) -> Response:
    raise RuntimeError("a bug")


class _ForgetsRoute:
    """Leaves the scope as older Starlette releases do: without the route it matched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            scope.pop("route", None)


def _app(*, older_starlette: bool = False) -> Starlette:
    return Starlette(
        routes=[Route("/items/{item_id}", _item), Route("/broken", _broken)],
        middleware=[Middleware(metrics.ObservedHttp), *([Middleware(_ForgetsRoute)] if older_starlette else [])],
    )


@pytest.mark.parametrize("older_starlette", [False, True], ids=["route in scope", "older starlette"])
async def test_requests_are_counted_by_route_template_never_by_raw_path(older_starlette: bool) -> None:
    before = _requests("GET", "/items/{item_id}", "200")
    transport = httpx.ASGITransport(app=_app(older_starlette=older_starlette))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for item in ("a1", "b2", "c3"):
            assert (await client.get(f"/items/{item}")).status_code == 200
    assert _requests("GET", "/items/{item_id}", "200") == before + 3
    exposition = metrics.exposition().decode()
    assert 'route="/items/{item_id}"' in exposition
    assert "/items/a1" not in exposition


async def _file(request: Request) -> Response:
    return PlainTextResponse(request.path_params["name"])


@pytest.mark.parametrize("older_starlette", [False, True], ids=["route in scope", "older starlette"])
async def test_the_route_label_is_the_template_without_converters(older_starlette: bool) -> None:
    # The README documents `/api/customer_profile/{service_id}/{table_id}/{customer_id}`; the route
    # is declared with `{customer_id:path}` so that ids may hold slashes.
    app = Starlette(
        routes=[Route("/files/{service_id:int}/{name:path}", _file)],
        middleware=[Middleware(metrics.ObservedHttp), *([Middleware(_ForgetsRoute)] if older_starlette else [])],
    )
    before = _requests("GET", "/files/{service_id}/{name}", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        answer = await client.get("/files/7/a/b.csv")
        assert answer.status_code == 200
        assert answer.text == "a/b.csv"
    assert _requests("GET", "/files/{service_id}/{name}", "200") == before + 1
    assert ":path}" not in metrics.exposition().decode()


@pytest.mark.parametrize("older_starlette", [False, True], ids=["route in scope", "older starlette"])
async def test_unknown_paths_methods_and_crashes_get_fixed_labels(older_starlette: bool) -> None:
    unmatched = _requests("GET", metrics.UNMATCHED_ROUTE, "404")
    other = _requests("OTHER", "/items/{item_id}", "405")
    crashed = _requests("GET", "/broken", "500")
    transport = httpx.ASGITransport(app=_app(older_starlette=older_starlette), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/no/such/path/42")).status_code == 404
        assert (await client.request("BREW", "/items/x")).status_code == 405
        assert (await client.get("/broken")).status_code == 500
    assert _requests("GET", metrics.UNMATCHED_ROUTE, "404") == unmatched + 1
    assert _requests("OTHER", "/items/{item_id}", "405") == other + 1
    assert _requests("GET", "/broken", "500") == crashed + 1
    assert "/no/such/path/42" not in metrics.exposition().decode()


async def test_a_metrics_port_serves_the_registry_and_nothing_else() -> None:
    async with metrics.serving("127.0.0.1", 0) as port:
        assert port is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")
            assert "# TYPE grpc_server_handled_total counter" in scraped.text
            assert "# TYPE dcp_db_pool_in_use gauge" in scraped.text
            assert (await client.get("/metrics?x=1")).status_code == 200
            missing = await client.get("/api/whoami")
            assert missing.status_code == 404
            assert "/metrics" in missing.text
    # Stopped with its owner: the port no longer answers.
    async with httpx.AsyncClient() as client:
        try:
            await client.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the metrics port still answers after its block ended")


async def test_without_a_metrics_port_no_server_starts() -> None:
    async with metrics.serving("127.0.0.1", None) as port:
        assert port is None
