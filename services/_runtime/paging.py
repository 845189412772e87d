"""Opaque page tokens for keyset pagination (AIP-158)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from services._runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    """Where a page starts and how long it is."""

    after_id: int
    size: int


def _fingerprint(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:12]


def read_page(
    page_size: int,
    page_token: str,
    *,
    scope: str,
    default_size: int = DEFAULT_PAGE_SIZE,
    max_size: int = MAX_PAGE_SIZE,
) -> Page:
    """Decodes a request's page; `scope` ties the token to the same query."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or default_size, max_size)
    if not page_token:
        return Page(after_id=0, size=size)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        after_id = int(decoded["a"])
        fingerprint = str(decoded["q"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this API issued") from None
    if fingerprint != _fingerprint(scope):
        raise InvalidArgument.field("page_token", "was issued for a different query")
    return Page(after_id=after_id, size=size)


def next_token(last_ids: list[int], page: Page, *, scope: str) -> str:
    """The token of the page after one holding `last_ids` (empty at the end).

    Repositories fetch `page.size + 1` rows; a full extra row means more follow.
    """
    if len(last_ids) <= page.size:
        return ""
    payload = {"a": last_ids[page.size - 1], "q": _fingerprint(scope)}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@dataclass(frozen=True)
class KeyPage:
    """A page of a listing ordered by a text key rather than an id."""

    after: str | None
    size: int


def read_key_page(
    page_size: int,
    page_token: str,
    *,
    scope: str,
    default_size: int = DEFAULT_PAGE_SIZE,
    max_size: int = MAX_PAGE_SIZE,
) -> KeyPage:
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or default_size, max_size)
    if not page_token:
        return KeyPage(after=None, size=size)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        after = decoded["k"]
        fingerprint = str(decoded["q"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this API issued") from None
    if not isinstance(after, str) or fingerprint != _fingerprint(scope):
        raise InvalidArgument.field("page_token", "was issued for a different query")
    return KeyPage(after=after, size=size)


def next_key_token(keys: list[str], page: KeyPage, *, scope: str) -> str:
    """The token of the page after one holding `keys`; callers fetch `page.size + 1` keys."""
    if len(keys) <= page.size:
        return ""
    payload = {"k": keys[page.size - 1], "q": _fingerprint(scope)}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


class _Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=_Paged)


async def all_pages(fetch: Callable[[str], Awaitable[PageT]]) -> AsyncIterator[PageT]:
    """Every page of a listing, from the first on: `fetch` asks for the page a token names ("" for the first)."""
    token = ""
    while True:
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
