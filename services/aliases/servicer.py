"""gRPC face of aliases."""

from __future__ import annotations

from google.protobuf import empty_pb2

from dcp.aliases.v1 import aliases_service_pb2 as pb
from dcp.aliases.v1 import aliases_service_pb2_grpc as pb_grpc
from services._runtime.grpc_types import ServicerContext as Context
from services._runtime.identity import Scope, caller
from services._runtime.server import ServiceBinding
from services.aliases.aliases import Aliases, AliasSet


def alias_set_to_proto(aliases: AliasSet) -> pb.AliasSet:
    return pb.AliasSet(
        dcp_service_id=aliases.dcp_service_id,
        optimizely_datasource_id=aliases.optimizely_datasource_id,
        optimizely_user_id=aliases.optimizely_user_id,
        customer_ids=aliases.customer_ids,
    )


class AliasesServicer(pb_grpc.AliasesServiceServicer):
    def __init__(self, aliases: Aliases) -> None:
        self._aliases = aliases

    async def GetAliases(self, request: pb.GetAliasesRequest, context: Context) -> pb.AliasSet:
        result = await self._aliases.get(
            caller(Scope.READ),
            request.dcp_service_id,
            request.optimizely_datasource_id or None,
            request.optimizely_user_id,
        )
        return alias_set_to_proto(result)

    async def MergeAliases(self, request: pb.MergeAliasesRequest, context: Context) -> pb.AliasSet:
        result = await self._aliases.merge(
            caller(Scope.WRITE),
            request.dcp_service_id,
            request.optimizely_datasource_id or None,
            request.optimizely_user_id,
            dict(request.customer_ids),
        )
        return alias_set_to_proto(result)

    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Context) -> empty_pb2.Empty:
        await self._aliases.delete(
            caller(Scope.WRITE),
            request.dcp_service_id,
            request.optimizely_datasource_id or None,
            request.optimizely_user_id,
            request.dcp_datasource_id,
        )
        return empty_pb2.Empty()

    async def ResolveVisitor(self, request: pb.ResolveVisitorRequest, context: Context) -> pb.ResolveVisitorResponse:
        resolution = await self._aliases.resolve(
            caller(Scope.WRITE),
            request.dcp_service_id,
            request.optimizely_user_id,
            cookies=dict(request.cookies),
            query=dict(request.query),
            js=dict(request.js),
        )
        return pb.ResolveVisitorResponse(
            aliases=alias_set_to_proto(resolution.aliases),
            skipped=[pb.SkippedLocator(dcp_datasource_id=s.datasource_id, reason=s.reason) for s in resolution.skipped],
        )


def bindings(aliases: Aliases) -> list[ServiceBinding]:
    servicer = AliasesServicer(aliases)
    return [
        ServiceBinding(
            service_names=(pb.DESCRIPTOR.services_by_name["AliasesService"].full_name,),
            register=lambda server: pb_grpc.add_AliasesServiceServicer_to_server(servicer, server),
        )
    ]
