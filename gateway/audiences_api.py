"""Audiences under /experiment/v1 (definitions, members, exports) and their evaluation under /api."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from google.protobuf import field_mask_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from gateway import v1json
from gateway.bodies import INT64_MAX, BodySpec, FieldType
from gateway.config_api import (
    Call,
    Endpoint,
    Wrap,
    accepted,
    created,
    link_next_page,
    method_route,
    no_content,
    path_id,
    per_page,
    visible_text_pattern,
)
from gateway.errors import ApiError
from gateway.imports_api import DEFAULT_PER_PAGE as HISTORY_DEFAULT_PER_PAGE
from gateway.imports_api import MAX_PER_PAGE as HISTORY_MAX_PER_PAGE
from gateway.imports_api import PAGE_TOKEN, PER_PAGE
from gateway.openapi import (
    BOOLEAN,
    COUNT,
    DECIMAL_ID,
    ID,
    LINK,
    TEXT,
    TIMESTAMP,
    Body,
    Component,
    Link,
    Operation,
    Query,
    Reply,
    Schema,
    array,
    described,
    nullable,
    record,
)
from gateway.responses import JSONResponse
from services._runtime.paging import all_pages
from services.domain.conditions.evaluate import LeafOutcome, Outcome
from services.domain.limits import EXPORT_FORMATS, MAX_DESCRIPTION_LENGTH, MAX_NAME_LENGTH
from services.profiles.client import outcome_document

V1 = "/experiment/v1"
MEMBERS_DEFAULT_PER_PAGE = 100
MEMBERS_MAX_PER_PAGE = 10_000
MAX_EVALUATE_AUDIENCES = 1000

_AUDIENCE = BodySpec(
    writable={
        "name": FieldType("string"),
        "description": FieldType("string", nullable=True),
        "conditions": FieldType("json text or array"),
        "segmentation": FieldType("boolean"),
    },
    read_only=frozenset({"id", "project_id", "archived", "created", "last_modified"}),
)
# Which formats exist is the profiles service's to say; here only the field's type.
_EXPORT = BodySpec(writable={"format": FieldType("string")})
# An unsaved audience's conditions, counted as they are being built.
_DRAFT = BodySpec(writable={"conditions": FieldType("json text or array")})


AUDIENCE = Component(
    "Audience",
    record(
        {
            "id": ID,
            "project_id": ID,
            "name": TEXT,
            "description": described(TEXT, "Empty when none was given"),
            "conditions": described(TEXT, 'The conditions as JSON text, e.g. ["and", {...}]'),
            "segmentation": BOOLEAN,
            "archived": BOOLEAN,
            "created": TIMESTAMP,
            "last_modified": TIMESTAMP,
        }
    ),
)


def audience_json(message: resources_pb2.Audience) -> dict[str, Any]:
    # v1 carries conditions as JSON text, not as nested JSON.
    return {
        "id": message.id,
        "project_id": message.project_id,
        "name": message.name,
        "description": message.description,
        "conditions": message.conditions,
        "segmentation": message.segmentation,
        "archived": message.archived,
        "created": v1json.timestamp(message.created),
        "last_modified": v1json.timestamp(message.last_modified),
    }


_EXPORT_FIELDS: dict[str, Any] = {
    "id": ID,
    "format": TEXT,
    # The profiles service's states (profiles_service.proto, Export.status).
    "status": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
    "row_count": described(COUNT, "Rows written; while running, so far"),
    "size_bytes": described(COUNT, "Bytes written; while running, so far"),
    "bucket": nullable(TEXT),
    "key": described(nullable(TEXT), "The file's key in the bucket, once done"),
    "download_url": described(nullable(TEXT), "A presigned URL of the file, valid for an hour, once done"),
    "error": described(nullable(TEXT), "Why it failed"),
    "created": TIMESTAMP,
    "finished": nullable(TIMESTAMP),
}
# Exactly one source: the table exported, or the audience whose members were.
EXPORT = Component(
    "Export",
    {
        "oneOf": [
            record({**_EXPORT_FIELDS, "dcp_datasource_id": ID}, description="An export of a table's profiles"),
            record({**_EXPORT_FIELDS, "audience_id": ID}, description="An export of an audience's members"),
        ]
    },
)


def export_json(message: profiles_pb.Export) -> dict[str, Any]:
    body: dict[str, Any] = {"id": message.id}
    source = message.WhichOneof("source")
    if source is not None:
        body[source] = getattr(message, source)
    body.update(
        {
            "format": message.format,
            "status": message.status,
            "row_count": message.row_count,
            "size_bytes": message.size_bytes,
            "bucket": message.bucket or None,
            "key": message.key or None,
            "download_url": message.download_url or None,
            "error": message.error or None,
            "created": v1json.timestamp(message.created),
            "finished": v1json.timestamp(message.finished) if message.HasField("finished") else None,
        }
    )
    return body


_OUTCOME = record(
    {
        "audienceId": described(nullable(DECIMAL_ID), "null for unsaved conditions"),
        "name": nullable(TEXT),
        "matched": BOOLEAN,
        "conditions": array(
            record(
                {
                    "path": described(TEXT, 'Where the condition sits, e.g. "conditions[1][2]"'),
                    "datasourceId": DECIMAL_ID,
                    "attributeId": DECIMAL_ID,
                    "matchType": TEXT,
                    "held": BOOLEAN,
                    "usable": described(BOOLEAN, "False when its attribute or table was archived: it never holds"),
                }
            ),
            description="Every leaf condition in the order written, with whether it held",
        ),
    }
)
EVALUATION = Component(
    "Evaluation",
    record({"optimizelyUserId": TEXT, "dcpServiceId": DECIMAL_ID, "audiences": array(_OUTCOME)}),
)
MEMBER = Component("Member", record({"optimizely_user_id": TEXT}))
MEMBER_COUNT = Component("MemberCount", record({"audience_id": ID, "count": COUNT}))
DRAFT_COUNT = Component("DraftCount", record({"count": COUNT}))


def _conditions_text(value: Any) -> str:
    # An array goes on as JSON text; a string already is (or is not, and the service says so).
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _evaluate_request(service_id: int, user_id: str, body: Any) -> profiles_pb.EvaluateAudiencesRequest:
    """Saved audiences (all, a project's, or `audience_ids`), or with `conditions` one unsaved audience."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="MALFORMED_REQUEST")
    for key in body:
        if key not in ("project_id", "audience_ids", "conditions"):
            raise ApiError.field(key, "is not a field of this request; send project_id, audience_ids or conditions")
    project_id = body.get("project_id")
    if project_id is not None and (
        isinstance(project_id, bool) or not isinstance(project_id, int) or not 0 < project_id <= INT64_MAX
    ):
        raise ApiError.field("project_id", "must be a project id (a positive integer) or null")
    ids = body.get("audience_ids")
    if ids is None:
        ids = []
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 < i <= INT64_MAX for i in ids
    ):
        raise ApiError.field("audience_ids", "must be an array of audience ids (positive integers)")
    if len(ids) > MAX_EVALUATE_AUDIENCES:
        raise ApiError.field("audience_ids", f"must hold at most {MAX_EVALUATE_AUDIENCES} ids, got {len(ids)}")
    request = profiles_pb.EvaluateAudiencesRequest(dcp_service_id=service_id, optimizely_user_id=user_id)
    if "conditions" not in body:
        request.project_id = project_id or 0
        request.audience_ids.extend(ids)
        return request
    _DRAFT.writable["conditions"].check("conditions", body["conditions"])
    if project_id is None:
        raise ApiError.field("project_id", "is required with conditions: the project the audience would be saved in")
    if ids:
        raise ApiError.field("audience_ids", "cannot be sent with conditions, which are evaluated on their own")
    request.draft.project_id = project_id
    request.draft.conditions = _conditions_text(body["conditions"])
    return request


_OUTCOMES_CACHED = 10_000
# Saved audiences' documents, and unsaved ones' (which show neither id nor name), by the outcome's digest
# (or its wire form, from a server that sends no digest).
_encoded_outcomes: dict[bool, dict[bytes, bytes]] = {True: {}, False: {}}


def _encoded_audiences(outcomes: Iterable[profiles_pb.AudienceOutcome], *, saved: bool) -> bytes:
    """The outcomes' JSON documents, encoded and comma-separated.

    An audience's outcomes follow few patterns, each answered many times, so each
    is encoded once, found again by its digest: building and encoding 25
    audiences' documents anew cost a fifth of an evaluation, and serializing
    each outcome to recognise it a tenth.
    """
    encoded_outcomes = _encoded_outcomes[saved]
    parts = []
    for outcome in outcomes:
        key = outcome.digest or outcome.SerializeToString()
        encoded = encoded_outcomes.get(key)
        if encoded is None:
            if len(encoded_outcomes) >= _OUTCOMES_CACHED:
                encoded_outcomes.clear()
            encoded = encoded_outcomes[key] = _outcome_document(outcome, saved=saved)
        parts.append(encoded)
    return b",".join(parts)


def _outcome_document(outcome: profiles_pb.AudienceOutcome, *, saved: bool) -> bytes:
    leaves = tuple(
        LeafOutcome(c.path, c.dcp_datasource_id, c.dcp_attribute_id, c.match_type, c.held, c.usable)
        for c in outcome.conditions
    )
    return outcome_document(outcome.audience_id, outcome.name, Outcome(outcome.matched, leaves), saved=saved)


_AUDIENCE_LIMITS: dict[str, Schema] = {
    "name": {"minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": visible_text_pattern()},
    "description": {"maxLength": MAX_DESCRIPTION_LENGTH},
}
_AUDIENCE_LINKS = {
    "GetAudience": Link("getAudience", {"audience_id": "$response.body#/id"}, "The audience just made"),
    "UpdateAudience": Link("updateAudience", {"audience_id": "$response.body#/id"}),
    "ArchiveAudience": Link("archiveAudience", {"audience_id": "$response.body#/id"}),
    "CountMembers": Link("countAudienceMembers", {"audience_id": "$response.body#/id"}),
    "ListMembers": Link("listAudienceMembers", {"audience_id": "$response.body#/id"}),
    "ExportAudience": Link("exportAudience", {"audience_id": "$response.body#/id"}),
}
_EXPORT_BODY = Body(
    _EXPORT.json_schema(refined={"format": {"enum": list(EXPORT_FORMATS)}}),
    required=False,
    description="The file's format; no body (or no format) asks for CSV",
)
_EXPORT_LISTING_QUERY = (PER_PAGE, PAGE_TOKEN)
_EXPORTS_PAGE = Reply("One page of exports, newest first", array(EXPORT), headers={"Link": LINK})

LIST_AUDIENCES = Operation(
    "listAudiences", "List a project's audiences", "Audiences", {200: Reply("Every audience", array(AUDIENCE))}
)
CREATE_AUDIENCE = Operation(
    "createAudience",
    "Create an audience",
    "Audiences",
    {201: Reply("The audience made", AUDIENCE, links=_AUDIENCE_LINKS)},
    description="The project must be linked to a DCP service, whose attributes the conditions name.",
    body=Body(
        _AUDIENCE.json_schema(required=["name"], echoed=["project_id"], refined=_AUDIENCE_LIMITS),
        description="The new audience",
    ),
)
COUNT_DRAFT = Operation(
    "countDraftAudience",
    "Count the members unsaved conditions would have",
    "Audiences",
    {200: Reply("How many profiles match", DRAFT_COUNT)},
    body=Body(_DRAFT.json_schema(), description="The conditions being built"),
)
GET_AUDIENCE = Operation("getAudience", "Get an audience", "Audiences", {200: Reply("The audience", AUDIENCE)})
UPDATE_AUDIENCE = Operation(
    "updateAudience",
    "Change an audience",
    "Audiences",
    {202: Reply("The audience as changed", AUDIENCE)},
    body=Body(
        _AUDIENCE.json_schema(echoed=_AUDIENCE.read_only, refined=_AUDIENCE_LIMITS),
        description="The fields to change",
    ),
)
ARCHIVE_AUDIENCE = Operation("archiveAudience", "Archive an audience", "Audiences", {204: Reply("Archived")})
MEMBERS = Operation(
    "listAudienceMembers",
    "The visitors in an audience",
    "Audiences",
    {200: Reply("One page of members", array(MEMBER), headers={"Link": LINK})},
    query=(
        Query(
            "per_page",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MEMBERS_MAX_PER_PAGE,
                "default": MEMBERS_DEFAULT_PER_PAGE,
            },
            "How many to answer with",
        ),
        PAGE_TOKEN,
    ),
)
COUNT_MEMBERS = Operation(
    "countAudienceMembers", "How many visitors are in an audience", "Audiences", {200: Reply("The count", MEMBER_COUNT)}
)


def _start_export(operation_id: str, summary: str, follow: str, parent: str) -> Operation:
    """POST .../exports of a table or an audience: the export, linked to the GET that follows it."""
    started = Reply(
        "The export, started",
        EXPORT,
        links={
            "GetExport": Link(
                follow,
                {parent: f"$request.path.{parent}", "export_id": "$response.body#/id"},
                "The export just started, to follow until it is done",
            )
        },
    )
    return Operation(operation_id, summary, "Exports", {201: started}, body=_EXPORT_BODY)


SERVICE_EXPORTS = Operation(
    "listServiceExports",
    "Every export of a DCP service's tables and audiences",
    "Exports",
    {200: _EXPORTS_PAGE},
    query=_EXPORT_LISTING_QUERY,
)
AUDIENCE_EXPORTS = Operation(
    "listAudienceExports", "An audience's exports", "Exports", {200: _EXPORTS_PAGE}, query=_EXPORT_LISTING_QUERY
)
EXPORT_AUDIENCE = _start_export(
    "exportAudience", "Export an audience's members to a file in S3", "getAudienceExport", "audience_id"
)
AUDIENCE_EXPORT = Operation(
    "getAudienceExport", "One export of an audience", "Exports", {200: Reply("The export", EXPORT)}
)
TABLE_EXPORTS = Operation(
    "listTableExports", "A table's exports", "Exports", {200: _EXPORTS_PAGE}, query=_EXPORT_LISTING_QUERY
)
EXPORT_TABLE = _start_export("exportTable", "Export a table's profiles to a file in S3", "getTableExport", "table_id")
TABLE_EXPORT = Operation("getTableExport", "One export of a table", "Exports", {200: Reply("The export", EXPORT)})
GET_EXPORT = Operation(
    "getExport",
    "One export, of a table or an audience",
    "Exports",
    {200: Reply("The export", EXPORT)},
    description="Any export of the account's DCP services by its id, as the service-wide listing shows it.",
)
EVALUATE = Operation(
    "evaluateAudiences",
    "Which audiences a visitor is in, and why",
    "Audiences",
    {200: Reply("Each audience evaluated, with every condition's outcome", EVALUATION)},
    description=(
        "With no body fields, every saved audience of the service's projects; with project_id, that project's; "
        "with audience_ids, those. With conditions (and project_id), one unsaved audience instead."
    ),
    body=Body(
        {
            **record(
                {
                    "project_id": nullable(ID),
                    "audience_ids": {
                        "type": ["array", "null"],
                        "items": ID,
                        "maxItems": MAX_EVALUATE_AUDIENCES,
                    },
                    "conditions": _DRAFT.writable["conditions"].json_schema(),
                },
                optional=["project_id", "audience_ids", "conditions"],
            ),
            # Conditions are evaluated on their own, in the project they would be saved in.
            "dependentRequired": {"conditions": ["project_id"]},
            "dependentSchemas": {"conditions": {"properties": {"audience_ids": {"maxItems": 0}}}},
        },
        description="Which audiences to evaluate",
    ),
)


class AudiencesApi:
    def __init__(
        self,
        schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
        profiles: profiles_grpc.ProfilesServiceAsyncStub,
    ) -> None:
        self._schema = schema
        self._profiles = profiles

    def routes(self, wrap: Wrap) -> list[Route]:
        def route(path: str, methods: dict[str, tuple[Endpoint, Operation]]) -> Route:
            return method_route(wrap, path, methods)

        return [
            route(
                f"{V1}/projects/{{project_id}}/audiences",
                {"GET": (self.list_audiences, LIST_AUDIENCES), "POST": (self.create, CREATE_AUDIENCE)},
            ),
            route(f"{V1}/projects/{{project_id}}/audiences/count", {"POST": (self.count_draft, COUNT_DRAFT)}),
            route(
                f"{V1}/audiences/{{audience_id}}",
                {
                    "GET": (self.get, GET_AUDIENCE),
                    "PUT": (self.update, UPDATE_AUDIENCE),
                    "DELETE": (self.archive, ARCHIVE_AUDIENCE),
                },
            ),
            route(f"{V1}/audiences/{{audience_id}}/members", {"GET": (self.members, MEMBERS)}),
            route(f"{V1}/audiences/{{audience_id}}/members/count", {"GET": (self.count, COUNT_MEMBERS)}),
            route(f"{V1}/dcp_services/{{service_id}}/exports", {"GET": (self.service_exports, SERVICE_EXPORTS)}),
            route(f"{V1}/exports/{{export_id}}", {"GET": (self.get_export, GET_EXPORT)}),
            route(
                f"{V1}/audiences/{{audience_id}}/exports",
                {"GET": (self.audience_exports, AUDIENCE_EXPORTS), "POST": (self.export_audience, EXPORT_AUDIENCE)},
            ),
            route(
                f"{V1}/audiences/{{audience_id}}/exports/{{export_id}}",
                {"GET": (self.audience_export, AUDIENCE_EXPORT)},
            ),
            route(
                f"{V1}/dcp_datasources/{{table_id}}/exports",
                {"GET": (self.table_exports, TABLE_EXPORTS), "POST": (self.export_table, EXPORT_TABLE)},
            ),
            route(
                f"{V1}/dcp_datasources/{{table_id}}/exports/{{export_id}}", {"GET": (self.table_export, TABLE_EXPORT)}
            ),
            route("/api/audiences/evaluate/{service_id}/{optimizely_user_id}", {"POST": (self.evaluate, EVALUATE)}),
        ]

    # Definitions

    async def list_audiences(self, request: Request, call: Call) -> Response:
        project_id = path_id(request, "project_id")
        pages = all_pages(
            lambda token: self._schema.ListAudiences(
                schema_service_pb2.ListAudiencesRequest(project_id=project_id, page_size=1000, page_token=token),
                metadata=call.metadata,
            )
        )
        return JSONResponse([audience_json(a) async for page in pages for a in page.audiences])

    async def create(self, request: Request, call: Call) -> Response:
        project_id = path_id(request, "project_id")
        values = _AUDIENCE.decode(await call.json(), current={"project_id": project_id})
        audience = resources_pb2.Audience(
            project_id=project_id,
            name=values.get("name", ""),
            description=values.get("description") or "",
            conditions=_conditions_text(values.get("conditions", [])),
            segmentation=values.get("segmentation", False),
        )
        result = await self._schema.CreateAudience(
            schema_service_pb2.CreateAudienceRequest(audience=audience), metadata=call.metadata
        )
        return created(audience_json(result))

    async def get(self, request: Request, call: Call) -> Response:
        result = await self._schema.GetAudience(
            schema_service_pb2.GetAudienceRequest(audience_id=path_id(request, "audience_id")), metadata=call.metadata
        )
        return JSONResponse(audience_json(result))

    async def update(self, request: Request, call: Call) -> Response:
        audience_id = path_id(request, "audience_id")
        body = await call.json()
        current = await self._schema.GetAudience(
            schema_service_pb2.GetAudienceRequest(audience_id=audience_id), metadata=call.metadata
        )
        values = _AUDIENCE.decode(body, current=audience_json(current))
        if not values:
            return accepted(audience_json(current))
        audience = resources_pb2.Audience(
            id=audience_id,
            name=values.get("name", ""),
            description=values.get("description") or "",
            conditions=_conditions_text(values.get("conditions", [])),
            segmentation=values.get("segmentation", False),
        )
        result = await self._schema.UpdateAudience(
            schema_service_pb2.UpdateAudienceRequest(
                audience=audience, update_mask=field_mask_pb2.FieldMask(paths=sorted(values))
            ),
            metadata=call.metadata,
        )
        return accepted(audience_json(result))

    async def archive(self, request: Request, call: Call) -> Response:
        await self._schema.ArchiveAudience(
            schema_service_pb2.ArchiveAudienceRequest(audience_id=path_id(request, "audience_id")),
            metadata=call.metadata,
        )
        return no_content()

    # Membership

    async def members(self, request: Request, call: Call) -> Response:
        audience_id = path_id(request, "audience_id")
        size = per_page(request, default=MEMBERS_DEFAULT_PER_PAGE, maximum=MEMBERS_MAX_PER_PAGE)
        answer = await self._profiles.ListAudienceMembers(
            profiles_pb.ListAudienceMembersRequest(
                audience_id=audience_id, page_size=size, page_token=request.query_params.get("page_token", "")
            ),
            metadata=call.metadata,
        )
        return link_next_page(
            JSONResponse([{"optimizely_user_id": user} for user in answer.optimizely_user_ids]),
            request,
            size=size,
            page_token=answer.next_page_token,
        )

    async def count(self, request: Request, call: Call) -> Response:
        answer = await self._profiles.CountAudienceMembers(
            profiles_pb.CountAudienceMembersRequest(audience_id=path_id(request, "audience_id")),
            metadata=call.metadata,
        )
        return JSONResponse({"audience_id": answer.audience_id, "count": answer.count})

    async def count_draft(self, request: Request, call: Call) -> Response:
        project_id = path_id(request, "project_id")
        values = _DRAFT.decode(await call.json())
        answer = await self._profiles.CountAudienceMembers(
            profiles_pb.CountAudienceMembersRequest(
                draft=profiles_pb.AudienceDraft(
                    project_id=project_id, conditions=_conditions_text(values.get("conditions", []))
                )
            ),
            metadata=call.metadata,
        )
        return JSONResponse({"count": answer.count})

    async def evaluate(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        evaluation = _evaluate_request(service_id, request.path_params["optimizely_user_id"], await call.json())
        evaluation.outcomes_as_json = True
        answer = await self._profiles.EvaluateAudiences(evaluation, metadata=call.metadata)
        head = orjson.dumps({"optimizelyUserId": answer.optimizely_user_id, "dcpServiceId": str(answer.dcp_service_id)})
        # A service that does not answer in JSON sends the outcomes as messages.
        audiences = answer.audiences_json or (
            b"[" + _encoded_audiences(answer.audiences, saved=not evaluation.HasField("draft")) + b"]"
        )
        # The head's closing brace gives way to the audiences: one document, as if encoded whole, copied once.
        return Response(b"".join((head[:-1], b',"audiences":', audiences, b"}")), media_type="application/json")

    # Exports

    async def _export(self, request: Request, call: Call, request_message: profiles_pb.CreateExportRequest) -> Response:
        # No body asks for the default format.
        bodiless = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
        body = {} if bodiless else await call.json()
        values = _EXPORT.decode(body)
        if values.get("format") == "":
            # On the wire "" means "not given"; a client that sends it asked for no format, not for CSV.
            raise ApiError.field("format", "must name a format (such as 'csv'); leave the field out for CSV")
        request_message.format = values.get("format", "csv")
        result = await self._profiles.CreateExport(request_message, metadata=call.metadata)
        return created(export_json(result))

    async def export_table(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        return await self._export(request, call, profiles_pb.CreateExportRequest(dcp_datasource_id=table_id))

    async def export_audience(self, request: Request, call: Call) -> Response:
        audience_id = path_id(request, "audience_id")
        return await self._export(request, call, profiles_pb.CreateExportRequest(audience_id=audience_id))

    async def _get_export(self, request: Request, call: Call, source: str, source_id: int) -> Response:
        result = await self._profiles.GetExport(
            profiles_pb.GetExportRequest(export_id=path_id(request, "export_id")), metadata=call.metadata
        )
        if result.WhichOneof("source") != source or getattr(result, source) != source_id:
            raise ApiError(404, f"export {result.id} is not an export of this resource", code="NOT_FOUND")
        return JSONResponse(export_json(result))

    async def get_export(self, request: Request, call: Call) -> Response:
        result = await self._profiles.GetExport(
            profiles_pb.GetExportRequest(export_id=path_id(request, "export_id")), metadata=call.metadata
        )
        return JSONResponse(export_json(result))

    async def _list_exports(self, request: Request, call: Call, listing: profiles_pb.ListExportsRequest) -> Response:
        # Paged as the upload history is: past exports are the same kind of record.
        size = per_page(request, default=HISTORY_DEFAULT_PER_PAGE, maximum=HISTORY_MAX_PER_PAGE)
        listing.page_size = size
        listing.page_token = request.query_params.get("page_token", "")
        answer = await self._profiles.ListExports(listing, metadata=call.metadata)
        return link_next_page(
            JSONResponse([export_json(e) for e in answer.exports]),
            request,
            size=size,
            page_token=answer.next_page_token,
        )

    async def service_exports(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        return await self._list_exports(request, call, profiles_pb.ListExportsRequest(dcp_service_id=service_id))

    async def table_exports(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        return await self._list_exports(request, call, profiles_pb.ListExportsRequest(dcp_datasource_id=table_id))

    async def audience_exports(self, request: Request, call: Call) -> Response:
        audience_id = path_id(request, "audience_id")
        return await self._list_exports(request, call, profiles_pb.ListExportsRequest(audience_id=audience_id))

    async def table_export(self, request: Request, call: Call) -> Response:
        return await self._get_export(request, call, "dcp_datasource_id", path_id(request, "table_id"))

    async def audience_export(self, request: Request, call: Call) -> Response:
        return await self._get_export(request, call, "audience_id", path_id(request, "audience_id"))
