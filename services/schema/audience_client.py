"""Audiences as other services read them: from the schema service, cached for a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.caching import REFRESH_AHEAD, Fetches, joined
from services._runtime.calls import relayed
from services._runtime.identity import AssertionSigner, Identity
from services._runtime.interceptors import outgoing_metadata
from services._runtime.paging import all_pages


@dataclass(frozen=True)
class AudienceDefinition:
    id: int
    name: str
    project_id: int
    dcp_service_id: int
    """0 when the audience's project is not linked to a DCP service."""
    conditions: Any
    archived: bool


@dataclass(frozen=True)
class CheckedConditions:
    """An unsaved condition tree the schema service found fit to save in a project."""

    dcp_service_id: int
    """0 when the project is not linked to a DCP service."""
    conditions: Any


def _definition(message: resources_pb2.Audience) -> AudienceDefinition:
    return AudienceDefinition(
        id=message.id,
        name=message.name,
        project_id=message.project_id,
        dcp_service_id=message.dcp_service_id,
        conditions=orjson.loads(message.conditions or "[]"),
        archived=message.archived,
    )


class AudienceDirectory:
    """Reads audience definitions; a service's active audiences are cached for `ttl_seconds`.

    The cache is what lets a visitor be evaluated against every audience at
    page-view speed; a changed audience takes effect within the TTL.
    """

    def __init__(
        self,
        stub: schema_service_pb2_grpc.SchemaServiceAsyncStub,
        signer: AssertionSigner,
        *,
        ttl_seconds: float = 1.0,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._ttl = ttl_seconds
        self._of_service: dict[tuple[int, int], tuple[float, tuple[AudienceDefinition, ...]]] = {}
        self._fetches: Fetches[tuple[int, int], tuple[AudienceDefinition, ...]] = Fetches()

    async def get(self, identity: Identity, audience_id: int) -> AudienceDefinition:
        try:
            message = await self._stub.GetAudience(
                schema_service_pb2.GetAudienceRequest(audience_id=audience_id),
                metadata=outgoing_metadata(self._signer, identity),
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        return _definition(message)

    async def check(self, identity: Identity, project_id: int, conditions: str) -> CheckedConditions:
        """Checks conditions as saving them in the project would; its refusals pass on as they are."""
        try:
            answer = await self._stub.CheckAudienceConditions(
                schema_service_pb2.CheckAudienceConditionsRequest(project_id=project_id, conditions=conditions),
                metadata=outgoing_metadata(self._signer, identity),
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        return CheckedConditions(answer.dcp_service_id, orjson.loads(answer.conditions or "[]"))

    async def project_service(self, identity: Identity, project_id: int) -> int:
        """The DCP service a project is linked to (0 if none); NOT_FOUND for an unknown project."""
        try:
            project = await self._stub.GetProject(
                schema_service_pb2.GetProjectRequest(project_id=project_id),
                metadata=outgoing_metadata(self._signer, identity),
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        return project.dcp_service_id if project.HasField("dcp_service_id") else 0

    async def of_service(
        self, identity: Identity, service_id: int, audience_ids: Sequence[int] = ()
    ) -> tuple[AudienceDefinition, ...]:
        """Active audiences of every project linked to the service, in id order."""
        key = (identity.account_id, service_id)
        cached = self._of_service.get(key)
        age = time.monotonic() - cached[0] if cached is not None else self._ttl + 1
        if cached is not None and age <= self._ttl:
            if age > self._ttl * REFRESH_AHEAD and not self._fetches.running(key):
                # Fetched again while this copy still serves: steady traffic never waits for one.
                self._fetch(key, identity, service_id)
            found = cached[1]
        else:
            found = await joined(self._fetches.current(key) or self._fetch(key, identity, service_id))
        if not audience_ids:
            return found
        wanted = set(audience_ids)
        return tuple(a for a in found if a.id in wanted)

    def _fetch(
        self, key: tuple[int, int], identity: Identity, service_id: int
    ) -> asyncio.Future[tuple[AudienceDefinition, ...]]:
        return self._fetches.start(key, self._fetch_and_keep(key, identity, service_id))

    async def _fetch_and_keep(
        self, key: tuple[int, int], identity: Identity, service_id: int
    ) -> tuple[AudienceDefinition, ...]:
        started = time.monotonic()
        found = await self._fetch_service(identity, service_id)
        previous = self._of_service.get(key)
        if previous is not None and previous[1] == found:
            # Unchanged definitions stay the same objects, so what was worked out from them
            # (their compiled conditions) is known to still hold without comparing them again.
            found = previous[1]
        self._of_service[key] = (started, found)
        return found

    async def _fetch_service(self, identity: Identity, service_id: int) -> tuple[AudienceDefinition, ...]:
        found: list[AudienceDefinition] = []
        metadata = outgoing_metadata(self._signer, identity)
        try:
            async for page in all_pages(
                lambda token: self._stub.ListAudiences(
                    schema_service_pb2.ListAudiencesRequest(
                        dcp_service_id=service_id, page_size=1000, page_token=token
                    ),
                    metadata=metadata,
                )
            ):
                found.extend(_definition(a) for a in page.audiences)
        except grpc.aio.AioRpcError as error:
            raise relayed(error, "schema") from None
        return tuple(found)
