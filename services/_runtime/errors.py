"""Typed domain errors and their google.rpc.Status form.

Domain code raises these; one interceptor turns them into gRPC status with
ErrorInfo (domain "dcp") and, for bad input, BadRequest field violations.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    def to_status(self) -> status_pb2.Status:
        details = [error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)]
        packed: list[any_pb2.Any] = []
        for detail in details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                    for field, description in self.violations
                ]
            )
            item = any_pb2.Any()
            item.Pack(bad_request)
            packed.append(item)
        return status_pb2.Status(code=_CODE_NUMBERS[self.code], message=self.message, details=packed)


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
