"""Calling a service that runs in this process as if it ran in another.

A co-located client skips the channel and protobuf but not the handling: the
caller's identity is signed and verified again, the call gets its request id,
trace span, log lines and metrics under the RPC's own method name, and a
failure reaches the caller as the typed error a remote call would have raised
(see `calls.relayed`). Where collaborators run is then only a wiring choice:
the same call is refused, counted and logged alike either way.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services._runtime import tracing
from services._runtime.auth import CallerResolver
from services._runtime.calls import relayed_status
from services._runtime.errors import DcpError, status_code
from services._runtime.identity import AssertionSigner, Identity
from services._runtime.interceptors import CallScope, HandledReport, ended_code, leave, outgoing_metadata

T = TypeVar("T")
Item = TypeVar("Item")


class Sent(AsyncIterator[Item]):
    """The caller's stream of requests, as the called service reads it.

    A failure of the stream itself (a broken file) belongs to the caller: it
    is handed back as raised, and the call counts as cancelled, which is what
    the caller's cancelling a remote call would show.
    """

    def __init__(self, source: AsyncIterator[Item]) -> None:
        self._source = aiter(source)
        self.failure: BaseException | None = None

    def __aiter__(self) -> Sent[Item]:
        return self

    async def __anext__(self) -> Item:
        try:
            return await anext(self._source)
        except StopAsyncIteration:
            raise
        except BaseException as error:
            self.failure = error
            raise


class LocalCalls:
    """Runs handlers of services in this process through the same call handling as the gRPC server's."""

    def __init__(
        self, resolver: CallerResolver, signer: AssertionSigner, *, on_handled: HandledReport | None = None
    ) -> None:
        """`resolver` is the one the process's server verifies callers with; `on_handled` hears each
        finished call (by default the process's gRPC server metrics)."""
        self._resolver = resolver
        self._signer = signer
        self._on_handled = on_handled

    async def call(
        self,
        method: str,
        caller: Identity,
        handler: Callable[[], Awaitable[T]],
        *,
        service: str,
        grpc_type: str = "unary",
        sent: Sent[Any] | None = None,
        otherwise: type[DcpError] = DcpError,
    ) -> T:
        """`handler`'s answer, run as the RPC `method` (its full path) of `service` called by `caller`.

        The handler finds the verified caller where a servicer does
        (`identity.caller`). `sent` is the request stream the handler reads,
        if any; `otherwise` is what a remote client of the method raises for
        a status that is neither a refusal nor unavailability.
        """
        metadata = (*outgoing_metadata(self._signer, caller), *tracing.carried())
        scope = CallScope(self._resolver, method, grpc_type, needs_identity=True, on_handled=self._on_handled)
        tokens: list[contextvars.Token[Any]] = []
        code = grpc.StatusCode.OK
        try:
            tokens = await scope.enter(metadata)
            return await handler()
        except Exception as error:
            if sent is not None and error is sent.failure:
                code = grpc.StatusCode.CANCELLED
                raise
            dcp_error = scope.mapped(error)
            if dcp_error is None:
                code = ended_code(error)
                raise
            status = dcp_error.to_status()
            code = status_code(status)
            raise relayed_status(status, service, otherwise=otherwise) from None
        except BaseException as error:
            code = ended_code(error)
            raise
        finally:
            leave(tokens)
            scope.finish(code)
