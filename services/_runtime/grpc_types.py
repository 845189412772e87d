"""Type names for grpc.aio that grpc-stubs leaves out or spells generically."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import grpc

# grpc-stubs types aio contexts as generic; the runtime class is not subscriptable.
ServicerContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
