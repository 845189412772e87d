"""A channel to the gRPC server of this very process that skips the wire for unary calls.

When the gateway and the services share a process (each serving process of
`dcp up`), a call between them through a socket spends most of its time in
HTTP/2 framing, serializing and polling on both ends, to reach a handler a
function call away. `InProcessChannel` calls that handler directly, through
the same `ServerInterceptor` the server runs it with, so the call is
authenticated, traced, counted, logged and its failure mapped exactly as over
the wire; a failure reaches the caller as the same `grpc.aio.AioRpcError`
(code, message and rich status in its trailing metadata). Methods it does not
serve itself (streams, health checks, anything not registered with it) go
through the real channel it wraps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from grpc import aio

from services._runtime import tracing
from services._runtime.interceptors import ServerInterceptor

MetadataPairs = Sequence[tuple[str, str | bytes]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class _Handlers:
    """What a servicer's `add_..._to_server` registers, kept by full method path."""

    def __init__(self) -> None:
        self.by_method: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        # The same methods arrive through add_registered_method_handlers.
        pass

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, Handler]) -> None:
        for name, handler in handlers.items():
            self.by_method[f"/{service_name}/{name}"] = handler


class _Context:
    """The part of a servicer context the platform's handlers use, for a call made in this process."""

    def __init__(self, metadata: MetadataPairs) -> None:
        self._metadata = tuple(metadata)
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> MetadataPairs:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: MetadataPairs = ()) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def failure(self) -> aio.AioRpcError:
        assert self._code is not None
        return aio.AioRpcError(self._code, aio.Metadata(), aio.Metadata(*self._trailing), self._details, None)


class _UnaryUnary:
    def __init__(self, channel: InProcessChannel, method: str, fallback: Any) -> None:
        self._channel = channel
        self._method = method
        self._fallback = fallback

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataPairs | None = None,
        **options: Any,
    ) -> Any:
        handler = self._channel.handler(self._method)
        if handler is None or options.get("credentials") is not None:
            return self._fallback(request, timeout=timeout, metadata=metadata, **options)
        return self._channel.call(self._method, handler, request, timeout, (*(metadata or ()), *tracing.carried()))


class InProcessChannel(aio.Channel):
    """A channel whose unary calls to `serve`d servicers run here; the rest go over `channel`."""

    def __init__(self, channel: aio.Channel, interceptor: ServerInterceptor) -> None:
        self._channel = channel
        self._interceptor = interceptor
        self._handlers = _Handlers()

    def serve(self, register: Callable[[Any], None]) -> None:
        """Takes the servicers a binding registers (its `register`), as the process's server did."""
        register(self._handlers)

    def handler(self, method: str) -> Handler | None:
        handler = self._handlers.by_method.get(method)
        return handler if handler is not None and handler.unary_unary is not None else None

    async def call(
        self,
        method: str,
        handler: Handler,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 - a gRPC call's deadline, kept as grpc takes it
        metadata: MetadataPairs,
    ) -> Any:
        async def unchanged(_: grpc.HandlerCallDetails) -> Handler:
            return handler

        wrapped: Any = await self._interceptor.intercept_service(unchanged, _CallDetails(method, tuple(metadata)))
        context = _Context(metadata)
        try:
            if timeout is None:
                response = await wrapped.unary_unary(request, context)
            else:
                async with asyncio.timeout(timeout):
                    response = await wrapped.unary_unary(request, context)
        except aio.AbortError:
            raise context.failure() from None
        except TimeoutError:
            raise aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, aio.Metadata(), aio.Metadata(), "Deadline Exceeded", None
            ) from None
        return response

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        fallback = self._channel.unary_unary(method, request_serializer, response_deserializer)
        return _UnaryUnary(self, method, fallback)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(*args, **kwargs)

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()
