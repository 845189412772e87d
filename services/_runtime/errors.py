"""Typed domain errors and their google.rpc.Status form.

Domain code raises these; one interceptor turns them into gRPC status with
ErrorInfo (domain "dcp") and, for bad input, BadRequest field violations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "dcp"


class DcpError(Exception):
    """Base of every error that reaches a caller on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.violations = list(violations)
        self.metadata = dict(metadata or {})
        self.received_status: status_pb2.Status | None = None
        """The status as another service gave it, when this error passes that service's answer on."""

    def to_status(self) -> status_pb2.Status:
        """The status, cut to fit in gRPC's trailing metadata (see `fitted_status`).

        A status passed on from another service was fitted there; fitting it
        again would count its "... and N more" entry as one more violation.
        """
        if self.received_status is not None:
            return self.received_status
        return fitted_status(self.code, self.message, self.reason, self.violations, self.metadata)


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    """The gRPC code of a google.rpc.Status."""
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


# A status travels twice in trailing metadata: its message percent-encoded in
# grpc-message (up to 3 bytes a byte) and the whole Status base64-encoded in
# grpc-status-details-bin (4 bytes per 3). gRPC refuses trailers over 8 KiB by
# default and then loses the code itself; these bounds keep both under 4 KiB.
MAX_MESSAGE_BYTES = 600
MAX_VIOLATIONS = 20
MAX_FIELD_CHARS = 200
MAX_DESCRIPTION_CHARS = 300
MAX_METADATA_ENTRIES = 20
MAX_METADATA_CHARS = 200
MAX_DETAILS_BYTES = 2048
MAX_INFO_BYTES = 1024
CUT_MARK = "…"
MORE_FIELD = "(more)"


def clip(text: str, limit: int) -> str:
    """`text` of at most `limit` characters, ending in "…" when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + CUT_MARK


def clip_bytes(text: str, limit: int) -> str:
    """`text` of at most `limit` UTF-8 bytes, ending in "…" when it was cut."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    mark = len(CUT_MARK.encode())
    return encoded[: limit - mark].decode("utf-8", "ignore") + CUT_MARK


def fitted_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    violations: Sequence[tuple[str, str]] = (),
    metadata: Mapping[str, str] | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status whose message and details are bounded, saying where they were cut.

    Violations past the first MAX_VIOLATIONS (or past what fits in
    MAX_DETAILS_BYTES) become one entry "... and N more".
    """
    entries = list((metadata or {}).items())
    info = error_details_pb2.ErrorInfo(reason=clip(reason, MAX_FIELD_CHARS), domain=ERROR_DOMAIN)
    kept = 0
    for key, value in entries[:MAX_METADATA_ENTRIES]:
        info.metadata[clip(key, MAX_FIELD_CHARS)] = clip(value, MAX_METADATA_CHARS)
        if info.ByteSize() > MAX_INFO_BYTES:
            del info.metadata[clip(key, MAX_FIELD_CHARS)]
            break
        kept += 1
    if kept < len(entries):
        info.metadata["truncated"] = f"... and {len(entries) - kept} more entries"
    fields = [
        error_details_pb2.BadRequest.FieldViolation(
            field=clip(field, MAX_FIELD_CHARS), description=clip(description, MAX_DESCRIPTION_CHARS)
        )
        for field, description in violations[:MAX_VIOLATIONS]
    ]
    budget = MAX_DETAILS_BYTES - info.ByteSize()
    while fields and sum(f.ByteSize() + 4 for f in fields) > budget - 64:
        fields.pop()
    if len(fields) < len(violations):
        fields.append(
            error_details_pb2.BadRequest.FieldViolation(
                field=MORE_FIELD, description=f"... and {len(violations) - len(fields)} more"
            )
        )
    packed: list[any_pb2.Any] = []
    for detail in (info, error_details_pb2.BadRequest(field_violations=fields) if fields else None):
        if detail is not None:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
    return status_pb2.Status(code=_CODE_NUMBERS[code], message=clip_bytes(message, MAX_MESSAGE_BYTES), details=packed)


class InvalidArgument(DcpError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_FIELD"

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", violations=[(field, description)])


class NotFound(DcpError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DcpError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DcpError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(DcpError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(DcpError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Aborted(DcpError):
    code = grpc.StatusCode.ABORTED
    reason = "CONFLICT_RETRY"


class ResourceExhausted(DcpError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DcpError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND


def from_database_error(error: BaseException) -> DcpError | None:
    """Maps a database error by its type (its SQLSTATE class), never by its text.

    A database that cannot be reached, went away mid-statement, is starting or
    shutting down, or did not answer in time is UNAVAILABLE: the request can be
    retried as it is once the database is back.
    """
    if isinstance(error, asyncpg.PostgresError):
        if isinstance(error, asyncpg.UniqueViolationError):
            return AlreadyExists("a resource with these unique fields already exists")
        if isinstance(error, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
            return Aborted("a concurrent change got in the way; retry the request")
        if isinstance(error, asyncpg.ForeignKeyViolationError):
            return FailedPrecondition("a referenced resource does not exist")
        if isinstance(error, asyncpg.QueryCanceledError):
            # statement_timeout: the database is too slow to answer now.
            return Unavailable(DATABASE_TIMED_OUT)
        if isinstance(error, _UNREACHABLE_SQLSTATE_CLASSES):
            return Unavailable(DATABASE_UNREACHABLE)
        return None
    if is_connection_failure(error):
        return Unavailable(DATABASE_UNREACHABLE)
    return None


DATABASE_UNREACHABLE = "the database cannot be reached; retry later"
DATABASE_TIMED_OUT = "the database did not answer in time; retry later"

# Class 08 (connection exception), 57 (operator intervention: shutdown, crash,
# cannot connect now) and too many connections.
_UNREACHABLE_SQLSTATE_CLASSES = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


def is_connection_failure(error: BaseException) -> bool:
    """Whether `error` says a server could not be reached or answered too late, rather than refused a request.

    asyncpg raises a plain InterfaceError (never one of its subclasses, which
    are bad arguments) for a connection or pool that is closed, and an
    InternalClientError for a pooled connection the server ended while it was
    idle (its protocol state no longer matches).
    """
    return (
        isinstance(error, OSError | TimeoutError | asyncpg.InternalClientError) or type(error) is asyncpg.InterfaceError
    )
