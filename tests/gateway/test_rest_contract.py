"""The REST surface is stated twice, as `google.api.http` annotations on the RPCs and as the gateway's
routes; these tests hold the two to one another, so neither can drift without the other noticing.

The v1 surface is every route under /experiment/v1/ and /api/ except their index pages; the rest (the
site root, health, the OpenAPI document and its docs, the console's files, /metrics) belongs to no RPC.

Path variables are compared by position, not by name: the gateway keeps the names of the public v1 paths
while the protos name request fields. The gateway's names map to request fields as follows:
    {service_id}          -> dcp_service_id (or dcp_service.id in an update)
    {table_id}            -> dcp_datasource_id (or table.id in an update)
    {optimizely_table_id} -> optimizely_datasource_id
    {user_id}             -> optimizely_user_id
    {<resource>_id}       -> <resource>_id, or <resource>.id where the request carries the resource
Every proto variable must name a field of the request message, and must be the gateway's variable under
this mapping, so two swapped variables do not pass.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType

import grpc
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from starlette.applications import Starlette
from starlette.routing import Route

import dcp
from gateway.app import GatewayClients, create_app
from gateway.console_files import ConsoleStore

# The index pages ("/experiment/v1/", "/api/") are links, not API operations.
V1_SURFACE = re.compile(r"^/(experiment/v1|api)/.+")
# `{name}`, `{name:converter}` (Starlette) and `{name=pattern}` (google.api.http) are all one variable.
VARIABLE = re.compile(r"{([\w.]+)(?:[:=][^}]*)?}")
# A variable that takes the rest of the path, slashes included: Starlette's `path` converter, `=**` in a binding.
REST_OF_PATH = re.compile(r"{[\w.]+(?::path|=\*\*)}")


def _takes_slashes(path: str) -> list[bool]:
    return [bool(REST_OF_PATH.fullmatch(variable[0])) for variable in VARIABLE.finditer(path)]


GATEWAY_TO_FIELD = {
    "service_id": "dcp_service_id",
    "table_id": "dcp_datasource_id",
    "optimizely_table_id": "optimizely_datasource_id",
    "user_id": "optimizely_user_id",
}

# REST routes that cannot be the binding of one RPC, each with the reason.
NOT_ONE_RPC = {
    ("GET", "/experiment/v1/dcp_datasources/{}/exports/{}"): (
        "GetExport read through its table: GetExportRequest names the export alone (AIP-131), and the "
        "gateway answers 404 when the export is not of the table in the path"
    ),
    ("GET", "/experiment/v1/audiences/{}/exports/{}"): (
        "GetExport read through its audience: GetExportRequest names the export alone (AIP-131), and the "
        "gateway answers 404 when the export is not of the audience in the path"
    ),
}


@dataclass(frozen=True)
class Binding:
    rpc: str
    method: str
    path: str
    body: str
    request: Descriptor

    @property
    def template(self) -> str:
        return VARIABLE.sub("{}", self.path)

    @property
    def variables(self) -> list[str]:
        return VARIABLE.findall(self.path)


def _generated_modules() -> Iterator[ModuleType]:
    for module in pkgutil.walk_packages(dcp.__path__, prefix="dcp."):
        if module.name.endswith("_pb2"):
            yield importlib.import_module(module.name)


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    for additional in rule.additional_bindings:
        yield from _rules(additional)


def _binding(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Binding:
    kind = rule.WhichOneof("pattern")
    assert kind is not None, f"{method.full_name}: an http rule without a method and path"
    if kind == "custom":
        verb, path = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, path = kind.upper(), getattr(rule, kind)
    return Binding(method.full_name, verb, path, rule.body, method.input_type)


def _bindings() -> list[Binding]:
    found: list[Binding] = []
    for module in _generated_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    found.extend(_binding(method, rule) for rule in _rules(options.Extensions[annotations_pb2.http]))
    return found


def _field(request: Descriptor, dotted: str) -> FieldDescriptor | None:
    """The field a dotted path names in a message (`audience.project_id`), if it names one."""
    field: FieldDescriptor | None = None
    message: Descriptor | None = request
    for part in dotted.split("."):
        if message is None:
            return None
        field = message.fields_by_name.get(part)
        if field is None:
            return None
        message = field.message_type
    return field


def _same_variable(gateway: str, proto: str) -> bool:
    wanted = {gateway, GATEWAY_TO_FIELD.get(gateway, gateway)}
    return bool(wanted & {proto, proto.replace(".", "_"), proto.rsplit(".", 1)[-1]})


@pytest.fixture
async def app() -> AsyncIterator[Starlette]:
    # Routes are declared when the app is built; no call goes over this channel, so nothing need listen.
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    try:
        yield create_app(GatewayClients.over(channel), console=ConsoleStore(None, "bucket", "us-east-1"))
    finally:
        await channel.close(None)


def _v1_routes(app: Starlette) -> dict[tuple[str, str], str]:
    """The v1 surface: (method, template) -> the gateway's path, HEAD left out (Starlette adds it to GET)."""
    routes = {}
    for route in app.routes:
        if isinstance(route, Route) and V1_SURFACE.match(route.path):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                routes[(method, VARIABLE.sub("{}", route.path))] = route.path
    return routes


def test_every_binding_names_fields_of_its_request() -> None:
    bindings = _bindings()
    assert bindings, "no RPC carries a google.api.http annotation: the descriptors were not read"
    problems = []
    for binding in bindings:
        for variable in binding.variables:
            field = _field(binding.request, variable)
            if field is None:
                problems.append(f"{binding.rpc}: {{{variable}}} is not a field of {binding.request.full_name}")
            elif field.message_type is not None or field.is_repeated:
                problems.append(f"{binding.rpc}: {{{variable}}} is not a single scalar field")
        if binding.body not in ("", "*") and binding.request.fields_by_name.get(binding.body) is None:
            problems.append(f"{binding.rpc}: body {binding.body!r} is not a field of {binding.request.full_name}")
        if binding.method in ("GET", "DELETE") and binding.body:
            problems.append(f"{binding.rpc}: {binding.method} {binding.path} declares a body")
    assert not problems, "\n".join(problems)


async def test_every_v1_route_is_the_binding_of_exactly_one_rpc(app: Starlette) -> None:
    routes = _v1_routes(app)
    assert ("GET", "/experiment/v1/projects") in routes, "the v1 routes were not found in the app"
    by_route: dict[tuple[str, str], list[Binding]] = {}
    for binding in _bindings():
        by_route.setdefault((binding.method, binding.template), []).append(binding)
    problems = []
    for key, path in sorted(routes.items()):
        bound = by_route.get(key, [])
        if key in NOT_ONE_RPC:
            if bound:
                problems.append(f"{key[0]} {path} is listed as having no RPC, yet {bound[0].rpc} binds it")
            continue
        if len(bound) != 1:
            rpcs = ", ".join(b.rpc for b in bound) or "no RPC"
            problems.append(f"{key[0]} {path} is served by the gateway and bound by {rpcs}")
            continue
        if _takes_slashes(path) != _takes_slashes(bound[0].path):
            problems.append(
                f"{key[0]} {path}: {bound[0].rpc} binds {bound[0].path}, which differs in what takes slashes"
            )
        gateway_names = VARIABLE.findall(path)
        for gateway, proto in zip(gateway_names, bound[0].variables, strict=True):
            if not _same_variable(gateway, proto):
                problems.append(f"{key[0]} {path}: {bound[0].rpc} has {{{proto}}} where the gateway says {{{gateway}}}")
    for key in NOT_ONE_RPC:
        if key not in routes:
            problems.append(f"{key[0]} {key[1]} is listed as an exception but the gateway does not serve it")
    assert not problems, "\n".join(problems)


async def test_every_binding_is_a_route_the_gateway_serves(app: Starlette) -> None:
    routes = _v1_routes(app)
    missing = [
        f"{binding.rpc}: {binding.method} {binding.path}"
        for binding in _bindings()
        if (binding.method, binding.template) not in routes
    ]
    assert not missing, "bound but not served by the gateway:\n" + "\n".join(missing)
