"""gRPC status to HTTP: one table, and the v1 JSON error body."""

from __future__ import annotations

from typing import Any

import grpc

from gateway.responses import JSONResponse
from services._runtime.calls import received

# google/rpc/code.proto's HTTP mapping; FAILED_PRECONDITION is 400 there, which
# is also what v1 answers for a request that breaks a rule (e.g. a second
# DCP service).
HTTP_STATUS_BY_GRPC_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_DEFAULT_REASON_BY_STATUS = {
    400: "INVALID_FIELD",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT_RETRY",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


# What a 503 asks a client to wait before it tries again: long enough for a
# database restart or a pod to come back, short enough to notice recovery soon.
RETRY_AFTER_SECONDS = 2


class ApiError(Exception):
    """An error answered by the gateway itself, before or after an RPC."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        errors: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _DEFAULT_REASON_BY_STATUS.get(status, "INTERNAL")
        self.errors = errors or []
        self.headers = headers or {}
        if status == 503 and "Retry-After" not in self.headers:
            self.headers = {**self.headers, "Retry-After": str(RETRY_AFTER_SECONDS)}

    @classmethod
    def field(cls, field: str, message: str) -> ApiError:
        return cls(400, f"{field}: {message}", code="INVALID_FIELD", errors=[(field, message)])

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = [{"field": field, "message": message} for field, message in self.errors]
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def from_rpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    """Translates an RPC failure, keeping its reason and field violations.

    Details that cannot be read (a status whose details do not match the call,
    or that do not decode) are left out rather than failing the answer.
    """
    code = error.code()
    status = HTTP_STATUS_BY_GRPC_CODE.get(code, 500)
    answer = received(error)
    message = (answer.status.message if answer.status is not None else "") or error.details() or code.name.lower()
    reason = answer.reason
    violations = answer.violations
    if code is grpc.StatusCode.UNAVAILABLE and reason is None:
        message = "a backing service is unavailable; retry later"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason is None:
        # No service of ours refuses with RESOURCE_EXHAUSTED without a reason: this is gRPC's own
        # limit (e.g. an answer's metadata too large), a fault of ours and not the caller's rate.
        return ApiError(502, "a backing service's answer could not be passed on", code="BAD_GATEWAY")
    return ApiError(status, message, code=reason, errors=violations)
