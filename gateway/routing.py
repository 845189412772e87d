"""Finding a request's route without trying every route of the v1 surface in turn.

Starlette's router matches each route's regular expression in order until one
fits; with some sixty routes, a call near the end of the list (the audience
calls, say) paid for forty failed matches before its own. `IndexedRouter`
files each route under the path segments its pattern fixes (`/api/audiences/
evaluate/{service_id}/...` under api → audiences → evaluate) and tries, in the
original order, only the routes filed under a prefix of the request's
segments: no other route's pattern can match it. What it then does is
Starlette's: the first full match is served, else the first partial one (405),
and a request no candidate takes gets Starlette's own full pass, so trailing
slash redirects and 404s are exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send


def fixed_segments(route: BaseRoute) -> tuple[str, ...] | None:
    """The whole path segments every path the route matches starts with; None when it fixes none.

    `/api/audiences/evaluate/{service_id}` fixes ("api", "audiences", "evaluate");
    `/healthz` fixes ("healthz",); a segment only partly literal (`/export-{id}`)
    fixes nothing from there on.
    """
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str) or not path_format.startswith("/"):
        return None
    literal, brace, _ = path_format.partition("{")
    pieces = literal.split("/")[1:]
    if brace:
        # The piece before the brace is part of a segment the parameter completes.
        pieces = pieces[:-1]
    return tuple(pieces)


class _Node:
    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.routes: list[tuple[int, BaseRoute]] = []


class IndexedRouter(Router):
    """A Starlette router that tries only the routes a request's path could match."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        super().__init__(list(routes))
        self._indexed: tuple[BaseRoute, ...] = ()
        self._root = _Node()

    def _index(self) -> _Node:
        # Routes appended after construction (Starlette's add_route) are indexed on the next request.
        if len(self.routes) != len(self._indexed):
            root = _Node()
            for position, route in enumerate(self.routes):
                node = root
                for segment in fixed_segments(route) or ():
                    node = node.children.setdefault(segment, _Node())
                node.routes.append((position, route))
            self._root, self._indexed = root, tuple(self.routes)
        return self._root

    def candidates(self, route_path: str) -> list[BaseRoute]:
        """The routes that could match `route_path`, in the order they were given."""
        node = self._index()
        found = list(node.routes)
        for segment in route_path.split("/")[1:]:
            child = node.children.get(segment)
            if child is None:
                break
            node = child
            found.extend(node.routes)
        found.sort(key=_position)
        return [route for _, route in found]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().app(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = self
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.candidates(get_route_path(scope)):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        if partial is not None:
            # A route takes the path but not the method: Starlette answers 405 through it.
            route, child_scope = partial
            scope["route"] = route
            scope.update(child_scope)
            await route.handle(scope, receive, send)
            return
        await super().app(scope, receive, send)


def _position(entry: tuple[int, BaseRoute]) -> int:
    return entry[0]
