"""Authenticating a REST request once, at the edge."""

from __future__ import annotations

from starlette.requests import Request

from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from gateway.errors import ApiError
from services._runtime.auth import token_from_headers
from services._runtime.errors import Unauthenticated
from services._runtime.identity import IDENTITY_METADATA_KEY
from services._runtime.interceptors import REQUEST_ID_METADATA_KEY, safe_request_id

Metadata = tuple[tuple[str, str], ...]


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id when it is safe to pass on (see `safe_request_id`), else a fresh one."""
    return safe_request_id(request.headers.get("x-request-id"))


async def authenticate(
    request: Request, auth: schema_service_pb2_grpc.AuthServiceAsyncStub, request_id: str
) -> Metadata:
    """gRPC metadata carrying the caller's signed identity and the request id.

    Raises ApiError 401 without usable credentials; the AuthService's own
    errors (revoked, personal token) travel as RPC errors.
    """
    try:
        token = token_from_headers(list(request.headers.items()))
    except Unauthenticated as error:
        raise ApiError(401, error.message, code="UNAUTHENTICATED") from None
    if token is None:
        raise ApiError(
            401,
            "no credentials: send 'Token: <classic token>' or 'Authorization: Bearer <token>'",
            code="UNAUTHENTICATED",
        )
    response = await auth.Authenticate(
        schema_service_pb2.AuthenticateRequest(token=token), metadata=((REQUEST_ID_METADATA_KEY, request_id),)
    )
    return ((IDENTITY_METADATA_KEY, response.assertion), (REQUEST_ID_METADATA_KEY, request_id))
