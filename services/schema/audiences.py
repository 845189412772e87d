"""Audiences: saved condition trees, type-checked against the registry whenever they are saved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services._runtime.errors import FailedPrecondition, NotFound
from services._runtime.paging import Page
from services.domain.conditions.grammar import AttributeLookup, decode_text, parse_conditions
from services.domain.conditions.model import AttributeRef
from services.schema import rules
from services.schema.model import Audience, Project, Table
from services.schema.repository import SchemaRepository

# A service has few tables; one page holds them all.
_ALL_TABLES = Page(after_id=0, size=10_000)
_UNSET: Any = object()


@dataclass(frozen=True)
class AudienceChanges:
    """Fields of an update; None (or unset conditions) leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    conditions: Any = _UNSET
    segmentation: bool | None = None


def _not_found(kind: str, resource_id: int) -> NotFound:
    return NotFound(f"{kind} {resource_id} does not exist", metadata={"resource": kind, "id": str(resource_id)})


def decode_conditions(raw: Any) -> Any:
    """The conditions as JSON values: v1 sends them as a JSON-encoded string, newer callers as JSON."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        # Not orjson: it reads an integer past 64 bits as a double, so the value's range check could not see it.
        return decode_text(raw)
    return raw


def registry_lookup(service_id: int, tables: Sequence[Table]) -> AttributeLookup:
    """Resolves (table, attribute) ids against one DCP service's tables, archived ones included."""
    by_id = {table.id: table for table in tables}

    def lookup(datasource_id: int, attribute_id: int) -> AttributeRef | str:
        table = by_id.get(datasource_id)
        if table is None:
            return f"table {datasource_id} is not a table of DCP service {service_id}"
        attribute = next((a for a in table.attributes if a.id == attribute_id), None)
        if attribute is None:
            return f"attribute {attribute_id} is not an attribute of table {datasource_id}"
        if table.archived:
            return f"table {datasource_id} is archived"
        if attribute.archived:
            return f"attribute {attribute_id} ({attribute.name}) is archived"
        return AttributeRef(
            datasource_id=datasource_id,
            attribute_id=attribute_id,
            datatype=attribute.datatype,
            format=attribute.format,
        )

    return lookup


class Audiences:
    """Audience operations, each scoped to the calling account."""

    def __init__(self, repository: SchemaRepository) -> None:
        self._repo = repository

    async def list_in_project(self, account_id: int, project_id: int, page: Page) -> list[Audience]:
        if await self._repo.get_project(account_id, project_id) is None:
            raise _not_found("project", project_id)
        return await self._repo.list_audiences(account_id, project_id, page)

    async def list_for_service(
        self, account_id: int, service_id: int, audience_ids: Sequence[int], page: Page
    ) -> list[Audience]:
        if await self._repo.get_service(account_id, service_id) is None:
            raise _not_found("DCP service", service_id)
        return await self._repo.list_service_audiences(account_id, service_id, audience_ids, page)

    async def get(self, account_id: int, audience_id: int) -> Audience:
        audience = await self._repo.get_audience(account_id, audience_id)
        if audience is None:
            raise _not_found("audience", audience_id)
        return audience

    async def check(self, account_id: int, project_id: int, conditions: Any) -> tuple[Project, Any]:
        """An unsaved condition tree checked exactly as `create` checks it for the project; nothing is stored."""
        project = await self._repo.get_project(account_id, project_id)
        if project is None:
            raise _not_found("project", project_id)
        return project, await _checked(self._repo, project, decode_conditions(conditions))

    async def create(
        self,
        account_id: int,
        project_id: int,
        *,
        name: str,
        description: str | None,
        conditions: Any,
        segmentation: bool,
    ) -> Audience:
        rules.name(name)
        rules.description(description)
        async with self._repo.transaction() as repo:
            project = await repo.get_project(account_id, project_id)
            if project is None:
                raise _not_found("project", project_id)
            checked = await _checked(repo, project, decode_conditions(conditions))
            audience_id = await repo.create_audience(
                account_id,
                project_id,
                name=name,
                description=description or "",
                conditions=checked,
                segmentation=segmentation,
            )
            created = await repo.get_audience(account_id, audience_id)
            assert created is not None
            return created

    async def update(self, account_id: int, audience_id: int, changes: AudienceChanges) -> Audience:
        if changes.name is not None:
            rules.name(changes.name)
        rules.description(changes.description)
        async with self._repo.transaction() as repo:
            audience = await repo.get_audience(account_id, audience_id, for_update=True)
            if audience is None:
                raise _not_found("audience", audience_id)
            if audience.archived:
                raise FailedPrecondition(
                    f"audience {audience_id} is archived and cannot be changed",
                    reason="RESOURCE_ARCHIVED",
                    metadata={"resource": "audience", "id": str(audience_id)},
                )
            conditions = audience.conditions
            if changes.conditions is not _UNSET:
                project = await repo.get_project(account_id, audience.project_id)
                assert project is not None
                conditions = await _checked(repo, project, decode_conditions(changes.conditions))
            await repo.update_audience(
                account_id,
                audience_id,
                name=changes.name if changes.name is not None else audience.name,
                description=changes.description if changes.description is not None else audience.description,
                conditions=conditions,
                segmentation=changes.segmentation if changes.segmentation is not None else audience.segmentation,
            )
            updated = await repo.get_audience(account_id, audience_id)
            assert updated is not None
            return updated

    async def archive(self, account_id: int, audience_id: int) -> None:
        async with self._repo.transaction() as repo:
            if await repo.get_audience(account_id, audience_id, for_update=True) is None:
                raise _not_found("audience", audience_id)
            await repo.archive_audience(account_id, audience_id)


async def _checked(repo: SchemaRepository, project: Project, conditions: Any) -> Any:
    """The conditions to store, once they parse and type-check against the project's DCP service."""
    if conditions == []:
        return conditions
    if project.dcp_service_id is None:
        raise FailedPrecondition(
            f"project {project.id} is not linked to a DCP service, so its audiences cannot use DCP attributes;"
            " link it first (dcp_service_id)",
            reason="PROJECT_NOT_LINKED",
            metadata={"resource": "project", "id": str(project.id)},
        )
    tables = await repo.list_tables(project.account_id, project.dcp_service_id, _ALL_TABLES)
    parse_conditions(conditions, registry_lookup(project.dcp_service_id, tables), strict=True)
    return conditions
