"""gRPC face of profiles: decode typed values, call the domain, encode."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence

import orjson
from google.protobuf import empty_pb2

from dcp.profiles.v1 import profiles_service_pb2 as pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as pb_grpc
from services._runtime.errors import InvalidArgument
from services._runtime.grpc_types import ServicerContext as Context
from services._runtime.identity import Identity, Scope, caller
from services._runtime.paging import next_key_token, next_token, read_key_page, read_page
from services._runtime.server import ServiceBinding
from services.domain.batches import BatchChunk, BatchHeader, BatchProgress, BatchResult, BatchRow, TextRows
from services.profiles.client import data_from_proto, outcome_document, profile_document
from services.profiles.export_repository import ExportParent
from services.profiles.exports import Exports, ExportView
from services.profiles.profiles import Profiles, ProfileView
from services.profiles.targeting import AudienceResult, Targeting

MEMBERS_DEFAULT_PAGE_SIZE = 100
MEMBERS_MAX_PAGE_SIZE = 10_000


def profile_to_proto(view: ProfileView, *, as_json: bool = False) -> pb.Profile:
    message = pb.Profile()
    fill_profile(message, view, as_json=as_json)
    return message


def fill_profile(message: pb.Profile, view: ProfileView, *, as_json: bool = False) -> None:
    """Writes the view into `message` in place: a message built apart is copied whole into its parent.

    `as_json`: the values go into `data_json`, one JSON object, instead of the typed map.
    """
    message.dcp_service_id = view.dcp_service_id
    message.dcp_datasource_id = view.datasource_id
    message.customer_id = view.customer_id
    if as_json:
        # Stored values are JSON's own scalars already: encoded in C at once, where the typed map
        # takes a message per value here and a lookup per value in a gateway that turns it back into JSON.
        message.data_json = orjson.dumps(view.data)
        return
    # Filled in place: building a Value per attribute and copying it into the
    # map costs about three times as much on every read.
    data = message.data
    for name, value in view.data.items():
        if value is True or value is False:
            data[name].bool_value = value
        elif isinstance(value, int):
            data[name].long_value = value
        elif isinstance(value, float):
            data[name].double_value = value
        else:
            data[name].string_value = str(value)


def batch_result_to_proto(result: BatchResult) -> pb.MergeProfilesResponse:
    return pb.MergeProfilesResponse(
        rows_received=result.rows_received,
        rows_stored=result.rows_stored,
        rows_rejected=result.rows_rejected,
        errors=[
            pb.RowError(row_number=e.row_number, field=e.field, message=e.message, value=e.value) for e in result.errors
        ],
        already_applied=result.already_applied,
    )


_OUTCOME_MESSAGES_CACHED = 10_000


class _OutcomeMessages:
    """Each audience result's part of an EvaluateAudiences answer, encoded once.

    Targeting hands out one immutable result per audience and pattern of leaf
    results, and an audience has few patterns in practice; building the message
    of 5 conditions costs more than the whole evaluation. Each is kept as the
    wire form of an answer holding that one audience: answers concatenated are
    one answer with their audiences in order (protobuf merges repeated fields
    so), and parsing them costs half of copying 25 built messages into an answer.
    Callers that answer in JSON get each saved audience's document, which
    Targeting keeps per pattern; see `json_answer`.
    """

    def __init__(self) -> None:
        # Keyed by the result's id; the result is held in the value, so no other object can take that id.
        self._encoded: dict[int, tuple[AudienceResult, bytes]] = {}

    def answer(self, service_id: int, user_id: str, results: Sequence[AudienceResult]) -> pb.EvaluateAudiencesResponse:
        parts = [
            pb.EvaluateAudiencesResponse(dcp_service_id=service_id, optimizely_user_id=user_id).SerializeToString()
        ]
        encoded = self._encoded
        for result in results:
            cached = encoded.get(id(result))
            parts.append(cached[1] if cached is not None and cached[0] is result else self._encode(result))
        return pb.EvaluateAudiencesResponse.FromString(b"".join(parts))

    @staticmethod
    def json_answer(service_id: int, user_id: str, documents: Sequence[bytes]) -> pb.EvaluateAudiencesResponse:
        """The answer with `audiences_json` (see EvaluateAudiencesResponse): the documents joined."""
        return pb.EvaluateAudiencesResponse(
            dcp_service_id=service_id,
            optimizely_user_id=user_id,
            audiences_json=b"".join((b"[", b",".join(documents), b"]")),
        )

    def _encode(self, result: AudienceResult) -> bytes:
        message = pb.AudienceOutcome(
            audience_id=result.audience_id,
            name=result.name,
            matched=result.outcome.matched,
            conditions=[
                pb.ConditionOutcome(
                    path=leaf.path,
                    dcp_datasource_id=leaf.datasource_id,
                    dcp_attribute_id=leaf.attribute_id,
                    match_type=leaf.match_type,
                    held=leaf.held,
                    usable=leaf.usable,
                )
                for leaf in result.outcome.leaves
            ],
        )
        message.digest = hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16).digest()
        encoded = pb.EvaluateAudiencesResponse(audiences=[message]).SerializeToString()
        _keep(self._encoded, result, encoded)
        return encoded


def _keep(cache: dict[int, tuple[AudienceResult, bytes]], result: AudienceResult, encoded: bytes) -> None:
    if len(cache) >= _OUTCOME_MESSAGES_CACHED:
        cache.clear()
    cache[id(result)] = (result, encoded)


class ProfilesServicer(pb_grpc.ProfilesServiceServicer):
    def __init__(self, profiles: Profiles, targeting: Targeting, exports: Exports) -> None:
        self._profiles = profiles
        self._targeting = targeting
        self._exports = exports
        self._outcomes = _OutcomeMessages()

    async def GetProfile(self, request: pb.GetProfileRequest, context: Context) -> pb.Profile:
        view = await self._profiles.get(
            caller(Scope.READ), request.dcp_service_id, request.dcp_datasource_id, request.customer_id
        )
        return profile_to_proto(view, as_json=request.data_as_json)

    async def BatchGetProfiles(
        self, request: pb.BatchGetProfilesRequest, context: Context
    ) -> pb.BatchGetProfilesResponse:
        views = await self._profiles.get_many(
            caller(Scope.READ), request.dcp_service_id, request.dcp_datasource_id, list(request.customer_ids)
        )
        answer = pb.BatchGetProfilesResponse()
        add = answer.profiles.add
        for view in views:
            fill_profile(add(), view)
        return answer

    async def MergeProfile(self, request: pb.MergeProfileRequest, context: Context) -> pb.Profile:
        view = await self._profiles.merge(
            caller(Scope.WRITE),
            request.dcp_service_id,
            request.dcp_datasource_id,
            request.customer_id,
            data_from_proto(request.data),
        )
        return profile_to_proto(view, as_json=request.data_as_json)

    async def DeleteProfile(self, request: pb.DeleteProfileRequest, context: Context) -> empty_pb2.Empty:
        await self._profiles.delete(
            caller(Scope.WRITE), request.dcp_service_id, request.dcp_datasource_id, request.customer_id
        )
        return empty_pb2.Empty()

    async def MergeProfiles(
        self, request_iterator: AsyncIterator[pb.MergeProfilesRequest], context: Context
    ) -> pb.MergeProfilesResponse:
        identity = caller(Scope.WRITE)
        header, chunks = await _batch(request_iterator)
        result = await self._profiles.merge_stream(identity, header, chunks)
        return batch_result_to_proto(result)

    async def MergeProfilesWithProgress(
        self, request_iterator: AsyncIterator[pb.MergeProfilesRequest], context: Context
    ) -> AsyncIterator[pb.MergeProfilesUpdate]:
        identity = caller(Scope.WRITE)
        header, chunks = await _batch(request_iterator)
        # The merge reports as it goes; its reports are passed on here, in order, until it ends.
        reports: asyncio.Queue[BatchProgress | None] = asyncio.Queue()
        merge = asyncio.create_task(
            self._profiles.merge_stream(identity, header, chunks, on_progress=reports.put_nowait)
        )
        merge.add_done_callback(lambda _: reports.put_nowait(None))
        try:
            while (progress := await reports.get()) is not None:
                yield pb.MergeProfilesUpdate(
                    progress=pb.MergeProgress(
                        rows_received=progress.rows_received,
                        rows_valid=progress.rows_valid,
                        rows_rejected=progress.rows_rejected,
                    )
                )
            result = await merge
        finally:
            # A caller gone mid-batch cancels the merge, whose transaction then rolls back.
            merge.cancel()
            await asyncio.gather(merge, return_exceptions=True)
        yield pb.MergeProfilesUpdate(result=batch_result_to_proto(result))

    async def GetConsolidatedView(
        self, request: pb.GetConsolidatedViewRequest, context: Context
    ) -> pb.ConsolidatedView:
        identity: Identity = caller(Scope.READ)
        views = await self._profiles.consolidated(
            identity,
            request.dcp_service_id,
            request.optimizely_user_id,
            optimizely_table_id=request.optimizely_datasource_id or None,
        )
        if request.profiles_as_json:
            # One encoding of the whole answer, where messages take one per profile here and one more
            # per profile in a gateway that turns them back into this JSON.
            documents = [profile_document(v.dcp_service_id, v.datasource_id, v.customer_id, v.data) for v in views]
            return pb.ConsolidatedView(profiles_json=orjson.dumps(documents))
        answer = pb.ConsolidatedView()
        add = answer.profiles.add
        as_json = request.data_as_json
        for view in views:
            fill_profile(add(), view, as_json=as_json)
        return answer

    # Audiences

    async def EvaluateAudiences(
        self, request: pb.EvaluateAudiencesRequest, context: Context
    ) -> pb.EvaluateAudiencesResponse:
        identity = caller(Scope.READ)
        service_id, user_id = request.dcp_service_id, request.optimizely_user_id
        if request.HasField("draft"):
            if request.project_id or request.audience_ids:
                raise InvalidArgument.field(
                    "draft", "comes without project_id and audience_ids: it names its project itself"
                )
            result = await self._targeting.evaluate_draft(
                identity, service_id, user_id, project_id=request.draft.project_id, conditions=request.draft.conditions
            )
            if request.outcomes_as_json:
                # An unsaved audience's document shows neither id nor name.
                document = outcome_document(result.audience_id, result.name, result.outcome, saved=False)
                return self._outcomes.json_answer(service_id, user_id, [document])
            return self._outcomes.answer(service_id, user_id, [result])
        project_id, audience_ids = request.project_id, list(request.audience_ids)
        if request.outcomes_as_json:
            documents = await self._targeting.evaluate_documents(
                identity, service_id, user_id, project_id=project_id, audience_ids=audience_ids
            )
            return self._outcomes.json_answer(service_id, user_id, documents)
        results = await self._targeting.evaluate(
            identity, service_id, user_id, project_id=project_id, audience_ids=audience_ids
        )
        return self._outcomes.answer(service_id, user_id, results)

    async def CountAudienceMembers(
        self, request: pb.CountAudienceMembersRequest, context: Context
    ) -> pb.CountAudienceMembersResponse:
        identity = caller(Scope.READ)
        if request.WhichOneof("audience") == "draft":
            count = await self._targeting.count_draft(identity, request.draft.project_id, request.draft.conditions)
            return pb.CountAudienceMembersResponse(count=count)
        count = await self._targeting.count(identity, request.audience_id)
        return pb.CountAudienceMembersResponse(audience_id=request.audience_id, count=count)

    async def ListAudienceMembers(
        self, request: pb.ListAudienceMembersRequest, context: Context
    ) -> pb.ListAudienceMembersResponse:
        identity = caller(Scope.READ)
        scope = f"members:{identity.account_id}:{request.audience_id}"
        page = read_key_page(
            request.page_size,
            request.page_token,
            scope=scope,
            default_size=MEMBERS_DEFAULT_PAGE_SIZE,
            max_size=MEMBERS_MAX_PAGE_SIZE,
        )
        members = await self._targeting.members(identity, request.audience_id, after=page.after, limit=page.size + 1)
        return pb.ListAudienceMembersResponse(
            optimizely_user_ids=members[: page.size], next_page_token=next_key_token(members, page, scope=scope)
        )

    # Exports

    async def CreateExport(self, request: pb.CreateExportRequest, context: Context) -> pb.Export:
        # An export writes a copy of the data into the bucket.
        identity = caller(Scope.WRITE)
        export_format = request.format or "csv"
        source = request.WhichOneof("source")
        if source == "dcp_datasource_id":
            view = await self._exports.export_table(identity, request.dcp_datasource_id, export_format)
        elif source == "audience_id":
            view = await self._exports.export_audience(identity, request.audience_id, export_format)
        else:
            raise InvalidArgument.field("source", "name a dcp_datasource_id or an audience_id to export")
        return export_to_proto(view)

    async def GetExport(self, request: pb.GetExportRequest, context: Context) -> pb.Export:
        return export_to_proto(await self._exports.get(caller(Scope.READ), request.export_id))

    async def ListExports(self, request: pb.ListExportsRequest, context: Context) -> pb.ListExportsResponse:
        identity = caller(Scope.READ)
        which = request.WhichOneof("parent")
        if which is None:
            raise InvalidArgument.field("parent", "name a dcp_service_id, dcp_datasource_id or audience_id")
        parent = _EXPORT_PARENTS[which]
        parent_id: int = getattr(request, which)
        scope = f"exports:{identity.account_id}:{parent}:{parent_id}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        views = await self._exports.history(identity, parent, parent_id, page)
        return pb.ListExportsResponse(
            exports=[export_to_proto(v) for v in views[: page.size]],
            next_page_token=next_token([v.record.id for v in views], page, scope=scope),
        )


_EXPORT_PARENTS: dict[str, ExportParent] = {
    "dcp_service_id": "service",
    "dcp_datasource_id": "table",
    "audience_id": "audience",
}


def export_to_proto(view: ExportView) -> pb.Export:
    record = view.record
    message = pb.Export(
        id=record.id,
        account_id=record.account_id,
        format=record.format,
        status=record.status,
        row_count=record.row_count,
        size_bytes=record.size_bytes,
        bucket=record.bucket,
        key=record.key,
        download_url=view.download_url,
        error=record.error or "",
    )
    if record.datasource_id is not None:
        message.dcp_datasource_id = record.datasource_id
    if record.audience_id is not None:
        message.audience_id = record.audience_id
    message.created.FromDatetime(record.created)
    if record.finished is not None:
        message.finished.FromDatetime(record.finished)
    return message


async def _batch(
    request_iterator: AsyncIterator[pb.MergeProfilesRequest],
) -> tuple[BatchHeader, AsyncIterator[BatchChunk]]:
    """A batch's header, from its first message, and its rows, the first message's included."""
    messages = aiter(request_iterator)
    first = await anext(messages, None)
    if first is None:
        raise InvalidArgument.field("dcp_datasource_id", "the stream sent no message naming the table")
    header = BatchHeader(
        service_id=first.dcp_service_id,
        table_id=first.dcp_datasource_id,
        all_or_nothing=first.all_or_nothing,
        idempotency_key=first.idempotency_key,
        columns=tuple(first.columns),
        validate_only=first.validate_only,
    )

    async def chunks() -> AsyncIterator[BatchChunk]:
        yield _chunk(first)
        async for message in messages:
            yield _chunk(message)

    return header, chunks()


def _chunk(message: pb.MergeProfilesRequest) -> BatchChunk:
    return BatchChunk(
        rows=[
            BatchRow(row_number=row.row_number, customer_id=row.customer_id, data=data_from_proto(row.data))
            for row in message.rows
        ],
        text_rows=TextRows(message.text_row_numbers, message.text_cells),
        rejected_by_caller=message.rows_rejected_by_caller,
    )


def bindings(profiles: Profiles, targeting: Targeting, exports: Exports) -> list[ServiceBinding]:
    servicer = ProfilesServicer(profiles, targeting, exports)
    return [
        ServiceBinding(
            service_names=(pb.DESCRIPTOR.services_by_name["ProfilesService"].full_name,),
            register=lambda server: pb_grpc.add_ProfilesServiceServicer_to_server(servicer, server),
        )
    ]
