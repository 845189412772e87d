"""The v1 config API under /experiment/v1: projects, services, tables, attributes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes, urlencode

import grpc
from google.protobuf import field_mask_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from gateway import v1json
from gateway.bodies import INT64_MAX, BodySpec, FieldType, truncated
from gateway.errors import ApiError, from_rpc_error
from gateway.openapi import Body, DocumentedRoute, Link, Operation, Reply, Schema, array
from gateway.responses import JSONResponse
from services._runtime.paging import all_pages
from services.domain.customer_ids import MAX_CUSTOMER_ID_LENGTH, customer_id_problem
from services.domain.limits import (
    MAX_BLOCKED_CUSTOMER_IDS,
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_USERS_PER_CUSTOMER_ID,
)

PREFIX = "/experiment/v1"

_PROJECT = BodySpec(
    writable={"project_name": FieldType("string"), "dcp_service_id": FieldType("integer", nullable=True)},
    read_only=frozenset({"id", "account_id", "created", "last_modified"}),
)
_SERVICE = BodySpec(
    writable={
        "name": FieldType("string"),
        "pii_guard": FieldType("boolean"),
        "alias_blocked_customer_ids": FieldType("string list"),
        "alias_max_users_per_customer_id": FieldType("integer"),
    },
    read_only=frozenset(
        {"id", "account_id", "archived", "aws_access_key", "aws_secret_key", "created", "last_modified", "s3_path"}
    ),
)
_TABLE = BodySpec(
    writable={
        "name": FieldType("string"),
        "description": FieldType("string", nullable=True),
        "keyfield_locator_type": FieldType("string"),
        "keyfield_locator_name": FieldType("string", nullable=True),
        "import_mode": FieldType("string", choices=tuple(v1json.IMPORT_MODE_VALUES)),
    },
    read_only=frozenset(
        {
            "id",
            "archived",
            "attributes",
            "aws_access_key",
            "aws_secret_key",
            "created",
            "dcp_service_id",
            "is_optimizely",
            "last_modified",
            "s3_path",
        }
    ),
)
# `archived` false unarchives, true archives; the schema service applies either with the other changes at once.
_TABLE_UPDATE = BodySpec(
    writable={**_TABLE.writable, "archived": FieldType("boolean")},
    read_only=_TABLE.read_only - {"archived"},
)
_ATTRIBUTE_CREATE = BodySpec(
    writable={
        "name": FieldType("string"),
        "datatype": FieldType("string"),
        "format": FieldType("string", nullable=True),
        "description": FieldType("string", nullable=True),
        "is_value_public": FieldType("boolean"),
    },
    read_only=frozenset({"id", "archived", "created", "last_modified", "dcp_datasource_id"}),
)
# Name and datatype never change; a client may send them back unchanged.
# The description's limit is checked here too: an unarchive in the same request
# happens before the edit and must not happen when the edit will be refused.
_ATTRIBUTE_UPDATE = BodySpec(
    writable={
        "description": FieldType("string", nullable=True, max_length=MAX_DESCRIPTION_LENGTH),
        "is_value_public": FieldType("boolean"),
        "archived": FieldType("boolean"),
    },
    read_only=frozenset({"id", "created", "last_modified", "dcp_datasource_id", "name", "datatype", "format"}),
)


class Call(Protocol):
    """What an endpoint gets: the caller's metadata and the parsed body."""

    metadata: tuple[tuple[str, str], ...]

    async def json(self) -> Any: ...


Endpoint = Callable[[Request, Call], Awaitable[Response]]


def path_id(request: Request, name: str) -> int:
    """An id from the path; anything that is not one cannot exist (404, naming the parameter)."""
    raw = request.path_params[name]
    # isdigit() alone admits other scripts' digits: Arabic-Indic one parses as 1, superscript two not at all.
    # The length is checked first so that int() never reads a huge number.
    problem = f"must be a positive integer of at most {MAX_ID_DIGITS} digits"
    if raw.isascii() and raw.isdigit() and len(raw) <= MAX_ID_DIGITS:
        number = int(raw)
        if 1 <= number <= INT64_MAX:
            return number
        problem = "ids start at 1; 0 names nothing" if number == 0 else f"must be at most {INT64_MAX}"
    raise ApiError(
        404, f"{truncated(raw)!r} is not an id of this API: {problem}", code="NOT_FOUND", errors=[(name, problem)]
    )


MAX_ID_DIGITS = len(str(INT64_MAX))
# Path parameters that hold a customer's or visitor's id rather than a numeric one.
TEXT_ID_PARAMETERS = frozenset({"customer_id", "user_id", "optimizely_user_id"})


def check_path(request: Request) -> None:
    """Refuses a path whose text ids could never be stored: bytes that are not UTF-8, control
    characters, or more characters than a customer id may have (the profiles service's rule).

    Starlette decodes percent-escapes leniently, turning invalid UTF-8 into U+FFFD, so that two
    different ids would name the same customer; the raw path is checked strictly instead.
    """
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes):
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            damaged = [n for n, v in request.path_params.items() if isinstance(v, str) and "\ufffd" in v]
            field = damaged[0] if damaged else "path"
            raise ApiError.field(field, "is not valid UTF-8 once percent-decoded") from None
    for name in TEXT_ID_PARAMETERS.intersection(request.path_params):
        value = request.path_params[name]
        problem = customer_id_problem(value, pii_guard=False) if isinstance(value, str) else None
        if problem is not None:
            raise ApiError.field(name, problem)


def per_page(request: Request, *, default: int, maximum: int) -> int:
    """The `per_page` query parameter of a paginated listing."""
    raw = request.query_params.get("per_page")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ApiError.field("per_page", f"must be an integer between 1 and {maximum}")
    return int(raw)


def link_next_page(response: Response, request: Request, *, size: int, page_token: str) -> Response:
    """Points a paginated listing's answer to its next page, if there is one (`Link: <...>; rel="next"`)."""
    if page_token:
        query = urlencode({"per_page": size, "page_token": page_token})
        response.headers["link"] = f'<{request.url.path}?{query}>; rel="next"'
    return response


def _locator_value(name: str | None) -> resources_pb2.LocatorType.ValueType:
    if name is None:
        return resources_pb2.LOCATOR_TYPE_UNSPECIFIED
    value = v1json.LOCATOR_VALUES.get(name)
    if value is None:
        choices = ", ".join(repr(n) for n in v1json.LOCATOR_VALUES)
        raise ApiError.field("keyfield_locator_type", f"must be one of {choices}, got {name!r}")
    return value


def _datatype_value(name: str | None) -> resources_pb2.Datatype.ValueType:
    if name is None:
        return resources_pb2.DATATYPE_UNSPECIFIED
    value = v1json.DATATYPE_VALUES.get(name)
    if value is None:
        choices = ", ".join(repr(n) for n in v1json.DATATYPE_VALUES)
        raise ApiError.field("datatype", f"must be one of {choices}, got {name!r}")
    return value


def _format_value(name: str | None) -> resources_pb2.DatetimeFormat.ValueType:
    if name is None:
        return resources_pb2.DATETIME_FORMAT_UNSPECIFIED
    value = v1json.FORMAT_VALUES.get(name)
    if value is None:
        choices = ", ".join(repr(n) for n in v1json.FORMAT_VALUES)
        raise ApiError.field("format", f"must be one of {choices}, got {name!r}")
    return value


def _service_error(error: grpc.aio.AioRpcError) -> Exception:
    """The schema service nests a service's guards under `guards.`; v1 has them at the top of the body."""
    if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return error
    api_error = from_rpc_error(error)
    api_error.errors = [(f.removeprefix("guards."), m) for f, m in api_error.errors]
    api_error.message = api_error.message.removeprefix("guards.")
    return api_error


def _service_message(values: dict[str, Any], service_id: int = 0) -> resources_pb2.DcpService:
    """A DCP service message holding the name and guards of a decoded body."""
    service = resources_pb2.DcpService(id=service_id, name=values.get("name", ""))
    if "pii_guard" in values:
        service.guards.pii_guard = values["pii_guard"]
    if "alias_blocked_customer_ids" in values:
        service.guards.alias_blocked_customer_ids.extend(values["alias_blocked_customer_ids"])
    if "alias_max_users_per_customer_id" in values:
        # Past int32 it is out of the service's range anyway, and says so.
        service.guards.alias_max_users_per_customer_id = min(values["alias_max_users_per_customer_id"], 2**31 - 1)
    return service


def _project_error(error: grpc.aio.AioRpcError) -> Exception:
    """The schema service calls a project's name `name`; v1 calls it `project_name`."""
    if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return error
    api_error = from_rpc_error(error)
    api_error.errors = [("project_name" if f == "name" else f, m) for f, m in api_error.errors]
    if api_error.message.startswith("name:"):
        api_error.message = "project_name:" + api_error.message.removeprefix("name:")
    return api_error


def created(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=201)


def accepted(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=202)


def no_content() -> Response:
    return Response(status_code=204)


Wrap = Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]


def path_parameter(name: str, converter: str = "str") -> Schema:
    """A path parameter's schema, as `path_id` and `check_path` take it."""
    if name in TEXT_ID_PARAMETERS:
        # Not blank, no control characters (the profiles service's rule for customer ids); and in one
        # path segment no '/', which (even escaped) would make the path another route's.
        schema: Schema = {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CUSTOMER_ID_LENGTH,
            "pattern": visible_text_pattern(also_excluded="" if converter == "path" else "/"),
        }
        return schema
    # int64 bounds it above; anything else is a 404 (see `path_id`).
    return {"type": "integer", "format": "int64", "minimum": 1}


def method_route(wrap: Wrap, path: str, methods: dict[str, tuple[Endpoint, Operation]]) -> Route:
    """One path whose methods go to their endpoints, each authenticated by `wrap` and documented by its operation."""
    handlers = {method: wrap(endpoint) for method, (endpoint, _) in methods.items()}

    async def dispatch(request: Request) -> Response:
        # Starlette routes HEAD wherever GET is allowed; answer it as GET.
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    operations = {method: operation for method, (_, operation) in methods.items()}
    parameters = [part[1:-1].partition(":") for part in path.split("/") if part.startswith("{")]
    return DocumentedRoute(
        path,
        dispatch,
        operations=operations,
        path_parameters={name: path_parameter(name, converter or "str") for name, _, converter in parameters},
    )


def body_of(spec: BodySpec, description: str, *, rules: Schema | None = None, **schema: Any) -> Body:
    """A JSON request body whose schema is `spec`'s (see `BodySpec.json_schema`), with `rules`
    between fields that the service checks (e.g. `if`/`then`) added to it."""
    return Body({**spec.json_schema(**schema), **(rules or {})}, description=description)


def _read_links(resource: str, parameter: str, *, get: str, update: str, archive: str | None = None) -> dict[str, Link]:
    """Links from an answer holding a resource's `id` to the operations on it."""
    links = {
        f"Get{resource}": Link(get, {parameter: "$response.body#/id"}, f"The {resource.lower()} just made"),
        f"Update{resource}": Link(update, {parameter: "$response.body#/id"}),
    }
    if archive is not None:
        links[f"Archive{resource}"] = Link(archive, {parameter: "$response.body#/id"})
    return links


def visible_text_pattern(also_excluded: str = "") -> str:
    """Text with no control characters and at least one that is not a space."""
    banned = "\\u0000-\\u001f\\u007f" + also_excluded
    return f"^[^{banned}]*[^\\s{banned}][^{banned}]*$"


# Names are the schema service's rule (`services/schema/rules.py`): documented here, checked there.
_NAME = {"minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": visible_text_pattern()}
_DESCRIPTION = {"maxLength": MAX_DESCRIPTION_LENGTH}

_PROJECT_LINKS = {
    **_read_links("Project", "project_id", get="getProject", update="updateProject"),
    "ListAudiences": Link("listAudiences", {"project_id": "$response.body#/id"}),
    "CreateAudience": Link("createAudience", {"project_id": "$response.body#/id"}),
}
_SERVICE_LINKS = {
    **_read_links(
        "DcpService", "service_id", get="getDcpService", update="updateDcpService", archive="archiveDcpService"
    ),
    "ListTables": Link("listTables", {"service_id": "$response.body#/id"}),
    "CreateTable": Link("createTable", {"service_id": "$response.body#/id"}),
    "ListExports": Link("listServiceExports", {"service_id": "$response.body#/id"}),
}
_TABLE_LINKS = {
    **_read_links("Table", "table_id", get="getTable", update="updateTable", archive="archiveTable"),
    "ListAttributes": Link("listAttributes", {"table_id": "$response.body#/id"}),
    "CreateAttribute": Link("createAttribute", {"table_id": "$response.body#/id"}),
    "ExportTable": Link("exportTable", {"table_id": "$response.body#/id"}),
    "ListUploads": Link("listUploads", {"table_id": "$response.body#/id"}),
    "CreateUploadUrl": Link("createUploadUrl", {"table_id": "$response.body#/id"}),
    "MergeProfile": Link(
        "mergeProfile", {"service_id": "$response.body#/dcp_service_id", "table_id": "$response.body#/id"}
    ),
}
_ATTRIBUTE_LINKS = _read_links(
    "Attribute", "attribute_id", get="getAttribute", update="updateAttribute", archive="archiveAttribute"
)
_ARCHIVED = Reply("Archived: it is hidden from lists and refuses new values; its data is kept")

LIST_PROJECTS = Operation(
    "listProjects", "List the account's projects", "Projects", {200: Reply("Every project", array(v1json.PROJECT))}
)
CREATE_PROJECT = Operation(
    "createProject",
    "Create a project",
    "Projects",
    {201: Reply("The project made", v1json.PROJECT, links=_PROJECT_LINKS)},
    body=body_of(_PROJECT, "The new project", required=["project_name"], refined={"project_name": _NAME}),
    errors=frozenset({404}),
)
GET_PROJECT = Operation("getProject", "Get a project", "Projects", {200: Reply("The project", v1json.PROJECT)})
UPDATE_PROJECT = Operation(
    "updateProject",
    "Change a project's name or the DCP service it is linked to",
    "Projects",
    {202: Reply("The project as changed", v1json.PROJECT)},
    description="Only the fields sent change; read-only fields may be sent back unchanged.",
    body=body_of(_PROJECT, "The fields to change", echoed=_PROJECT.read_only, refined={"project_name": _NAME}),
)
_SERVICE_LIMITS = {
    "name": _NAME,
    "alias_blocked_customer_ids": {
        "maxItems": MAX_BLOCKED_CUSTOMER_IDS,
        # Blank is allowed: "" is how a blank customer id is blocked (it is in the defaults).
        "items": {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": "^[^\\u0000-\\u001f\\u007f]*$"},
    },
    "alias_max_users_per_customer_id": {"minimum": 1, "maximum": MAX_USERS_PER_CUSTOMER_ID},
}
LIST_SERVICES = Operation(
    "listDcpServices",
    "List the account's DCP services",
    "DCP services",
    {200: Reply("Every DCP service of the account (at most one)", array(v1json.DCP_SERVICE))},
)
CREATE_SERVICE = Operation(
    "createDcpService",
    "Create the account's DCP service",
    "DCP services",
    {201: Reply("The service made, with its Optimizely table", v1json.DCP_SERVICE, links=_SERVICE_LINKS)},
    description="An account has one DCP service; a second is refused with 400. The guards sent are set with it, "
    "the others take their defaults.",
    body=body_of(_SERVICE, "The new service", required=["name"], refined=_SERVICE_LIMITS),
)
GET_SERVICE = Operation(
    "getDcpService", "Get a DCP service", "DCP services", {200: Reply("The service", v1json.DCP_SERVICE)}
)
UPDATE_SERVICE = Operation(
    "updateDcpService",
    "Rename a DCP service or change its guards",
    "DCP services",
    {202: Reply("The service as changed", v1json.DCP_SERVICE)},
    body=body_of(_SERVICE, "The fields to change", echoed=_SERVICE.read_only, refined=_SERVICE_LIMITS),
)
ARCHIVE_SERVICE = Operation("archiveDcpService", "Archive a DCP service", "DCP services", {204: _ARCHIVED})
_TABLE_LIMITS = {
    "name": _NAME,
    "description": _DESCRIPTION,
    "keyfield_locator_type": {"enum": list(v1json.LOCATOR_VALUES)},
    "keyfield_locator_name": {"maxLength": MAX_NAME_LENGTH, "pattern": "^([a-zA-Z_][a-zA-Z_0-9$]*)?$"},
}
LIST_TABLES = Operation(
    "listTables",
    "List a DCP service's tables",
    "Tables",
    {200: Reply("Every table of the service, its Optimizely table first", array(v1json.TABLE))},
)
CREATE_TABLE = Operation(
    "createTable",
    "Create a table",
    "Tables",
    {201: Reply("The table made", v1json.TABLE, links=_TABLE_LINKS)},
    description="keyfield_locator_name is required unless keyfield_locator_type is 'uid', where it must be null.",
    body=body_of(
        _TABLE,
        "The new table",
        required=["name", "keyfield_locator_type"],
        echoed=["dcp_service_id"],
        refined=_TABLE_LIMITS,
        rules={
            "if": {"required": ["keyfield_locator_type"], "properties": {"keyfield_locator_type": {"const": "uid"}}},
            "then": {"properties": {"keyfield_locator_name": {"enum": [None, ""]}}},
            "else": {"required": ["keyfield_locator_name"], "properties": {"keyfield_locator_name": {"minLength": 1}}},
        },
    ),
)
GET_TABLE = Operation("getTable", "Get a table", "Tables", {200: Reply("The table", v1json.TABLE)})
UPDATE_TABLE = Operation(
    "updateTable",
    "Change a table, or archive or unarchive it",
    "Tables",
    {202: Reply("The table as changed", v1json.TABLE)},
    body=body_of(_TABLE_UPDATE, "The fields to change", echoed=_TABLE_UPDATE.read_only, refined=_TABLE_LIMITS),
)
ARCHIVE_TABLE = Operation("archiveTable", "Archive a table", "Tables", {204: _ARCHIVED})
LIST_ATTRIBUTES = Operation(
    "listAttributes",
    "List a table's attributes",
    "Attributes",
    {200: Reply("Every attribute of the table, archived ones included", array(v1json.ATTRIBUTE))},
)
CREATE_ATTRIBUTE = Operation(
    "createAttribute",
    "Register an attribute",
    "Attributes",
    {201: Reply("The attribute registered; it is writable at once", v1json.ATTRIBUTE, links=_ATTRIBUTE_LINKS)},
    description="format is required for datatype 'datetime' and must be null for the others.",
    body=body_of(
        _ATTRIBUTE_CREATE,
        "The new attribute",
        required=["name", "datatype"],
        echoed=["dcp_datasource_id"],
        rules={
            "if": {"required": ["datatype"], "properties": {"datatype": {"const": "datetime"}}},
            "then": {"required": ["format"], "properties": {"format": {"type": "string"}}},
            "else": {"properties": {"format": {"type": "null"}}},
        },
        refined={
            "name": _NAME,
            "description": _DESCRIPTION,
            "datatype": {"enum": list(v1json.DATATYPE_VALUES)},
            "format": {"enum": [*v1json.FORMAT_VALUES, None]},
        },
    ),
)
GET_ATTRIBUTE = Operation(
    "getAttribute", "Get an attribute", "Attributes", {200: Reply("The attribute", v1json.ATTRIBUTE)}
)
UPDATE_ATTRIBUTE = Operation(
    "updateAttribute",
    "Change an attribute's description or visibility, or archive or unarchive it",
    "Attributes",
    {202: Reply("The attribute as changed", v1json.ATTRIBUTE)},
    description="Name, datatype and format never change; they may be sent back unchanged.",
    body=body_of(_ATTRIBUTE_UPDATE, "The fields to change", echoed=_ATTRIBUTE_UPDATE.read_only),
)
ARCHIVE_ATTRIBUTE = Operation(
    "archiveAttribute",
    "Archive an attribute",
    "Attributes",
    {204: Reply("Archived: its values are no longer read or written; they are kept")},
)


class ConfigApi:
    def __init__(self, schema: schema_service_pb2_grpc.SchemaServiceAsyncStub) -> None:
        self._schema = schema

    def routes(self, wrap: Wrap) -> list[Route]:
        def route(path: str, methods: dict[str, tuple[Endpoint, Operation]]) -> Route:
            return method_route(wrap, PREFIX + path, methods)

        return [
            route(
                "/projects", {"GET": (self.list_projects, LIST_PROJECTS), "POST": (self.create_project, CREATE_PROJECT)}
            ),
            route(
                "/projects/{project_id}",
                {"GET": (self.get_project, GET_PROJECT), "PUT": (self.update_project, UPDATE_PROJECT)},
            ),
            route(
                "/dcp_services",
                {"GET": (self.list_services, LIST_SERVICES), "POST": (self.create_service, CREATE_SERVICE)},
            ),
            route(
                "/dcp_services/{service_id}",
                {
                    "GET": (self.get_service, GET_SERVICE),
                    "PUT": (self.update_service, UPDATE_SERVICE),
                    "DELETE": (self.archive_service, ARCHIVE_SERVICE),
                },
            ),
            route(
                "/dcp_services/{service_id}/dcp_datasources",
                {"GET": (self.list_tables, LIST_TABLES), "POST": (self.create_table, CREATE_TABLE)},
            ),
            route(
                "/dcp_datasources/{table_id}",
                {
                    "GET": (self.get_table, GET_TABLE),
                    "PUT": (self.update_table, UPDATE_TABLE),
                    "DELETE": (self.archive_table, ARCHIVE_TABLE),
                },
            ),
            route(
                "/dcp_datasources/{table_id}/dcp_datasource_attributes",
                {"GET": (self.list_attributes, LIST_ATTRIBUTES), "POST": (self.create_attribute, CREATE_ATTRIBUTE)},
            ),
            route(
                "/dcp_datasource_attributes/{attribute_id}",
                {
                    "GET": (self.get_attribute, GET_ATTRIBUTE),
                    "PUT": (self.update_attribute, UPDATE_ATTRIBUTE),
                    "DELETE": (self.archive_attribute, ARCHIVE_ATTRIBUTE),
                },
            ),
        ]

    # Projects

    async def list_projects(self, request: Request, call: Call) -> Response:
        pages = all_pages(
            lambda token: self._schema.ListProjects(
                schema_service_pb2.ListProjectsRequest(page_size=1000, page_token=token), metadata=call.metadata
            )
        )
        return JSONResponse([v1json.project(p) async for page in pages for p in page.projects])

    async def create_project(self, request: Request, call: Call) -> Response:
        values = _PROJECT.decode(await call.json())
        project = resources_pb2.Project(name=values.get("project_name", ""))
        if values.get("dcp_service_id") is not None:
            project.dcp_service_id = values["dcp_service_id"]
        try:
            result = await self._schema.CreateProject(
                schema_service_pb2.CreateProjectRequest(project=project), metadata=call.metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _project_error(error) from None
        return created(v1json.project(result))

    async def get_project(self, request: Request, call: Call) -> Response:
        result = await self._schema.GetProject(
            schema_service_pb2.GetProjectRequest(project_id=path_id(request, "project_id")), metadata=call.metadata
        )
        return JSONResponse(v1json.project(result))

    async def update_project(self, request: Request, call: Call) -> Response:
        project_id = path_id(request, "project_id")
        body = await call.json()
        current = await self._schema.GetProject(
            schema_service_pb2.GetProjectRequest(project_id=project_id), metadata=call.metadata
        )
        values = _PROJECT.decode(body, current=v1json.project(current))
        project = resources_pb2.Project(id=project_id, name=values.get("project_name", ""))
        paths = []
        if "project_name" in values:
            paths.append("name")
        if "dcp_service_id" in values:
            paths.append("dcp_service_id")
            if values["dcp_service_id"] is not None:
                project.dcp_service_id = values["dcp_service_id"]
        if not paths:
            return accepted(v1json.project(current))
        try:
            result = await self._schema.UpdateProject(
                schema_service_pb2.UpdateProjectRequest(
                    project=project, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=call.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _project_error(error) from None
        return accepted(v1json.project(result))

    # DCP services

    async def list_services(self, request: Request, call: Call) -> Response:
        pages = all_pages(
            lambda token: self._schema.ListDcpServices(
                schema_service_pb2.ListDcpServicesRequest(page_size=1000, page_token=token), metadata=call.metadata
            )
        )
        return JSONResponse([v1json.dcp_service(s) async for page in pages for s in page.dcp_services])

    async def create_service(self, request: Request, call: Call) -> Response:
        values = _SERVICE.decode(await call.json())
        service = _service_message(values)
        # The guards sent are set with the service; the others keep their defaults.
        guards = [f"guards.{field}" for field in values if field != "name"]
        try:
            result = await self._schema.CreateDcpService(
                schema_service_pb2.CreateDcpServiceRequest(
                    dcp_service=service, guards_mask=field_mask_pb2.FieldMask(paths=guards)
                ),
                metadata=call.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _service_error(error) from None
        return created(v1json.dcp_service(result))

    async def get_service(self, request: Request, call: Call) -> Response:
        result = await self._schema.GetDcpService(
            schema_service_pb2.GetDcpServiceRequest(dcp_service_id=path_id(request, "service_id")),
            metadata=call.metadata,
        )
        return JSONResponse(v1json.dcp_service(result))

    async def update_service(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        body = await call.json()
        current = await self._schema.GetDcpService(
            schema_service_pb2.GetDcpServiceRequest(dcp_service_id=service_id), metadata=call.metadata
        )
        values = _SERVICE.decode(body, current=v1json.dcp_service(current))
        if not values:
            return accepted(v1json.dcp_service(current))
        service = _service_message(values, service_id)
        paths = ["name" if field == "name" else f"guards.{field}" for field in values]
        try:
            result = await self._schema.UpdateDcpService(
                schema_service_pb2.UpdateDcpServiceRequest(
                    dcp_service=service, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=call.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _service_error(error) from None
        return accepted(v1json.dcp_service(result))

    async def archive_service(self, request: Request, call: Call) -> Response:
        await self._schema.ArchiveDcpService(
            schema_service_pb2.ArchiveDcpServiceRequest(dcp_service_id=path_id(request, "service_id")),
            metadata=call.metadata,
        )
        return no_content()

    # Tables

    async def list_tables(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        pages = all_pages(
            lambda token: self._schema.ListTables(
                schema_service_pb2.ListTablesRequest(dcp_service_id=service_id, page_size=1000, page_token=token),
                metadata=call.metadata,
            )
        )
        return JSONResponse([v1json.table(t) async for page in pages for t in page.tables])

    async def create_table(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        values = _TABLE.decode(await call.json(), current={"dcp_service_id": service_id})
        table = resources_pb2.Table(
            name=values.get("name", ""), keyfield_locator_type=_locator_value(values.get("keyfield_locator_type"))
        )
        if values.get("description") is not None:
            table.description = values["description"]
        if values.get("keyfield_locator_name") is not None:
            table.keyfield_locator_name = values["keyfield_locator_name"]
        if "import_mode" in values:
            table.import_mode = v1json.IMPORT_MODE_VALUES[values["import_mode"]]
        result = await self._schema.CreateTable(
            schema_service_pb2.CreateTableRequest(dcp_service_id=service_id, table=table), metadata=call.metadata
        )
        return created(v1json.table(result))

    async def get_table(self, request: Request, call: Call) -> Response:
        result = await self._schema.GetTable(
            schema_service_pb2.GetTableRequest(dcp_datasource_id=path_id(request, "table_id")), metadata=call.metadata
        )
        return JSONResponse(v1json.table(result))

    async def update_table(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        body = await call.json()
        current = await self._schema.GetTable(
            schema_service_pb2.GetTableRequest(dcp_datasource_id=table_id), metadata=call.metadata
        )
        values = _TABLE_UPDATE.decode(body, current=v1json.table(current))
        table = resources_pb2.Table(id=table_id, name=values.get("name", ""), archived=values.get("archived", False))
        if values.get("description") is not None:
            table.description = values["description"]
        if "keyfield_locator_type" in values:
            table.keyfield_locator_type = _locator_value(values["keyfield_locator_type"])
        if values.get("keyfield_locator_name") is not None:
            table.keyfield_locator_name = values["keyfield_locator_name"]
        if "import_mode" in values:
            table.import_mode = v1json.IMPORT_MODE_VALUES[values["import_mode"]]
        if not values:
            return accepted(v1json.table(current))
        result = await self._schema.UpdateTable(
            schema_service_pb2.UpdateTableRequest(
                table=table, update_mask=field_mask_pb2.FieldMask(paths=list(values))
            ),
            metadata=call.metadata,
        )
        return accepted(v1json.table(result))

    async def archive_table(self, request: Request, call: Call) -> Response:
        await self._schema.ArchiveTable(
            schema_service_pb2.ArchiveTableRequest(dcp_datasource_id=path_id(request, "table_id")),
            metadata=call.metadata,
        )
        return no_content()

    # Attributes

    async def list_attributes(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        pages = all_pages(
            lambda token: self._schema.ListAttributes(
                schema_service_pb2.ListAttributesRequest(dcp_datasource_id=table_id, page_size=1000, page_token=token),
                metadata=call.metadata,
            )
        )
        return JSONResponse([v1json.attribute(a) async for page in pages for a in page.attributes])

    async def create_attribute(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        values = _ATTRIBUTE_CREATE.decode(await call.json(), current={"dcp_datasource_id": table_id})
        attribute = resources_pb2.Attribute(
            name=values.get("name", ""),
            datatype=_datatype_value(values.get("datatype")),
            format=_format_value(values.get("format")),
            is_value_public=values.get("is_value_public", False),
        )
        if values.get("description") is not None:
            attribute.description = values["description"]
        result = await self._schema.CreateAttribute(
            schema_service_pb2.CreateAttributeRequest(dcp_datasource_id=table_id, attribute=attribute),
            metadata=call.metadata,
        )
        return created(v1json.attribute(result))

    async def get_attribute(self, request: Request, call: Call) -> Response:
        result = await self._schema.GetAttribute(
            schema_service_pb2.GetAttributeRequest(attribute_id=path_id(request, "attribute_id")),
            metadata=call.metadata,
        )
        return JSONResponse(v1json.attribute(result))

    async def update_attribute(self, request: Request, call: Call) -> Response:
        attribute_id = path_id(request, "attribute_id")
        body = await call.json()
        current = await self._schema.GetAttribute(
            schema_service_pb2.GetAttributeRequest(attribute_id=attribute_id), metadata=call.metadata
        )
        values = _ATTRIBUTE_UPDATE.decode(body, current=v1json.attribute(current))
        result = current
        # Unarchive before editing, archive after, so an edit never lands on
        # an attribute the same request is about to hide.
        if values.get("archived") is False and current.archived:
            result = await self._schema.UnarchiveAttribute(
                schema_service_pb2.UnarchiveAttributeRequest(attribute_id=attribute_id), metadata=call.metadata
            )
        paths = [p for p in ("description", "is_value_public") if p in values]
        if paths:
            attribute = resources_pb2.Attribute(id=attribute_id, is_value_public=values.get("is_value_public", False))
            if values.get("description") is not None:
                attribute.description = values["description"]
            result = await self._schema.UpdateAttribute(
                schema_service_pb2.UpdateAttributeRequest(
                    attribute=attribute, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=call.metadata,
            )
        if values.get("archived") is True and not current.archived:
            await self._schema.ArchiveAttribute(
                schema_service_pb2.ArchiveAttributeRequest(attribute_id=attribute_id), metadata=call.metadata
            )
            result = await self._schema.GetAttribute(
                schema_service_pb2.GetAttributeRequest(attribute_id=attribute_id), metadata=call.metadata
            )
        return accepted(v1json.attribute(result))

    async def archive_attribute(self, request: Request, call: Call) -> Response:
        await self._schema.ArchiveAttribute(
            schema_service_pb2.ArchiveAttributeRequest(attribute_id=path_id(request, "attribute_id")),
            metadata=call.metadata,
        )
        return no_content()
