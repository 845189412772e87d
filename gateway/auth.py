"""Authenticating a REST request once, at the edge.

A token verified by the AuthService is reused by this gateway process for at
most `REUSE_SECONDS`, so that a client's steady stream of requests costs about
one verification a second instead of one each (asked again shortly before the
answer runs out, so that no request waits for it). That bound is the promise
about revocation: a revoked token stops working on every gateway within it. The
reuse never outlasts what the AuthService says the answer is good for (an
OAuth 2.0 access token's expiry, the assertion's own), and refusals are never
reused: a token issued a moment ago works at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from starlette.requests import Request

from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from gateway.errors import ApiError
from services._runtime.auth import token_from_headers
from services._runtime.caching import REFRESH_AHEAD, Fetches, joined
from services._runtime.errors import Unauthenticated
from services._runtime.identity import IDENTITY_METADATA_KEY
from services._runtime.interceptors import REQUEST_ID_METADATA_KEY, safe_request_id

Metadata = tuple[tuple[str, str], ...]

REUSE_SECONDS = 1.0
"""How long a verified token is reused: a revoked token stops working on every gateway within this."""
_REUSED_TOKENS_LIMIT = 10_000


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id when it is safe to pass on (see `safe_request_id`), else a fresh one."""
    return safe_request_id(request.headers.get("x-request-id"))


@dataclass(frozen=True)
class Caller:
    """An authenticated request's caller: its account, and the metadata every RPC made for it carries."""

    account_id: int
    metadata: Metadata


@dataclass(frozen=True)
class _Verified:
    account_id: int
    assertion: str
    reusable_until: float
    """On the monotonic clock, as is `ask_again_after`."""
    ask_again_after: float


class Authenticator:
    """Turns a request's credentials into a `Caller`, asking the AuthService at most once a second per token."""

    def __init__(
        self,
        auth: schema_service_pb2_grpc.AuthServiceAsyncStub,
        *,
        reuse_seconds: float = REUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = auth
        self._reuse_seconds = reuse_seconds
        self._clock = clock
        # Keyed by the token's digest, so that this process's memory holds no usable token.
        self._verified: dict[bytes, _Verified] = {}
        self._asking: Fetches[bytes, _Verified] = Fetches()

    async def caller(self, request: Request, request_id: str) -> Caller:
        """Raises ApiError 401 without usable credentials; the AuthService's own
        errors (unknown, revoked, personal token) travel as RPC errors."""
        try:
            token = token_from_headers(request.headers.items())
        except Unauthenticated as error:
            raise ApiError(401, error.message, code="UNAUTHENTICATED") from None
        if token is None:
            raise ApiError(
                401,
                "no credentials: send 'Token: <classic token>' or 'Authorization: Bearer <token>'",
                code="UNAUTHENTICATED",
            )
        verified = await self._verify(token, request_id)
        return Caller(
            verified.account_id,
            ((IDENTITY_METADATA_KEY, verified.assertion), (REQUEST_ID_METADATA_KEY, request_id)),
        )

    async def _verify(self, token: str, request_id: str) -> _Verified:
        key = hashlib.sha256(token.encode()).digest()
        verified = self._verified.get(key)
        now = self._clock()
        if verified is not None and verified.reusable_until > now:
            if verified.ask_again_after <= now and not self._asking.running(key):
                # Asked again while the answer still serves, so a steady client never waits for it,
                # and a revoked token is dropped as soon as that answer comes.
                self._start_asking(key, token, request_id)
            return verified
        # Requests of one token that arrive together share one question.
        return await joined(self._asking.current(key) or self._start_asking(key, token, request_id))

    def _start_asking(self, key: bytes, token: str, request_id: str) -> asyncio.Future[_Verified]:
        return self._asking.start(key, self._ask(key, token, request_id))

    async def _ask(self, key: bytes, token: str, request_id: str) -> _Verified:
        asked_at = self._clock()
        try:
            response = await self._auth.Authenticate(
                schema_service_pb2.AuthenticateRequest(token=token), metadata=((REQUEST_ID_METADATA_KEY, request_id),)
            )
        except grpc.aio.AioRpcError:
            # Refused now (revoked, say): no earlier answer is reused any more.
            self._verified.pop(key, None)
            raise
        # Counted from before the question: the answer may already be that old.
        reusable_for = min(self._reuse_seconds, response.valid_for.ToTimedelta().total_seconds())
        verified = _Verified(
            account_id=response.identity.account_id,
            assertion=response.assertion,
            reusable_until=asked_at + reusable_for,
            ask_again_after=asked_at + reusable_for * REFRESH_AHEAD,
        )
        if len(self._verified) >= _REUSED_TOKENS_LIMIT:
            self._drop_stale()
        self._verified[key] = verified
        return verified

    def _drop_stale(self) -> None:
        now = self._clock()
        for key in [key for key, verified in self._verified.items() if verified.reusable_until <= now]:
            del self._verified[key]
        if len(self._verified) >= _REUSED_TOKENS_LIMIT:
            # More live tokens than the limit: the oldest half is verified again when next seen.
            for key in list(self._verified)[: _REUSED_TOKENS_LIMIT // 2]:
                del self._verified[key]
