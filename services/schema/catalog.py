"""The registry's rules: projects, DCP services, tables and attributes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services._runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services._runtime.paging import Page
from services.schema import rules
from services.schema.keys import KeyIssuer, LocalKeys, new_access_key_pair
from services.schema.model import Attribute, DcpService, ImportMode, ImportTarget, LocatorType, Project, Table
from services.schema.repository import SchemaRepository

OPTIMIZELY_TABLE_NAME = "Optimizely"
OPTIMIZELY_TABLE_DESCRIPTION = "Optimizely datasource"


@dataclass(frozen=True)
class ServiceChanges:
    """Fields of a DCP service update; None leaves a field as it is."""

    name: str | None = None
    pii_guard: bool | None = None
    alias_blocked_customer_ids: list[str] | None = None
    alias_max_users_per_customer_id: int | None = None


def _checked_guards(changes: ServiceChanges) -> ServiceChanges:
    """The guards of `changes` as they are stored (blocked ids normalised), once the rules allow them."""
    blocked = rules.blocked_customer_ids(changes.alias_blocked_customer_ids)
    if changes.alias_max_users_per_customer_id is not None:
        rules.max_users_per_customer_id(changes.alias_max_users_per_customer_id)
    return replace(changes, alias_blocked_customer_ids=None if blocked is None else list(blocked))


def _with_guards(service: DcpService, guards: ServiceChanges) -> DcpService:
    """`service` with the guards `guards` sets; the others as they are."""
    return replace(
        service,
        pii_guard=service.pii_guard if guards.pii_guard is None else guards.pii_guard,
        alias_blocked_customer_ids=service.alias_blocked_customer_ids
        if guards.alias_blocked_customer_ids is None
        else tuple(guards.alias_blocked_customer_ids),
        alias_max_users_per_customer_id=service.alias_max_users_per_customer_id
        if guards.alias_max_users_per_customer_id is None
        else guards.alias_max_users_per_customer_id,
    )


@dataclass(frozen=True)
class TableChanges:
    """Fields of an update; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    clear_description: bool = False
    keyfield_locator_type: str | None = None
    keyfield_locator_name: str | None = None
    clear_locator_name: bool = False
    import_mode: str | None = None
    archived: bool | None = None

    @property
    def edits(self) -> bool:
        """Whether anything but the archived flag is to change."""
        values = (self.name, self.description, self.keyfield_locator_type, self.keyfield_locator_name, self.import_mode)
        return self.clear_description or self.clear_locator_name or any(v is not None for v in values)


def _not_found(kind: str, resource_id: int) -> NotFound:
    return NotFound(f"{kind} {resource_id} does not exist", metadata={"resource": kind, "id": str(resource_id)})


def _archived(kind: str, resource_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"{kind} {resource_id} is archived and cannot be changed",
        reason="RESOURCE_ARCHIVED",
        metadata={"resource": kind, "id": str(resource_id)},
    )


class Catalog:
    """Registry operations, each scoped to the calling account."""

    def __init__(
        self, repository: SchemaRepository, *, max_active_services: int, keys: KeyIssuer | None = None
    ) -> None:
        self._repo = repository
        self._max_active_services = max_active_services
        self._keys: KeyIssuer = keys or LocalKeys()

    # Projects

    async def list_projects(self, account_id: int, page: Page) -> list[Project]:
        return await self._repo.list_projects(account_id, page)

    async def get_project(self, account_id: int, project_id: int) -> Project:
        project = await self._repo.get_project(account_id, project_id)
        if project is None:
            raise _not_found("project", project_id)
        return project

    async def _linkable_service(self, repo: SchemaRepository, account_id: int, service_id: int | None) -> None:
        if service_id is None:
            return
        service = await repo.get_service(account_id, service_id)
        if service is None:
            raise InvalidArgument.field("dcp_service_id", f"DCP service {service_id} does not exist")
        if service.archived:
            raise InvalidArgument.field("dcp_service_id", f"DCP service {service_id} is archived")

    async def create_project(self, account_id: int, name: str, dcp_service_id: int | None) -> Project:
        rules.name(name)
        async with self._repo.transaction() as repo:
            await self._linkable_service(repo, account_id, dcp_service_id)
            return await repo.create_project(account_id, name, dcp_service_id)

    async def update_project(
        self, account_id: int, project_id: int, *, name: str | None, dcp_service_id: int | None, link: bool
    ) -> Project:
        """Renames and/or relinks; `link` says whether `dcp_service_id` was given (None unlinks)."""
        if name is not None:
            rules.name(name)
        async with self._repo.transaction() as repo:
            project = await repo.get_project(account_id, project_id)
            if project is None:
                raise _not_found("project", project_id)
            if link and dcp_service_id != project.dcp_service_id:
                await self._linkable_service(repo, account_id, dcp_service_id)
            return await repo.update_project(
                account_id,
                project_id,
                name if name is not None else project.name,
                dcp_service_id if link else project.dcp_service_id,
            )

    # DCP services

    async def list_services(self, account_id: int, page: Page) -> list[DcpService]:
        return await self._repo.list_services(account_id, page)

    async def get_service(self, account_id: int, service_id: int) -> DcpService:
        service = await self._repo.get_service(account_id, service_id)
        if service is None:
            raise _not_found("DCP service", service_id)
        return service

    async def create_service(self, account_id: int, name: str, guards: ServiceChanges = ServiceChanges()) -> DcpService:
        """A new service with the guards given (`guards.name` is not read), defaults for the others."""
        rules.name(name)
        checked = _checked_guards(guards)
        access_key, secret_key = new_access_key_pair()
        async with self._repo.transaction() as repo:
            if not await repo.lock_account(account_id):
                raise NotFound(f"account {account_id} does not exist")
            active = await repo.count_active_services(account_id)
            if active >= self._max_active_services:
                raise FailedPrecondition(
                    f"this account already has {active} active DCP service(s), the most it may have; "
                    "archive one first, or raise DCP_MAX_ACTIVE_SERVICES_PER_ACCOUNT",
                    reason="SERVICE_LIMIT_REACHED",
                    metadata={"limit": str(self._max_active_services)},
                )
            service = await repo.create_service(account_id, name, access_key, secret_key)
            if not isinstance(self._keys, LocalKeys):
                # The store's own key replaces the placeholder; should this fail, the service is not created.
                issued = await self._keys.issue(service.id)
                service = await repo.set_service_keys(account_id, service.id, *issued)
            await repo.create_table(
                account_id,
                service.id,
                name=OPTIMIZELY_TABLE_NAME,
                description=OPTIMIZELY_TABLE_DESCRIPTION,
                locator_type=LocatorType.UID,
                locator_name=None,
                is_optimizely=True,
            )
            guarded = _with_guards(service, checked)
            return service if guarded == service else await repo.update_service(guarded)

    async def update_service(self, account_id: int, service_id: int, changes: ServiceChanges) -> DcpService:
        if changes.name is not None:
            rules.name(changes.name)
        checked = _checked_guards(changes)
        async with self._repo.transaction() as repo:
            service = await repo.get_service(account_id, service_id, for_update=True)
            if service is None:
                raise _not_found("DCP service", service_id)
            if service.archived:
                raise _archived("DCP service", service_id)
            renamed = service if changes.name is None else replace(service, name=changes.name)
            return await repo.update_service(_with_guards(renamed, checked))

    async def archive_service(self, account_id: int, service_id: int) -> None:
        async with self._repo.transaction() as repo:
            service = await repo.get_service(account_id, service_id, for_update=True)
            if service is None:
                raise _not_found("DCP service", service_id)
            await repo.archive_service(account_id, service_id)
        if not service.archived:
            await self._keys.revoke(service_id, service.aws_access_key)

    async def restore_upload_keys(self) -> int:
        """Tells the key issuer every active service's key, for a store that forgets them when it stops."""
        keys = await self._repo.active_upload_keys()
        await self._keys.restore(keys)
        return len(keys)

    # Tables

    async def list_tables(self, account_id: int, service_id: int, page: Page) -> list[Table]:
        await self.get_service(account_id, service_id)
        return await self._repo.list_tables(account_id, service_id, page)

    async def get_table(self, account_id: int, table_id: int) -> Table:
        table = await self._repo.get_table(account_id, table_id)
        if table is None:
            raise _not_found("table", table_id)
        return table

    async def create_table(
        self,
        account_id: int,
        service_id: int,
        *,
        name: str,
        description: str | None,
        locator_type: str | None,
        locator_name: str | None,
        import_mode: str | None = None,
    ) -> Table:
        """A new table; without an `import_mode` it stores the valid rows of a file with bad ones."""
        rules.name(name)
        rules.description(description)
        kind = rules.locator_type(locator_type)
        stored_locator = rules.locator(kind, locator_name)
        mode = ImportMode.PARTIAL if import_mode is None else rules.import_mode(import_mode)
        async with self._repo.transaction() as repo:
            service = await repo.get_service(account_id, service_id, for_update=True)
            if service is None:
                raise _not_found("DCP service", service_id)
            if service.archived:
                raise _archived("DCP service", service_id)
            table_id = await repo.create_table(
                account_id,
                service_id,
                name=name,
                description=description,
                locator_type=kind,
                locator_name=stored_locator,
                import_mode=mode,
            )
            table = await repo.get_table(account_id, table_id)
            assert table is not None
            return table

    async def update_table(self, account_id: int, table_id: int, changes: TableChanges) -> Table:
        """Edits a table; unarchiving comes first and archiving last, all in one transaction."""
        async with self._repo.transaction() as repo:
            table = await repo.get_table(account_id, table_id, for_update=True)
            if table is None:
                raise _not_found("table", table_id)
            archived = table.archived if changes.archived is None else changes.archived
            if table.archived and not archived:
                service = await repo.get_service(account_id, table.dcp_service_id)
                assert service is not None
                if service.archived:
                    raise FailedPrecondition(
                        f"table {table_id} cannot be unarchived: its DCP service {service.id} is archived",
                        reason="RESOURCE_ARCHIVED",
                        metadata={"resource": "DCP service", "id": str(service.id)},
                    )
            elif table.archived:
                if changes.edits or changes.archived is None:
                    raise _archived("table", table_id)
                return table
            if archived and table.is_optimizely:
                raise _optimizely_not_archivable()
            name = rules.name(changes.name) if changes.name is not None else table.name
            description = table.description
            if changes.clear_description:
                description = None
            elif changes.description is not None:
                description = rules.description(changes.description)
            kind = table.keyfield_locator_type
            if changes.keyfield_locator_type is not None:
                kind = rules.locator_type(changes.keyfield_locator_type)
            locator_name = table.keyfield_locator_name
            if changes.clear_locator_name:
                locator_name = None
            elif changes.keyfield_locator_name is not None:
                locator_name = changes.keyfield_locator_name
            elif kind is LocatorType.UID:
                # Switching to uid drops the old name rather than refusing the change.
                locator_name = None
            locator_name = rules.locator(kind, locator_name)
            # The Optimizely table takes uploads like any other, so its mode may change too.
            mode = table.import_mode if changes.import_mode is None else rules.import_mode(changes.import_mode)
            relocated = (kind, locator_name) != (table.keyfield_locator_type, table.keyfield_locator_name)
            if table.is_optimizely and relocated:
                raise FailedPrecondition(
                    "the Optimizely table's customer-id locator is always 'uid' and cannot change",
                    reason="OPTIMIZELY_TABLE_IMMUTABLE",
                )
            await repo.update_table(
                account_id,
                table_id,
                name=name,
                description=description,
                locator_type=kind,
                locator_name=locator_name,
                import_mode=mode,
                archived=archived,
            )
            updated = await repo.get_table(account_id, table_id)
            assert updated is not None
            return updated

    async def list_import_targets(self, page: Page) -> list[ImportTarget]:
        """Every account's tables, archived ones too: files still arrive for them and must be recorded as refused."""
        return await self._repo.list_import_targets(page)

    async def archive_table(self, account_id: int, table_id: int) -> None:
        async with self._repo.transaction() as repo:
            table = await repo.get_table(account_id, table_id, for_update=True)
            if table is None:
                raise _not_found("table", table_id)
            if table.is_optimizely:
                raise _optimizely_not_archivable()
            await repo.archive_table(account_id, table_id)

    # Attributes

    async def list_attributes(
        self, account_id: int, table_id: int, page: Page, *, active_only: bool
    ) -> list[Attribute]:
        await self.get_table(account_id, table_id)
        return await self._repo.list_attributes(account_id, table_id, page, active_only=active_only)

    async def get_attribute(self, account_id: int, attribute_id: int) -> Attribute:
        attribute = await self._repo.get_attribute(account_id, attribute_id)
        if attribute is None:
            raise _not_found("attribute", attribute_id)
        return attribute

    async def create_attribute(
        self,
        account_id: int,
        table_id: int,
        *,
        name: str,
        datatype: str | None,
        datetime_format: str | None,
        description: str | None,
        is_value_public: bool,
    ) -> Attribute:
        rules.name(name)
        kind = rules.datatype(datatype)
        stored_format = rules.datetime_format(kind, datetime_format)
        rules.description(description)
        async with self._repo.transaction() as repo:
            table = await repo.get_table(account_id, table_id, for_update=True)
            if table is None:
                raise _not_found("table", table_id)
            if table.archived:
                raise _archived("table", table_id)
            if any(a.name == name and not a.archived for a in table.attributes):
                raise _name_taken(name, table_id)
            return await repo.create_attribute(
                account_id,
                table_id,
                name=name,
                datatype=kind,
                datetime_format=stored_format,
                description=description,
                is_value_public=is_value_public,
            )

    async def update_attribute(
        self,
        account_id: int,
        attribute_id: int,
        *,
        description: str | None,
        clear_description: bool,
        is_value_public: bool | None,
    ) -> Attribute:
        attribute = await self.get_attribute(account_id, attribute_id)
        new_description = attribute.description
        if clear_description:
            new_description = None
        elif description is not None:
            new_description = rules.description(description)
        return await self._repo.update_attribute(
            account_id,
            attribute_id,
            description=new_description,
            is_value_public=attribute.is_value_public if is_value_public is None else is_value_public,
        )

    async def archive_attribute(self, account_id: int, attribute_id: int) -> Attribute:
        await self.get_attribute(account_id, attribute_id)
        return await self._repo.set_attribute_archived(account_id, attribute_id, True)

    async def unarchive_attribute(self, account_id: int, attribute_id: int) -> Attribute:
        async with self._repo.transaction() as repo:
            attribute = await repo.get_attribute(account_id, attribute_id)
            if attribute is None:
                raise _not_found("attribute", attribute_id)
            table = await repo.get_table(account_id, attribute.datasource_id, for_update=True)
            assert table is not None
            if not attribute.archived:
                return attribute
            if table.archived:
                raise _archived("table", table.id)
            if any(a.name == attribute.name and not a.archived for a in table.attributes):
                raise _name_taken(attribute.name, table.id)
            return await repo.set_attribute_archived(account_id, attribute_id, False)


def _optimizely_not_archivable() -> FailedPrecondition:
    return FailedPrecondition(
        "the Optimizely table cannot be archived; archive its DCP service instead",
        reason="OPTIMIZELY_TABLE_IMMUTABLE",
    )


def _name_taken(name: str, table_id: int) -> AlreadyExists:
    return AlreadyExists(
        f"table {table_id} already has an active attribute named {name!r}; names are unique among active attributes",
        violations=[("name", f"an active attribute named {name!r} already exists in this table")],
    )
