"""The v1 profile API under /api: customer profiles, the consolidated view, aliases, resolve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dcp.aliases.v1 import aliases_service_pb2 as aliases_pb
from dcp.aliases.v1 import aliases_service_pb2_grpc as aliases_grpc
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from dcp.schema.v1 import schema_service_pb2, schema_service_pb2_grpc
from gateway.bodies import INT64_MAX
from gateway.config_api import Call, Endpoint, Wrap, method_route, path_id
from gateway.errors import ApiError
from gateway.openapi import DECIMAL_ID, TEXT, Body, Component, Header, Link, Operation, Reply, array, described, record
from gateway.responses import JSONResponse
from services._runtime.identity import CredentialKind, Scope
from services.profiles.client import profile_document, value_from_proto

PREFIX = "/api"
INT64_MIN = -(2**63)


def _value_to_proto(name: str, value: Any) -> profiles_pb.Value:
    """A JSON value as a typed wire value; the profiles service checks it against the attribute."""
    if value is None:
        return profiles_pb.Value(null_value=True)
    if isinstance(value, bool):
        return profiles_pb.Value(bool_value=value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ApiError.field(f"data.{name}", "must fit in a signed 64-bit integer")
        return profiles_pb.Value(long_value=value)
    if isinstance(value, float):
        return profiles_pb.Value(double_value=value)
    if isinstance(value, str):
        return profiles_pb.Value(string_value=value)
    kind = "an array" if isinstance(value, list) else "an object"
    raise ApiError.field(f"data.{name}", f"must be a string, number, boolean or null, got {kind}")


_VALUE = {
    "type": ["string", "number", "boolean", "null"],
    "description": "A value of the attribute's datatype: string, long, double, bool, or a datetime as text",
}
PROFILE = Component(
    "Profile",
    record(
        {
            "customerId": TEXT,
            "dcpServiceId": DECIMAL_ID,
            "datasourceId": DECIMAL_ID,
            "data": {
                "type": "object",
                "additionalProperties": _VALUE,
                "description": "The customer's values, by attribute name; archived attributes are left out",
            },
        }
    ),
)


def _profile(message: profiles_pb.Profile) -> dict[str, Any]:
    return profile_document(message.dcp_service_id, message.dcp_datasource_id, message.customer_id, _values(message))


def consolidated_answer(view: profiles_pb.ConsolidatedView) -> Response:
    """The REST answer to a consolidated read: the service's JSON array as it is, when it sent one."""
    if view.profiles_json:
        return Response(view.profiles_json, media_type="application/json")
    # A profiles service that predates profiles_as_json answers with messages (one with no
    # profiles to show sends "[]", never nothing).
    return JSONResponse([_profile(p) for p in view.profiles])


def _values(message: profiles_pb.Profile) -> Any:
    if message.data_json:
        # Asked for with data_as_json: the service's JSON object goes into the answer as it is.
        return orjson.Fragment(message.data_json)
    # A profiles service that predates data_as_json answers with the typed map alone. By key: a
    # protobuf map's items() is a generator written in Python, a seventh of the cost of its values.
    data = message.data
    return {name: value_from_proto(data[name]) for name in data}


ALIAS_SET = Component(
    "AliasSet",
    record(
        {
            "customerId": described(TEXT, "The Optimizely visitor id"),
            "dcpServiceId": DECIMAL_ID,
            "datasourceId": described(DECIMAL_ID, "The service's Optimizely table"),
            "data": {
                "type": "object",
                "propertyNames": {"pattern": "^[0-9]+$"},
                "additionalProperties": TEXT,
                "description": "The visitor's customer id in each table, by table id",
            },
        }
    ),
)
WHOAMI = Component(
    "WhoAmI",
    record(
        {
            "accountId": DECIMAL_ID,
            "accountName": TEXT,
            "scopes": array({"type": "string", "enum": [scope.value for scope in Scope]}),
            "credentialKind": {"type": "string", "enum": [kind.value for kind in CredentialKind]},
        }
    ),
)


def _alias_set(message: aliases_pb.AliasSet) -> dict[str, Any]:
    return {
        "customerId": message.optimizely_user_id,
        "dcpServiceId": str(message.dcp_service_id),
        "datasourceId": str(message.optimizely_datasource_id),
        "data": {str(table_id): customer_id for table_id, customer_id in sorted(message.customer_ids.items())},
    }


def _data_object(body: Any, *, allowed: frozenset[str] = frozenset({"data"})) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object with a 'data' object", code="MALFORMED_REQUEST")
    for key in body:
        if key not in allowed:
            raise ApiError.field(key, 'is not a field of this request; send {"data": {...}}')
    data = body.get("data")
    if not isinstance(data, dict):
        raise ApiError.field("data", "is required and must be a JSON object")
    return data


def _string_map(body: Mapping[str, Any], field: str) -> dict[str, str]:
    value = body.get(field, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError.field(field, "must be a JSON object of names to string values")
    result: dict[str, str] = {}
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ApiError.field(f"{field}.{name}", "must be a string")
        result[name] = str(item)
    return result


_PROFILE_WRITE = Body(
    record(
        {
            "data": {
                "type": "object",
                "additionalProperties": _VALUE,
                "description": "Values by attribute name; null clears one. Attributes not named keep their values",
            }
        }
    ),
    description="The values to merge into the profile",
)
_ALIASES_WRITE = Body(
    record(
        {
            "data": {
                "type": "object",
                "propertyNames": {"pattern": "^[0-9]{1,18}$"},
                "additionalProperties": TEXT,
                "minProperties": 1,
                "description": "Customer ids by table id, to link to the visitor",
            }
        }
    ),
    description="The links to add",
)
_LOCATOR_VALUES = {
    "type": ["object", "null"],
    "additionalProperties": {"type": ["string", "integer"], "minimum": INT64_MIN, "maximum": INT64_MAX},
}
_RESOLVE = Body(
    record(
        {
            "cookies": described(_LOCATOR_VALUES, "The visitor's cookies, by name"),
            "query": described(_LOCATOR_VALUES, "The page's query parameters, by name"),
            "js": described(_LOCATOR_VALUES, "JavaScript variables, by name"),
        },
        optional=["cookies", "query", "js"],
    ),
    description="Where the visitor's customer ids may be found, as each table's keyfield locator says",
)
_PROFILES = array(PROFILE)
GET_PROFILE = Operation(
    "getProfile", "Get a customer's profile in one table", "Profiles", {200: Reply("The profile", PROFILE)}
)
MERGE_PROFILE = Operation(
    "mergeProfile",
    "Write values to a customer's profile",
    "Profiles",
    {
        201: Reply(
            "The profile after the merge",
            PROFILE,
            links={
                "GetProfile": Link(
                    "getProfile",
                    {
                        "service_id": "$request.path.service_id",
                        "table_id": "$request.path.table_id",
                        "customer_id": "$request.path.customer_id",
                    },
                )
            },
        )
    },
    description="Each value is checked against its attribute's datatype; a service's PII guard may refuse values.",
    body=_PROFILE_WRITE,
)
DELETE_PROFILE = Operation(
    "deleteProfile", "Delete a customer's profile in one table", "Profiles", {204: Reply("Deleted")}
)
CONSOLIDATED = Operation(
    "getConsolidatedView",
    "A visitor's profiles in every table they are linked to",
    "Profiles",
    {200: Reply("The visitor's profile in each table they are linked to", _PROFILES)},
)
CONSOLIDATED_IN_TABLE = Operation(
    "getConsolidatedViewOfTable",
    "A visitor's profiles, naming the Optimizely table",
    "Profiles",
    {200: Reply("The visitor's profile in each table they are linked to", _PROFILES)},
)
GET_ALIASES = Operation(
    "getAliases", "Which customer of each table a visitor is", "Aliases", {200: Reply("The links", ALIAS_SET)}
)
MERGE_ALIASES = Operation(
    "mergeAliases",
    "Link customer ids to a visitor",
    "Aliases",
    {201: Reply("The visitor's links after the merge", ALIAS_SET)},
    body=_ALIASES_WRITE,
)
DELETE_ALIAS = Operation(
    "deleteAlias", "Unlink a visitor from one table's customer", "Aliases", {204: Reply("Unlinked")}
)
RESOLVE = Operation(
    "resolveVisitor",
    "Link a visitor by the locator values of their page, and get their consolidated view",
    "Profiles",
    {
        200: Reply(
            "The visitor's profiles after linking",
            _PROFILES,
            headers={
                "X-DCP-Skipped-Tables": Header(
                    {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
                    "Tables whose locator value was refused (e.g. a blocked placeholder id), comma-separated",
                )
            },
        )
    },
    body=_RESOLVE,
)
WHOAMI_OPERATION = Operation(
    "whoAmI", "The caller's account and what its credentials allow", "Account", {200: Reply("The caller", WHOAMI)}
)


class ProfileApi:
    def __init__(
        self,
        schema: schema_service_pb2_grpc.SchemaServiceAsyncStub,
        profiles: profiles_grpc.ProfilesServiceAsyncStub,
        aliases: aliases_grpc.AliasesServiceAsyncStub,
    ) -> None:
        self._schema = schema
        self._profiles = profiles
        self._aliases = aliases

    def routes(self, wrap: Wrap) -> list[Route]:
        def route(path: str, methods: dict[str, tuple[Endpoint, Operation]]) -> Route:
            return method_route(wrap, PREFIX + path, methods)

        return [
            route(
                "/customer_profile/{service_id}/{table_id}/{customer_id:path}",
                {
                    "GET": (self.get_profile, GET_PROFILE),
                    "POST": (self.merge_profile, MERGE_PROFILE),
                    "DELETE": (self.delete_profile, DELETE_PROFILE),
                },
            ),
            route("/consolidatedCustomerView/{service_id}/{user_id}", {"GET": (self.consolidated, CONSOLIDATED)}),
            route(
                "/consolidatedCustomerView/{service_id}/{optimizely_table_id}/{user_id:path}",
                {"GET": (self.consolidated, CONSOLIDATED_IN_TABLE)},
            ),
            route(
                "/alias/{service_id}/{optimizely_table_id}/{user_id}",
                {"GET": (self.get_aliases, GET_ALIASES), "POST": (self.merge_aliases, MERGE_ALIASES)},
            ),
            route(
                "/alias/{service_id}/{optimizely_table_id}/{user_id}/{table_id}",
                {"DELETE": (self.delete_alias, DELETE_ALIAS)},
            ),
            route("/resolve/{service_id}/{user_id}", {"POST": (self.resolve, RESOLVE)}),
            route("/whoami", {"GET": (self.whoami, WHOAMI_OPERATION)}),
        ]

    # Customer profiles

    async def get_profile(self, request: Request, call: Call) -> Response:
        result = await self._profiles.GetProfile(
            profiles_pb.GetProfileRequest(
                dcp_service_id=path_id(request, "service_id"),
                dcp_datasource_id=path_id(request, "table_id"),
                customer_id=request.path_params["customer_id"],
                data_as_json=True,
            ),
            metadata=call.metadata,
        )
        return JSONResponse(_profile(result))

    async def merge_profile(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        table_id = path_id(request, "table_id")
        data = _data_object(await call.json())
        result = await self._profiles.MergeProfile(
            profiles_pb.MergeProfileRequest(
                dcp_service_id=service_id,
                dcp_datasource_id=table_id,
                customer_id=request.path_params["customer_id"],
                data={name: _value_to_proto(name, value) for name, value in data.items()},
                data_as_json=True,
            ),
            metadata=call.metadata,
        )
        return JSONResponse(_profile(result), status_code=201)

    async def delete_profile(self, request: Request, call: Call) -> Response:
        await self._profiles.DeleteProfile(
            profiles_pb.DeleteProfileRequest(
                dcp_service_id=path_id(request, "service_id"),
                dcp_datasource_id=path_id(request, "table_id"),
                customer_id=request.path_params["customer_id"],
            ),
            metadata=call.metadata,
        )
        return Response(status_code=204)

    async def consolidated(self, request: Request, call: Call) -> Response:
        optimizely_table_id = (
            path_id(request, "optimizely_table_id") if "optimizely_table_id" in request.path_params else 0
        )
        result = await self._profiles.GetConsolidatedView(
            profiles_pb.GetConsolidatedViewRequest(
                dcp_service_id=path_id(request, "service_id"),
                optimizely_user_id=request.path_params["user_id"],
                optimizely_datasource_id=optimizely_table_id,
                data_as_json=True,
                profiles_as_json=True,
            ),
            metadata=call.metadata,
        )
        return consolidated_answer(result)

    # Aliases

    async def get_aliases(self, request: Request, call: Call) -> Response:
        result = await self._aliases.GetAliases(
            aliases_pb.GetAliasesRequest(
                dcp_service_id=path_id(request, "service_id"),
                optimizely_datasource_id=path_id(request, "optimizely_table_id"),
                optimizely_user_id=request.path_params["user_id"],
            ),
            metadata=call.metadata,
        )
        return JSONResponse(_alias_set(result))

    async def merge_aliases(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        optimizely_table_id = path_id(request, "optimizely_table_id")
        data = _data_object(await call.json())
        customer_ids: dict[int, str] = {}
        for key, customer_id in data.items():
            if not (key.isascii() and key.isdigit()) or len(key) > 18:
                raise ApiError.field(f"data.{key}", "keys must be table ids")
            if not isinstance(customer_id, str):
                raise ApiError.field(f"data.{key}", "must be a customer id string")
            customer_ids[int(key)] = customer_id
        result = await self._aliases.MergeAliases(
            aliases_pb.MergeAliasesRequest(
                dcp_service_id=service_id,
                optimizely_datasource_id=optimizely_table_id,
                optimizely_user_id=request.path_params["user_id"],
                customer_ids=customer_ids,
            ),
            metadata=call.metadata,
        )
        return JSONResponse(_alias_set(result), status_code=201)

    async def delete_alias(self, request: Request, call: Call) -> Response:
        await self._aliases.DeleteAlias(
            aliases_pb.DeleteAliasRequest(
                dcp_service_id=path_id(request, "service_id"),
                optimizely_datasource_id=path_id(request, "optimizely_table_id"),
                optimizely_user_id=request.path_params["user_id"],
                dcp_datasource_id=path_id(request, "table_id"),
            ),
            metadata=call.metadata,
        )
        return Response(status_code=204)

    async def whoami(self, request: Request, call: Call) -> Response:
        identity = await self._schema.WhoAmI(schema_service_pb2.WhoAmIRequest(), metadata=call.metadata)
        return JSONResponse(
            {
                "accountId": str(identity.account_id),
                "accountName": identity.account_name,
                "scopes": list(identity.scopes),
                "credentialKind": identity.credential_kind,
            }
        )

    # Resolving a visitor

    async def resolve(self, request: Request, call: Call) -> Response:
        service_id = path_id(request, "service_id")
        user_id = request.path_params["user_id"]
        body = await call.json()
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="MALFORMED_REQUEST")
        for key in body:
            if key not in ("cookies", "query", "js"):
                raise ApiError.field(key, "is not a field of this request; send cookies, query and js")
        resolution = await self._aliases.ResolveVisitor(
            aliases_pb.ResolveVisitorRequest(
                dcp_service_id=service_id,
                optimizely_user_id=user_id,
                cookies=_string_map(body, "cookies"),
                query=_string_map(body, "query"),
                js=_string_map(body, "js"),
            ),
            metadata=call.metadata,
        )
        view = await self._profiles.GetConsolidatedView(
            profiles_pb.GetConsolidatedViewRequest(
                dcp_service_id=service_id, optimizely_user_id=user_id, data_as_json=True
            ),
            metadata=call.metadata,
        )
        headers = {}
        if resolution.skipped:
            # The view is the answer; which tables' locator values were refused travels beside it.
            headers["X-DCP-Skipped-Tables"] = ",".join(str(s.dcp_datasource_id) for s in resolution.skipped)
        return JSONResponse([_profile(p) for p in view.profiles], headers=headers)
