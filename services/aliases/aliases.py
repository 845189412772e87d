"""Alias rules: who links to whom, the guardrails, and resolving a visitor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services._runtime.errors import InvalidArgument, NotFound
from services._runtime.identity import Identity
from services.aliases.repository import AliasesRepository
from services.domain.catalog import ServiceSnapshot
from services.domain.customer_ids import customer_id_problem
from services.schema.client import RegistryClient


@dataclass(frozen=True)
class AliasSet:
    dcp_service_id: int
    optimizely_datasource_id: int
    optimizely_user_id: str
    customer_ids: dict[int, str]


@dataclass(frozen=True)
class Skipped:
    datasource_id: int
    reason: str


@dataclass(frozen=True)
class Resolution:
    aliases: AliasSet
    skipped: list[Skipped]


def _blocked_problem(service: ServiceSnapshot, customer_id: str) -> str | None:
    if customer_id.strip().lower() in service.alias_blocked_customer_ids:
        return (
            f"{customer_id!r} is a placeholder, not a customer id; links to it are refused "
            "so that one hard-coded value cannot merge many visitors"
        )
    return None


class Aliases:
    def __init__(self, repository: AliasesRepository, registry: RegistryClient) -> None:
        self._repo = repository
        self._registry = registry

    async def _service(self, identity: Identity, service_id: int, optimizely_table_id: int | None) -> ServiceSnapshot:
        service = await self._registry.service(identity, service_id)
        if optimizely_table_id and optimizely_table_id != service.optimizely_table_id:
            raise NotFound(
                f"table {optimizely_table_id} is not the Optimizely table of DCP service {service_id}",
                metadata={"resource": "table", "id": str(optimizely_table_id)},
            )
        return service

    def _alias_set(self, service: ServiceSnapshot, optimizely_user_id: str, links: Mapping[int, str]) -> AliasSet:
        return AliasSet(service.id, service.optimizely_table_id, optimizely_user_id, dict(sorted(links.items())))

    async def get(
        self, identity: Identity, service_id: int, optimizely_table_id: int | None, optimizely_user_id: str
    ) -> AliasSet:
        service = await self._service(identity, service_id, optimizely_table_id)
        return self._alias_set(service, optimizely_user_id, await self._repo.links_of(service_id, optimizely_user_id))

    async def links_of(self, identity: Identity, service_id: int, optimizely_user_id: str) -> dict[int, str]:
        """Table id → customer id for one user (the consolidated view's first step)."""
        await self._registry.service(identity, service_id)
        return await self._repo.links_of(service_id, optimizely_user_id)

    def _link_problem(self, service: ServiceSnapshot, table_id: int, customer_id: str) -> str | None:
        table = service.tables.get(table_id)
        if table is None:
            return f"table {table_id} is not a table of DCP service {service.id}"
        if table.is_optimizely:
            return "is the Optimizely table itself; its customer id is the Optimizely user id"
        if table.archived:
            return f"table {table_id} is archived"
        return customer_id_problem(customer_id, pii_guard=service.pii_guard) or _blocked_problem(service, customer_id)

    async def merge(
        self,
        identity: Identity,
        service_id: int,
        optimizely_table_id: int | None,
        optimizely_user_id: str,
        customer_ids: Mapping[int, str],
    ) -> AliasSet:
        service = await self._service(identity, service_id, optimizely_table_id)
        user_problem = customer_id_problem(optimizely_user_id, pii_guard=service.pii_guard)
        if user_problem:
            raise InvalidArgument.field("optimizely_user_id", user_problem)
        if not customer_ids:
            raise InvalidArgument.field("data", "must link at least one table")
        if any(table_id not in service.tables for table_id in customer_ids):
            service = await self._registry.fresh_service(identity, service_id)
        violations = [
            (f"data.{table_id}", problem)
            for table_id, customer_id in sorted(customer_ids.items())
            if (problem := self._link_problem(service, table_id, customer_id))
        ]
        if violations:
            raise _refused(violations)
        async with self._repo.transaction() as repo:
            current = await repo.links_of(service_id, optimizely_user_id)
            changed = {t: c for t, c in customer_ids.items() if current.get(t) != c}
            for table_id, customer_id in sorted(changed.items()):
                await repo.lock_customer(table_id, customer_id)
                others = await repo.count_other_users(table_id, customer_id, optimizely_user_id)
                if others >= service.alias_max_users_per_customer_id:
                    violations.append(
                        (
                            f"data.{table_id}",
                            f"customer id {customer_id!r} is already linked to {others} Optimizely users, the most "
                            "this DCP service allows; a value shared by that many visitors is not one customer",
                        )
                    )
            if violations:
                raise _refused(violations)
            await repo.upsert(service_id, optimizely_user_id, changed)
            return self._alias_set(service, optimizely_user_id, {**current, **customer_ids})

    async def delete(
        self,
        identity: Identity,
        service_id: int,
        optimizely_table_id: int | None,
        optimizely_user_id: str,
        table_id: int,
    ) -> None:
        service = await self._service(identity, service_id, optimizely_table_id)
        if table_id not in service.tables:
            service = await self._registry.fresh_service(identity, service_id)
        # Idempotent for the service's own tables; any other id names nothing here, as another account's
        # table or one that never existed would anywhere else in v1.
        if table_id not in service.tables:
            raise NotFound(
                f"table {table_id} is not a table of DCP service {service_id}",
                metadata={"resource": "table", "id": str(table_id)},
            )
        await self._repo.delete(service_id, optimizely_user_id, table_id)

    async def resolve(
        self,
        identity: Identity,
        service_id: int,
        optimizely_user_id: str,
        *,
        cookies: Mapping[str, str],
        query: Mapping[str, str],
        js: Mapping[str, str],
    ) -> Resolution:
        """Links every customer id the visitor's context reveals; refused values are skipped, not fatal."""
        service = await self._service(identity, service_id, None)
        user_problem = customer_id_problem(optimizely_user_id, pii_guard=service.pii_guard)
        if user_problem:
            raise InvalidArgument.field("optimizely_user_id", user_problem)
        sources = {"cookie": cookies, "query parameter": query, "js_variable": js}
        found: dict[int, str] = {}
        skipped: list[Skipped] = []
        for table in sorted(service.tables.values(), key=lambda t: t.id):
            if table.archived or table.is_optimizely or table.locator_name is None:
                continue
            value = sources.get(table.locator_type, {}).get(table.locator_name)
            if value is None:
                continue
            problem = self._link_problem(service, table.id, value)
            if problem:
                skipped.append(Skipped(table.id, problem))
            else:
                found[table.id] = value
        if not found:
            return Resolution(await self.get(identity, service_id, None, optimizely_user_id), skipped)
        try:
            return Resolution(await self.merge(identity, service_id, None, optimizely_user_id, found), skipped)
        except InvalidArgument as refused:
            # Over the cap: keep what may be linked, report the rest.
            refused_tables = {int(field.removeprefix("data.")) for field, _ in refused.violations}
            skipped.extend(Skipped(int(f.removeprefix("data.")), reason) for f, reason in refused.violations)
            allowed = {t: c for t, c in found.items() if t not in refused_tables}
            if allowed:
                return Resolution(await self.merge(identity, service_id, None, optimizely_user_id, allowed), skipped)
            return Resolution(await self.get(identity, service_id, None, optimizely_user_id), skipped)


def _refused(violations: list[tuple[str, str]]) -> InvalidArgument:
    return InvalidArgument(
        "no alias was stored: " + "; ".join(f"{field} {reason}" for field, reason in violations),
        violations=violations,
    )
