"""The one place where RPC calls get their identity and errors their status."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from services._runtime import identity as identity_context
from services._runtime import metrics, tracing
from services._runtime.auth import CallerResolver
from services._runtime.errors import DcpError, Unavailable, from_database_error
from services._runtime.grpc_types import ServicerContext as Context
from services._runtime.logs import RepeatedFailures, failure_key
from services._runtime.s3 import STORE_UNREACHABLE, store_unreachable

logger = logging.getLogger(__name__)

REQUEST_ID_METADATA_KEY = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("dcp_request_id", default="-")

MAX_REQUEST_ID_LENGTH = 128
# Ids go into logs, metadata and response headers: letters, digits and a few
# separators cannot break any of them (no spaces, quotes, controls or non-ASCII).
_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@+=/-]{{0,{MAX_REQUEST_ID_LENGTH - 1}}}")


def safe_request_id(supplied: str | bytes | None) -> str:
    """A caller's request id if it is short and made of safe characters, else a fresh one."""
    if isinstance(supplied, str) and _SAFE_REQUEST_ID.fullmatch(supplied):
        return supplied
    # 128 random bits, as a version-4 UUID's hex but without building a UUID object: every request without
    # an id of its own makes one, and the object costs five times as much as the random bytes.
    return os.urandom(16).hex()


def outgoing_metadata(
    signer: identity_context.AssertionSigner, caller: identity_context.Identity
) -> tuple[tuple[str, str], ...]:
    """Metadata of a call to another service on `caller`'s behalf: its signed identity and this request's id."""
    return (
        (identity_context.IDENTITY_METADATA_KEY, signer.sign_cached(caller)),
        (REQUEST_ID_METADATA_KEY, request_id.get()),
    )


# Health checks and reflection are for infrastructure, and credential
# verification cannot demand credentials of its own.
_INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_ANONYMOUS_PREFIXES = ("/dcp.schema.v1.AuthService/",)


HandledReport = Callable[[str, str, str, float], None]
"""Told (grpc type, method path, status code name, seconds) of each finished call."""


class CallScope:
    """One call's handling on the serving side, whether it came over gRPC or from this process:
    request id, caller, trace, the status its failure maps to, and its metrics."""

    def __init__(
        self,
        resolver: CallerResolver,
        method: str,
        grpc_type: str,
        *,
        needs_identity: bool,
        on_handled: HandledReport | None = None,
    ) -> None:
        self._resolver = resolver
        self._method = method
        self._grpc_type = grpc_type
        self._needs_identity = needs_identity
        self._on_handled = on_handled or metrics.grpc_handled
        self._started = time.perf_counter()
        self._span: tracing.GrpcServerSpan | None = None

    async def enter(self, metadata: Sequence[tuple[str, str | bytes]]) -> list[contextvars.Token[Any]]:
        """Binds the call's request id, span and verified caller; the tokens undo it (see `leave`)."""
        rid = safe_request_id(next((v for k, v in metadata if k == REQUEST_ID_METADATA_KEY), None))
        tokens: list[contextvars.Token[Any]] = [request_id.set(rid)]
        self._span = tracing.grpc_server_span(self._method, metadata, rid)
        if self._span is not None:
            tokens.append(self._span.attach())
        if self._needs_identity:
            try:
                tokens.append(identity_context.bind(await self._resolver.resolve(metadata)))
            except BaseException:
                leave(tokens)
                raise
        return tokens

    def mapped(self, error: Exception) -> DcpError | None:
        """The typed error a failure reaches the caller as (logging the unexpected), or None for an abort."""
        return _as_dcp_error(error, self._method)

    def finish(self, code: grpc.StatusCode) -> None:
        """Records the call under the status its caller receives."""
        self._on_handled(self._grpc_type, self._method, code.name, time.perf_counter() - self._started)
        if self._span is not None:
            self._span.finish(code)


def ended_code(failure: BaseException | None) -> grpc.StatusCode:
    """The code of a call that ended with `failure` (None: success) without a mapped status."""
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, (asyncio.CancelledError, GeneratorExit)):
        # The caller went away (a stream closed early ends its generator this way).
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _fail(scope: CallScope, context: Context, error: Exception) -> None:
    dcp_error = scope.mapped(error)
    if dcp_error is None:
        raise error
    await context.abort_with_status(rpc_status.to_status(dcp_error.to_status()))  # type: ignore[attr-defined]


def _final_code(context: Context, failure: BaseException | None) -> grpc.StatusCode:
    # An abort (every mapped error ends in one) leaves its code on the context.
    code: grpc.StatusCode | None = context.code()
    return code if code is not None else ended_code(failure)


def _unary_response(scope: CallScope, inner: Callable[[Any, Context], Awaitable[Any]]) -> Callable[..., Any]:
    async def call(request: Any, context: Context) -> Any:
        tokens: list[contextvars.Token[Any]] = []
        failure: BaseException | None = None
        try:
            tokens = await scope.enter(tuple(context.invocation_metadata() or ()))
            return await inner(request, context)
        except Exception as error:  # noqa: BLE001 - _fail() maps by type and re-raises the rest
            failure = error
            await _fail(scope, context, error)
            return None
        except BaseException as error:
            failure = error
            raise
        finally:
            leave(tokens)
            scope.finish(_final_code(context, failure))

    return call


def _stream_response(scope: CallScope, inner: Callable[[Any, Context], AsyncIterator[Any]]) -> Callable[..., Any]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        tokens: list[contextvars.Token[Any]] = []
        failure: BaseException | None = None
        try:
            tokens = await scope.enter(tuple(context.invocation_metadata() or ()))
            async for item in inner(request, context):
                yield item
        except Exception as error:  # noqa: BLE001
            failure = error
            await _fail(scope, context, error)
        except BaseException as error:
            failure = error
            raise
        finally:
            leave(tokens)
            scope.finish(_final_code(context, failure))

    return call


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Binds the verified caller and request id, maps errors to status, and
    counts and traces each call (health checks and reflection are left alone)."""

    def __init__(self, resolver: CallerResolver) -> None:
        self._resolver = resolver

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # Handlers of aio servers hold coroutine functions; grpc-stubs types them as sync.
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_INFRASTRUCTURE_PREFIXES):
            return handler
        needs_identity = not method.startswith(_ANONYMOUS_PREFIXES)
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            scope = CallScope(self._resolver, method, "unary", needs_identity=needs_identity)
            return grpc.unary_unary_rpc_method_handler(
                _unary_response(scope, handler.unary_unary), deserialize, serialize
            )
        if handler.stream_unary is not None:
            scope = CallScope(self._resolver, method, "client_stream", needs_identity=needs_identity)
            return grpc.stream_unary_rpc_method_handler(
                _unary_response(scope, handler.stream_unary), deserialize, serialize
            )
        if handler.unary_stream is not None:
            scope = CallScope(self._resolver, method, "server_stream", needs_identity=needs_identity)
            return grpc.unary_stream_rpc_method_handler(
                _stream_response(scope, handler.unary_stream), deserialize, serialize
            )
        scope = CallScope(self._resolver, method, "bidi_stream", needs_identity=needs_identity)
        return grpc.stream_stream_rpc_method_handler(
            _stream_response(scope, handler.stream_stream), deserialize, serialize
        )


def leave(tokens: list[contextvars.Token[Any]]) -> None:
    """Undoes what `CallScope.enter` bound, last first."""
    for token in reversed(tokens):
        token.var.reset(token)


# A failure that every request meets (the database is down) is logged once a minute, with a count.
_failures = RepeatedFailures(logger)


def _as_dcp_error(error: Exception, method: str) -> DcpError | None:
    if isinstance(error, DcpError):
        return error
    if isinstance(error, grpc.aio.AbortError):
        # A servicer aborted on purpose; the status is already set.
        return None
    mapped = Unavailable(STORE_UNREACHABLE) if store_unreachable(error) else from_database_error(error)
    if mapped is not None:
        if isinstance(mapped, Unavailable):
            _failures.log(
                logging.WARNING,
                ("unavailable", *failure_key(error)),
                "%s: %s (%s in %s)",
                mapped.message,
                type(error).__name__,
                error,
                method,
                exc_info=error,
            )
        return mapped
    _failures.log(
        logging.ERROR,
        ("unexpected", *failure_key(error)),
        "unexpected error in %s (request %s)",
        method,
        request_id.get(),
        exc_info=error,
    )
    return DcpError("an unexpected error occurred; it was logged with request id " + request_id.get())
