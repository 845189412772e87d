"""The aliases service as other services call it over gRPC."""

from __future__ import annotations

import grpc

from dcp.aliases.v1 import aliases_service_pb2 as pb
from dcp.aliases.v1 import aliases_service_pb2_grpc as pb_grpc
from services._runtime.calls import relayed
from services._runtime.identity import AssertionSigner, Identity
from services._runtime.interceptors import outgoing_metadata


class AliasesClient:
    def __init__(self, stub: pb_grpc.AliasesServiceAsyncStub, signer: AssertionSigner) -> None:
        self._stub = stub
        self._signer = signer

    async def links_of(self, identity: Identity, service_id: int, optimizely_user_id: str) -> dict[int, str]:
        metadata = outgoing_metadata(self._signer, identity)
        try:
            result = await self._stub.GetAliases(
                pb.GetAliasesRequest(dcp_service_id=service_id, optimizely_user_id=optimizely_user_id),
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "aliases") from None
        return dict(result.customer_ids)
