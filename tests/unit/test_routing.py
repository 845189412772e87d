"""The gateway's indexed router answers every request exactly as Starlette's own router does."""

from __future__ import annotations

import itertools

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from gateway.routing import IndexedRouter, fixed_segments


def _named(name: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(f"{name} {sorted(request.path_params.items())}")

    return endpoint


def _routes() -> list[BaseRoute]:
    # Overlapping on purpose: a literal path before a parameter that would also take it,
    # one path with two methods on two routes, a partly literal segment, a mount, the root.
    return [
        Route("/", _named("root")),
        Route("/api/", _named("api index")),
        Route("/api/whoami", _named("whoami")),
        Route("/api/items/special", _named("special item")),
        Route("/api/items/{item_id}", _named("item")),
        Route("/api/items/{item_id}", _named("item change"), methods=["POST"]),
        Route("/api/items/{item_id}/parts/{part_id:int}", _named("part")),
        Route("/api/export-{export_id}", _named("export")),
        Route("/api/{kind}/summary", _named("summary")),
        Route("/experiment/v1/projects/{project_id}/audiences", _named("audiences"), methods=["GET", "POST"]),
        Route("/healthz", _named("healthz")),
        Mount("/console", routes=[Route("/", _named("console")), Route("/{page}", _named("console page"))]),
    ]


PATHS = [
    "/",
    "/api",
    "/api/",
    "/api/whoami",
    "/api/whoami/",
    "/api/items/special",
    "/api/items/7",
    "/api/items/7/",
    "/api/items/7/parts/3",
    "/api/items/7/parts/x",
    "/api/export-12",
    "/api/export-",
    "/api/items/summary",
    "/api/customers/summary",
    "/experiment/v1/projects/5/audiences",
    "/experiment/v1/projects/5/audiences/",
    "/experiment/v1/projects",
    "/healthz",
    "/healthz/",
    "/console",
    "/console/",
    "/console/tables",
    "/nowhere",
    "/api/nowhere/at/all",
    "//api/whoami",
]


async def _answers(router: Router) -> list[tuple[str, str, int, str, str]]:
    app = Starlette()
    app.router = router
    transport = httpx.ASGITransport(app=app)
    answers = []
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for path, method in itertools.product(PATHS, ("GET", "POST", "DELETE")):
            response = await client.request(method, path, follow_redirects=False)
            answers.append((method, path, response.status_code, response.text, response.headers.get("location", "")))
    return answers


@pytest.mark.asyncio
async def test_every_request_gets_the_answer_starlettes_router_gives() -> None:
    expected = await _answers(Router(_routes()))
    found = await _answers(IndexedRouter(_routes()))
    assert found == expected
    # The comparison covers every kind of answer, not only the easy one.
    statuses = {status for _, _, status, _, _ in expected}
    assert {200, 307, 404, 405} <= statuses


@pytest.mark.asyncio
async def test_a_route_added_after_the_router_was_made_is_found() -> None:
    router = IndexedRouter(_routes())
    app = Starlette()
    app.router = router
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        assert (await client.get("/api/whoami")).text == "whoami []"
        router.routes.append(Route("/api/late/{n}", _named("late")))
        assert (await client.get("/api/late/1")).text == "late [('n', '1')]"


def test_only_the_routes_a_path_could_match_are_tried() -> None:
    router = IndexedRouter(_routes())
    tried = [getattr(route, "path", "") for route in router.candidates("/api/items/7/parts/3")]
    # Under api only: the partly literal segment and the parameter first; then those fixing api/items.
    assert tried == [
        "/api/items/{item_id}",
        "/api/items/{item_id}",
        "/api/items/{item_id}/parts/{part_id:int}",
        "/api/export-{export_id}",
        "/api/{kind}/summary",
    ]
    assert [getattr(route, "path", "") for route in router.candidates("/elsewhere")] == []


@pytest.mark.parametrize(
    ("path_format", "segments"),
    [
        ("/", ("",)),
        ("/healthz", ("healthz",)),
        ("/api/", ("api", "")),
        ("/api/audiences/evaluate/{service_id}/{user}", ("api", "audiences", "evaluate")),
        ("/api/export-{export_id}", ("api",)),
        ("/{anything}", ()),
    ],
)
def test_a_route_is_filed_under_the_whole_segments_its_pattern_fixes(
    path_format: str, segments: tuple[str, ...]
) -> None:
    assert fixed_segments(Route(path_format, _named("x"))) == segments
