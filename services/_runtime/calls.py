"""Calling another service: its answer passed on as this service's own.

A downstream refusal reaches this service's caller as the same typed error
this service would raise itself, with its reason, metadata and field
violations; the status received is passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services._runtime.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    DcpError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    status_code,
)

# Codes that refuse the request itself: the caller's to read, so they pass on whole.
_REFUSALS: dict[grpc.StatusCode, type[DcpError]] = {
    refusal.code: refusal
    for refusal in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, PermissionDenied, Unauthenticated)
}

# Codes that say the service could not be reached or answered too late.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class Received:
    """What a failed call's rich status (`grpc-status-details-bin`) says, as far as it decodes."""

    status: status_pb2.Status | None
    reason: str | None = None
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)


def received(error: grpc.aio.AioRpcError) -> Received:
    """The rich status of a failed call.

    Details that cannot be read (a status that does not match the call, or
    does not decode) are left out; the code and message still say what happened.
    """
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, DecodeError):
        return Received(status=None)
    if status is None:
        return Received(status=None)
    return _read(status)


def _read(status: status_pb2.Status) -> Received:
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        try:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                unpacked = error_details_pb2.ErrorInfo()
                detail.Unpack(unpacked)
                info = unpacked
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations = [(v.field, v.description) for v in bad_request.field_violations]
        except DecodeError:
            continue
    if info is None:
        return Received(status=status, violations=violations)
    return Received(
        status=status, reason=info.reason, domain=info.domain, metadata=dict(info.metadata), violations=violations
    )


def relayed(
    error: grpc.aio.AioRpcError,
    service: str,
    *,
    instead: Mapping[grpc.StatusCode, DcpError] | None = None,
    otherwise: type[DcpError] = DcpError,
) -> DcpError:
    """Another service's answer as this one's caller should get it.

    A refusal (bad input, not found, a broken rule, missing rights) passes on
    whole: code, message, reason, metadata and field violations, and the status
    as received. An unreachable service is UNAVAILABLE. `instead` names the
    error to raise for a code whose meaning the caller knows better (a NOT_FOUND
    of an id the caller sent). Any other code is a fault here, raised as
    `otherwise` (Unavailable where retrying later is the right answer).
    """
    return _passed_on(
        error.code(),
        error.details(),
        lambda: received(error),
        service=service,
        instead=instead,
        otherwise=otherwise,
    )


def relayed_status(
    status: status_pb2.Status,
    service: str,
    *,
    instead: Mapping[grpc.StatusCode, DcpError] | None = None,
    otherwise: type[DcpError] = DcpError,
) -> DcpError:
    """A status that a service in this process answered with, as `relayed` hands a remote one on."""
    return _passed_on(
        status_code(status),
        status.message,
        lambda: _read(status),
        service=service,
        instead=instead,
        otherwise=otherwise,
    )


def _passed_on(
    code: grpc.StatusCode,
    details: str | None,
    answer_of: Callable[[], Received],
    *,
    service: str,
    instead: Mapping[grpc.StatusCode, DcpError] | None,
    otherwise: type[DcpError],
) -> DcpError:
    if instead and code in instead:
        return instead[code]
    if code in UNREACHABLE:
        return Unavailable(f"the {service} service is unavailable; retry later")
    refusal = _REFUSALS.get(code)
    if refusal is None:
        hint = "; retry later" if issubclass(otherwise, Unavailable) else ""
        return otherwise(f"the {service} service answered {code.name}: {details}{hint}")
    answer = answer_of()
    ours = answer.domain == ERROR_DOMAIN
    passed_on = refusal(
        details or code.name.lower(),
        reason=answer.reason if ours else None,
        violations=answer.violations,
        metadata=answer.metadata if ours else None,
    )
    passed_on.received_status = answer.status
    return passed_on
