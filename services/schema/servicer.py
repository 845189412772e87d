"""gRPC face of the registry: decode, call the domain, encode."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import timedelta

import orjson
from google.protobuf import duration_pb2, empty_pb2, field_mask_pb2

from dcp.common.v1 import identity_pb2
from dcp.schema.v1 import resources_pb2, schema_service_pb2, schema_service_pb2_grpc
from services._runtime.errors import InvalidArgument
from services._runtime.grpc_types import ServicerContext
from services._runtime.identity import AssertionSigner, Scope, caller
from services._runtime.paging import next_token, read_page
from services._runtime.server import ServiceBinding
from services.schema import convert
from services.schema.audiences import AudienceChanges, Audiences
from services.schema.catalog import Catalog, ServiceChanges, TableChanges
from services.schema.credentials import Credentials

Context = ServicerContext

# The importer lists every table of every account each time it looks for
# files, so its pages are larger than an account's listings.
IMPORT_TARGETS_DEFAULT_PAGE_SIZE = 1000
IMPORT_TARGETS_MAX_PAGE_SIZE = 5000


def _mask_paths(
    mask: field_mask_pb2.FieldMask, allowed: Iterable[str], present: Iterable[str], *, field: str = "update_mask"
) -> set[str]:
    """The fields to change: the mask's paths, or, with no mask, the fields set."""
    allowed_set = set(allowed)
    if not mask.paths:
        return set(present) & allowed_set
    unknown = [p for p in mask.paths if p not in allowed_set]
    if unknown:
        raise InvalidArgument.field(
            field, f"cannot set {', '.join(unknown)}; settable: {', '.join(sorted(allowed_set))}"
        )
    return set(mask.paths)


_GUARD_PATHS = (
    "guards.pii_guard",
    "guards.alias_blocked_customer_ids",
    "guards.alias_max_users_per_customer_id",
)


def _present_guards(guards: resources_pb2.ServiceGuards) -> set[str]:
    present = set()
    if guards.HasField("pii_guard"):
        present.add("guards.pii_guard")
    if guards.alias_blocked_customer_ids:
        present.add("guards.alias_blocked_customer_ids")
    if guards.HasField("alias_max_users_per_customer_id"):
        present.add("guards.alias_max_users_per_customer_id")
    return present


def _service_changes(service: resources_pb2.DcpService, paths: set[str]) -> ServiceChanges:
    guards = service.guards
    return ServiceChanges(
        name=service.name if "name" in paths else None,
        pii_guard=guards.pii_guard if "guards.pii_guard" in paths else None,
        alias_blocked_customer_ids=list(guards.alias_blocked_customer_ids)
        if "guards.alias_blocked_customer_ids" in paths
        else None,
        alias_max_users_per_customer_id=guards.alias_max_users_per_customer_id
        if "guards.alias_max_users_per_customer_id" in paths
        else None,
    )


class SchemaServicer(schema_service_pb2_grpc.SchemaServiceServicer):
    def __init__(self, catalog: Catalog, audiences: Audiences, credentials: Credentials) -> None:
        self._catalog = catalog
        self._audiences = audiences
        self._credentials = credentials

    async def WhoAmI(self, request: schema_service_pb2.WhoAmIRequest, context: Context) -> identity_pb2.CallerIdentity:
        identity = caller(Scope.READ)
        message = convert.identity_to_proto(identity)
        message.account_name = await self._credentials.account_name(identity.account_id)
        return message

    # Projects

    async def ListProjects(
        self, request: schema_service_pb2.ListProjectsRequest, context: Context
    ) -> schema_service_pb2.ListProjectsResponse:
        account = caller(Scope.READ).account_id
        scope = f"projects:{account}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        projects = await self._catalog.list_projects(account, page)
        return schema_service_pb2.ListProjectsResponse(
            projects=[convert.project_to_proto(p) for p in projects[: page.size]],
            next_page_token=next_token([p.id for p in projects], page, scope=scope),
        )

    async def GetProject(
        self, request: schema_service_pb2.GetProjectRequest, context: Context
    ) -> resources_pb2.Project:
        account = caller(Scope.READ).account_id
        return convert.project_to_proto(await self._catalog.get_project(account, request.project_id))

    async def CreateProject(
        self, request: schema_service_pb2.CreateProjectRequest, context: Context
    ) -> resources_pb2.Project:
        account = caller(Scope.WRITE).account_id
        project = request.project
        service_id = project.dcp_service_id if project.HasField("dcp_service_id") else None
        return convert.project_to_proto(await self._catalog.create_project(account, project.name, service_id))

    async def UpdateProject(
        self, request: schema_service_pb2.UpdateProjectRequest, context: Context
    ) -> resources_pb2.Project:
        account = caller(Scope.WRITE).account_id
        project = request.project
        present = {"name"} if project.name else set()
        if project.HasField("dcp_service_id"):
            present.add("dcp_service_id")
        paths = _mask_paths(request.update_mask, ("name", "dcp_service_id"), present)
        updated = await self._catalog.update_project(
            account,
            project.id,
            name=project.name if "name" in paths else None,
            dcp_service_id=project.dcp_service_id if project.HasField("dcp_service_id") else None,
            link="dcp_service_id" in paths,
        )
        return convert.project_to_proto(updated)

    # Audiences

    async def ListAudiences(
        self, request: schema_service_pb2.ListAudiencesRequest, context: Context
    ) -> schema_service_pb2.ListAudiencesResponse:
        account = caller(Scope.READ).account_id
        if bool(request.project_id) == bool(request.dcp_service_id):
            raise InvalidArgument.field("project_id", "give either project_id or dcp_service_id")
        if request.project_id:
            scope = f"audiences:{account}:project:{request.project_id}"
            page = read_page(request.page_size, request.page_token, scope=scope)
            audiences = await self._audiences.list_in_project(account, request.project_id, page)
        else:
            wanted = sorted(set(request.audience_ids))
            scope = f"audiences:{account}:service:{request.dcp_service_id}:{wanted}"
            page = read_page(request.page_size, request.page_token, scope=scope)
            audiences = await self._audiences.list_for_service(account, request.dcp_service_id, wanted, page)
        return schema_service_pb2.ListAudiencesResponse(
            audiences=[convert.audience_to_proto(a) for a in audiences[: page.size]],
            next_page_token=next_token([a.id for a in audiences], page, scope=scope),
        )

    async def GetAudience(
        self, request: schema_service_pb2.GetAudienceRequest, context: Context
    ) -> resources_pb2.Audience:
        account = caller(Scope.READ).account_id
        return convert.audience_to_proto(await self._audiences.get(account, request.audience_id))

    async def CreateAudience(
        self, request: schema_service_pb2.CreateAudienceRequest, context: Context
    ) -> resources_pb2.Audience:
        account = caller(Scope.WRITE).account_id
        audience = request.audience
        created = await self._audiences.create(
            account,
            audience.project_id,
            name=audience.name,
            description=audience.description,
            conditions=audience.conditions,
            segmentation=audience.segmentation,
        )
        return convert.audience_to_proto(created)

    async def UpdateAudience(
        self, request: schema_service_pb2.UpdateAudienceRequest, context: Context
    ) -> resources_pb2.Audience:
        account = caller(Scope.WRITE).account_id
        audience = request.audience
        present = {name for name in ("name", "description", "conditions") if getattr(audience, name)}
        if audience.segmentation:
            present.add("segmentation")
        paths = _mask_paths(request.update_mask, ("name", "description", "conditions", "segmentation"), present)
        changes = AudienceChanges(
            name=audience.name if "name" in paths else None,
            description=audience.description if "description" in paths else None,
            segmentation=audience.segmentation if "segmentation" in paths else None,
        )
        if "conditions" in paths:
            changes = dataclasses.replace(changes, conditions=audience.conditions)
        return convert.audience_to_proto(await self._audiences.update(account, audience.id, changes))

    async def CheckAudienceConditions(
        self, request: schema_service_pb2.CheckAudienceConditionsRequest, context: Context
    ) -> schema_service_pb2.CheckAudienceConditionsResponse:
        # Checking stores nothing, so a caller that may only read may check too.
        account = caller(Scope.READ).account_id
        project, checked = await self._audiences.check(account, request.project_id, request.conditions)
        return schema_service_pb2.CheckAudienceConditionsResponse(
            dcp_service_id=project.dcp_service_id or 0, conditions=orjson.dumps(checked).decode()
        )

    async def ArchiveAudience(
        self, request: schema_service_pb2.ArchiveAudienceRequest, context: Context
    ) -> empty_pb2.Empty:
        account = caller(Scope.WRITE).account_id
        await self._audiences.archive(account, request.audience_id)
        return empty_pb2.Empty()

    # DCP services

    async def ListDcpServices(
        self, request: schema_service_pb2.ListDcpServicesRequest, context: Context
    ) -> schema_service_pb2.ListDcpServicesResponse:
        account = caller(Scope.READ).account_id
        scope = f"services:{account}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        services = await self._catalog.list_services(account, page)
        return schema_service_pb2.ListDcpServicesResponse(
            dcp_services=[convert.service_to_proto(s) for s in services[: page.size]],
            next_page_token=next_token([s.id for s in services], page, scope=scope),
        )

    async def GetDcpService(
        self, request: schema_service_pb2.GetDcpServiceRequest, context: Context
    ) -> resources_pb2.DcpService:
        account = caller(Scope.READ).account_id
        return convert.service_to_proto(await self._catalog.get_service(account, request.dcp_service_id))

    async def CreateDcpService(
        self, request: schema_service_pb2.CreateDcpServiceRequest, context: Context
    ) -> resources_pb2.DcpService:
        account = caller(Scope.WRITE).account_id
        service = request.dcp_service
        paths = _mask_paths(request.guards_mask, _GUARD_PATHS, _present_guards(service.guards), field="guards_mask")
        guards = _service_changes(service, paths)
        return convert.service_to_proto(await self._catalog.create_service(account, service.name, guards))

    async def UpdateDcpService(
        self, request: schema_service_pb2.UpdateDcpServiceRequest, context: Context
    ) -> resources_pb2.DcpService:
        account = caller(Scope.WRITE).account_id
        service = request.dcp_service
        present = _present_guards(service.guards) | ({"name"} if service.name else set())
        paths = _mask_paths(request.update_mask, ("name", *_GUARD_PATHS), present)
        changes = _service_changes(service, paths)
        return convert.service_to_proto(await self._catalog.update_service(account, service.id, changes))

    async def ArchiveDcpService(
        self, request: schema_service_pb2.ArchiveDcpServiceRequest, context: Context
    ) -> empty_pb2.Empty:
        account = caller(Scope.WRITE).account_id
        await self._catalog.archive_service(account, request.dcp_service_id)
        return empty_pb2.Empty()

    # Tables

    async def ListTables(
        self, request: schema_service_pb2.ListTablesRequest, context: Context
    ) -> schema_service_pb2.ListTablesResponse:
        account = caller(Scope.READ).account_id
        scope = f"tables:{account}:{request.dcp_service_id}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        tables = await self._catalog.list_tables(account, request.dcp_service_id, page)
        return schema_service_pb2.ListTablesResponse(
            tables=[convert.table_to_proto(t) for t in tables[: page.size]],
            next_page_token=next_token([t.id for t in tables], page, scope=scope),
        )

    async def GetTable(self, request: schema_service_pb2.GetTableRequest, context: Context) -> resources_pb2.Table:
        account = caller(Scope.READ).account_id
        return convert.table_to_proto(await self._catalog.get_table(account, request.dcp_datasource_id))

    async def CreateTable(
        self, request: schema_service_pb2.CreateTableRequest, context: Context
    ) -> resources_pb2.Table:
        account = caller(Scope.WRITE).account_id
        table = request.table
        created = await self._catalog.create_table(
            account,
            request.dcp_service_id,
            name=table.name,
            description=table.description if table.HasField("description") else None,
            locator_type=convert.locator_from_proto(table.keyfield_locator_type),
            locator_name=table.keyfield_locator_name if table.HasField("keyfield_locator_name") else None,
            import_mode=convert.import_mode_from_proto(table.import_mode),
        )
        return convert.table_to_proto(created)

    async def UpdateTable(
        self, request: schema_service_pb2.UpdateTableRequest, context: Context
    ) -> resources_pb2.Table:
        account = caller(Scope.WRITE).account_id
        table = request.table
        present = {"name"} if table.name else set()
        present |= {f for f in ("description", "keyfield_locator_name") if table.HasField(f)}
        if table.keyfield_locator_type:
            present.add("keyfield_locator_type")
        if table.import_mode:
            present.add("import_mode")
        paths = _mask_paths(
            request.update_mask,
            ("name", "description", "keyfield_locator_type", "keyfield_locator_name", "import_mode", "archived"),
            present,
        )
        changes = TableChanges(
            name=table.name if "name" in paths else None,
            description=table.description if "description" in paths and table.HasField("description") else None,
            clear_description="description" in paths and not table.HasField("description"),
            keyfield_locator_type=convert.locator_from_proto(table.keyfield_locator_type)
            if "keyfield_locator_type" in paths
            else None,
            keyfield_locator_name=table.keyfield_locator_name
            if "keyfield_locator_name" in paths and table.HasField("keyfield_locator_name")
            else None,
            clear_locator_name="keyfield_locator_name" in paths and not table.HasField("keyfield_locator_name"),
            import_mode=convert.import_mode_from_proto(table.import_mode) if "import_mode" in paths else None,
            archived=table.archived if "archived" in paths else None,
        )
        if "keyfield_locator_type" in paths and changes.keyfield_locator_type is None:
            raise InvalidArgument.field("keyfield_locator_type", "must be set when named in update_mask")
        return convert.table_to_proto(await self._catalog.update_table(account, table.id, changes))

    async def ArchiveTable(self, request: schema_service_pb2.ArchiveTableRequest, context: Context) -> empty_pb2.Empty:
        account = caller(Scope.WRITE).account_id
        await self._catalog.archive_table(account, request.dcp_datasource_id)
        return empty_pb2.Empty()

    # Attributes

    async def ListAttributes(
        self, request: schema_service_pb2.ListAttributesRequest, context: Context
    ) -> schema_service_pb2.ListAttributesResponse:
        account = caller(Scope.READ).account_id
        scope = f"attributes:{account}:{request.dcp_datasource_id}:{request.active_only}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        attributes = await self._catalog.list_attributes(
            account, request.dcp_datasource_id, page, active_only=request.active_only
        )
        return schema_service_pb2.ListAttributesResponse(
            attributes=[convert.attribute_to_proto(a) for a in attributes[: page.size]],
            next_page_token=next_token([a.id for a in attributes], page, scope=scope),
        )

    async def GetAttribute(
        self, request: schema_service_pb2.GetAttributeRequest, context: Context
    ) -> resources_pb2.Attribute:
        account = caller(Scope.READ).account_id
        return convert.attribute_to_proto(await self._catalog.get_attribute(account, request.attribute_id))

    async def CreateAttribute(
        self, request: schema_service_pb2.CreateAttributeRequest, context: Context
    ) -> resources_pb2.Attribute:
        account = caller(Scope.WRITE).account_id
        attribute = request.attribute
        created = await self._catalog.create_attribute(
            account,
            request.dcp_datasource_id,
            name=attribute.name,
            datatype=convert.datatype_from_proto(attribute.datatype),
            datetime_format=convert.format_from_proto(attribute.format),
            description=attribute.description if attribute.HasField("description") else None,
            is_value_public=attribute.is_value_public,
        )
        return convert.attribute_to_proto(created)

    async def UpdateAttribute(
        self, request: schema_service_pb2.UpdateAttributeRequest, context: Context
    ) -> resources_pb2.Attribute:
        account = caller(Scope.WRITE).account_id
        attribute = request.attribute
        present = {"description"} if attribute.HasField("description") else set()
        paths = _mask_paths(request.update_mask, ("description", "is_value_public"), present)
        updated = await self._catalog.update_attribute(
            account,
            attribute.id,
            description=attribute.description if attribute.HasField("description") else None,
            clear_description="description" in paths and not attribute.HasField("description"),
            is_value_public=attribute.is_value_public if "is_value_public" in paths else None,
        )
        return convert.attribute_to_proto(updated)

    async def ArchiveAttribute(
        self, request: schema_service_pb2.ArchiveAttributeRequest, context: Context
    ) -> empty_pb2.Empty:
        account = caller(Scope.WRITE).account_id
        await self._catalog.archive_attribute(account, request.attribute_id)
        return empty_pb2.Empty()

    async def UnarchiveAttribute(
        self, request: schema_service_pb2.UnarchiveAttributeRequest, context: Context
    ) -> resources_pb2.Attribute:
        account = caller(Scope.WRITE).account_id
        return convert.attribute_to_proto(await self._catalog.unarchive_attribute(account, request.attribute_id))

    # Internal

    async def ListImportTargets(
        self, request: schema_service_pb2.ListImportTargetsRequest, context: Context
    ) -> schema_service_pb2.ListImportTargetsResponse:
        caller(Scope.INTERNAL)
        scope = "import-targets"
        page = read_page(
            request.page_size,
            request.page_token,
            scope=scope,
            default_size=IMPORT_TARGETS_DEFAULT_PAGE_SIZE,
            max_size=IMPORT_TARGETS_MAX_PAGE_SIZE,
        )
        targets = await self._catalog.list_import_targets(page)
        return schema_service_pb2.ListImportTargetsResponse(
            targets=[convert.import_target_to_proto(t) for t in targets[: page.size]],
            next_page_token=next_token([t.table_id for t in targets], page, scope=scope),
        )


class AuthServicer(schema_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, credentials: Credentials, signer: AssertionSigner) -> None:
        self._credentials = credentials
        self._signer = signer

    async def Authenticate(
        self, request: schema_service_pb2.AuthenticateRequest, context: Context
    ) -> schema_service_pb2.AuthenticateResponse:
        verified = await self._credentials.verify(request.token)
        # Reusing a recent assertion lets each service's verification cache answer for it.
        signed = self._signer.signed_cached(verified.identity)
        expires_at = min(signed.expires_at, verified.expires_at or signed.expires_at)
        valid_for = duration_pb2.Duration()
        valid_for.FromTimedelta(timedelta(seconds=max(0.0, expires_at - time.time())))
        return schema_service_pb2.AuthenticateResponse(
            identity=convert.identity_to_proto(verified.identity), assertion=signed.assertion, valid_for=valid_for
        )


def bindings(
    catalog: Catalog, audiences: Audiences, credentials: Credentials, signer: AssertionSigner
) -> list[ServiceBinding]:
    schema_servicer = SchemaServicer(catalog, audiences, credentials)
    auth_servicer = AuthServicer(credentials, signer)
    return [
        ServiceBinding(
            service_names=(schema_service_pb2.DESCRIPTOR.services_by_name["SchemaService"].full_name,),
            register=lambda server: schema_service_pb2_grpc.add_SchemaServiceServicer_to_server(
                schema_servicer, server
            ),
        ),
        ServiceBinding(
            service_names=(schema_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,),
            register=lambda server: schema_service_pb2_grpc.add_AuthServiceServicer_to_server(auth_servicer, server),
        ),
    ]
