"""The profiles service as other services call it (over gRPC, or in the same process), and its values on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import replace
from typing import Any

import grpc
import orjson

from dcp.profiles.v1 import profiles_service_pb2 as pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as pb_grpc
from services._runtime.calls import relayed
from services._runtime.errors import Unavailable
from services._runtime.identity import AssertionSigner, Identity, Scope, caller
from services._runtime.interceptors import outgoing_metadata
from services._runtime.local_calls import LocalCalls, Sent
from services.domain.batches import (
    BatchChunk,
    BatchHeader,
    BatchMerger,
    BatchProgress,
    BatchResult,
    ProgressReport,
    RowError,
)
from services.domain.conditions.evaluate import Outcome


def value_from_proto(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def value_to_proto(value: Any) -> pb.Value:
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(long_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    return pb.Value(string_value=str(value))


def data_from_proto(data: Mapping[str, pb.Value]) -> dict[str, Any]:
    # By name: a protobuf map keeps no order, so a write's refusals would otherwise be listed in
    # whatever order the map came in (another after a trip over the wire than in this process).
    return {name: value_from_proto(data[name]) for name in sorted(data)}


def profile_document(service_id: int, table_id: int, customer_id: str, data: Any) -> dict[str, Any]:
    """One customer's profile in one table as the v1 API shows it, `data` its values by attribute name.

    As `ConsolidatedView.profiles_json` holds each: the profiles service writes
    them, and a gateway makes them of `Profile` messages.
    """
    return {"customerId": customer_id, "dcpServiceId": str(service_id), "datasourceId": str(table_id), "data": data}


def outcome_document(audience_id: int, name: str, outcome: Outcome, *, saved: bool) -> bytes:
    """One audience's outcome for one user as the v1 API shows it.

    As `EvaluateAudiencesResponse.audiences_json` holds it: the profiles service
    writes it, and a gateway whose service sends messages makes it of them.
    """
    return orjson.dumps(
        {
            # An unsaved audience has neither id nor name yet.
            "audienceId": str(audience_id) if saved else None,
            "name": name if saved else None,
            "matched": outcome.matched,
            "conditions": [
                {
                    "path": leaf.path,
                    "datasourceId": str(leaf.datasource_id),
                    "attributeId": str(leaf.attribute_id),
                    "matchType": leaf.match_type,
                    "held": leaf.held,
                    "usable": leaf.usable,
                }
                for leaf in outcome.leaves
            ],
        }
    )


def _message(chunk: BatchChunk) -> pb.MergeProfilesRequest:
    return pb.MergeProfilesRequest(
        rows=[
            pb.ProfileRow(
                row_number=row.row_number,
                customer_id=row.customer_id,
                data={
                    name: pb.Value(null_value=True) if value is None else value_to_proto(value)
                    for name, value in row.data.items()
                },
            )
            for row in chunk.rows
        ],
        text_row_numbers=chunk.text_rows.row_numbers,
        text_cells=chunk.text_rows.cells,
        rows_rejected_by_caller=chunk.rejected_by_caller,
    )


_SERVICE = pb.DESCRIPTOR.services_by_name["ProfilesService"].full_name
MERGE_PROFILES = f"/{_SERVICE}/MergeProfiles"
MERGE_PROFILES_WITH_PROGRESS = f"/{_SERVICE}/MergeProfilesWithProgress"


class RemoteBatchMerger:
    """`Profiles.merge_stream` of a profiles service in another process."""

    def __init__(self, stub: pb_grpc.ProfilesServiceAsyncStub, signer: AssertionSigner) -> None:
        self._stub = stub
        self._signer = signer

    async def merge_stream(
        self,
        identity: Identity,
        header: BatchHeader,
        chunks: AsyncIterator[BatchChunk],
        *,
        on_progress: ProgressReport | None = None,
    ) -> BatchResult:
        metadata = outgoing_metadata(self._signer, identity)
        # Written message by message, so that a failure of the caller's own
        # stream (a broken file) cancels the call, and the transaction with it.
        call: Any
        if on_progress is None:
            call = self._stub.MergeProfiles(metadata=metadata)  # type: ignore[call-arg]
            answer: Awaitable[pb.MergeProfilesResponse] = call
        else:
            call = self._stub.MergeProfilesWithProgress(metadata=metadata)  # type: ignore[call-arg]
            # Updates are read while rows are written: a merge whose updates go unread would wait for them.
            answer = asyncio.create_task(_result(call, on_progress))
        try:
            await call.write(_header(header))
            async for chunk in chunks:
                await call.write(_message(chunk))
            await call.done_writing()
            response = await answer
        except grpc.aio.AioRpcError as error:
            # A merge that failed for a reason of ours is tried again later, not failed for good.
            if _lost_in_core(error):
                error = await self._refusal(metadata, header) or error
            raise relayed(error, "profiles", otherwise=Unavailable) from None
        except BaseException:
            call.cancel()
            raise
        finally:
            if isinstance(answer, asyncio.Task):
                answer.cancel()
                # Retrieved, so that a reader that failed with the call never warns.
                await asyncio.gather(answer, return_exceptions=True)
        return BatchResult(
            rows_received=response.rows_received,
            rows_stored=response.rows_stored,
            rows_rejected=response.rows_rejected,
            errors=[RowError(e.row_number, e.field, e.message, e.value) for e in response.errors],
            already_applied=response.already_applied,
        )

    async def _refusal(self, metadata: Any, header: BatchHeader) -> grpc.aio.AioRpcError | None:
        """The service's refusal of this batch, asked again with its header alone and nothing to store.

        A service that refuses a merge before reading all of it (no valid
        identity, a column that is no attribute) ends the call while rows are
        still on their way; gRPC's core then fails the next write with INTERNAL
        and the refusal is lost. The same header, checked only, meets the same
        refusal without racing any rows; None when it is accepted, so the first
        failure was the transport's.
        """
        probe = replace(header, validate_only=True, all_or_nothing=False, idempotency_key="")
        try:
            await self._stub.MergeProfiles(iter([_header(probe)]), metadata=metadata)
        except grpc.aio.AioRpcError as refusal:
            return None if _lost_in_core(refusal) else refusal
        return None


def _header(header: BatchHeader) -> pb.MergeProfilesRequest:
    return pb.MergeProfilesRequest(
        dcp_service_id=header.service_id,
        dcp_datasource_id=header.table_id,
        all_or_nothing=header.all_or_nothing,
        idempotency_key=header.idempotency_key,
        columns=header.columns,
        validate_only=header.validate_only,
    )


def _lost_in_core(error: grpc.aio.AioRpcError) -> bool:
    return error.code() is grpc.StatusCode.INTERNAL and error.details() == "Internal error from Core"


async def _result(call: Any, on_progress: ProgressReport) -> pb.MergeProfilesResponse:
    """The merge's result, passing its progress on as it comes."""
    async for update in call:
        if update.HasField("result"):
            result: pb.MergeProfilesResponse = update.result
            return result
        progress = update.progress
        on_progress(BatchProgress(progress.rows_received, progress.rows_valid, progress.rows_rejected))
    raise Unavailable("the profiles service ended a merge without its result; retry later")


class LocalBatchMerger:
    """The batch merge of the profiles service in this process.

    Rows are handed over as they are, without protobuf; the call is
    otherwise handled as the remote one: same method, caller check, metrics,
    logs, trace and errors.
    """

    def __init__(self, profiles: BatchMerger, calls: LocalCalls) -> None:
        self._profiles = profiles
        self._calls = calls

    async def merge_stream(
        self,
        identity: Identity,
        header: BatchHeader,
        chunks: AsyncIterator[BatchChunk],
        *,
        on_progress: ProgressReport | None = None,
    ) -> BatchResult:
        sent = Sent(chunks)

        async def merge() -> BatchResult:
            return await self._profiles.merge_stream(caller(Scope.WRITE), header, sent, on_progress=on_progress)

        if on_progress is None:
            method, grpc_type = MERGE_PROFILES, "client_stream"
        else:
            method, grpc_type = MERGE_PROFILES_WITH_PROGRESS, "bidi_stream"
        return await self._calls.call(
            method, identity, merge, service="profiles", grpc_type=grpc_type, sent=sent, otherwise=Unavailable
        )
