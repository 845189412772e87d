"""Audiences at work: who is in one, and why; evaluated in process for one user, in SQL for everyone."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from services._runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services._runtime.identity import Identity
from services.domain.catalog import ServiceSnapshot, TableInfo
from services.domain.conditions.evaluate import (
    Held,
    Outcome,
    evaluate,
    explainer,
    explainer_of_all,
    finder_of_all,
    pattern_of,
    utc,
)
from services.domain.conditions.evaluate import Profiles as ProfileValues
from services.domain.conditions.grammar import AttributeLookup, parse_conditions
from services.domain.conditions.model import AttributeRef, Node
from services.profiles.client import outcome_document
from services.profiles.membership import Membership
from services.profiles.profiles import Profiles
from services.schema.audience_client import AudienceDefinition, AudienceDirectory
from services.schema.client import RegistryClient

Clock = Callable[[], datetime]
_PARSED_CACHE_LIMIT = 10_000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AudienceResult:
    audience_id: int
    name: str
    outcome: Outcome


# Per audience: a tree has few patterns of leaf results, each one outcome (see `evaluate`).
_RESULTS_PER_AUDIENCE = 64


class _Audience:
    """A saved audience parsed against its service's tables, and its results seen so far."""

    __slots__ = (
        "_explain",
        "_outcome",
        "definition",
        "node",
        "seen_documents",
        "seen_results",
        "service_id",
        "tables",
    )

    def __init__(self, definition: AudienceDefinition, service: ServiceSnapshot, node: Node | None) -> None:
        self.definition = definition
        # Both stay the same objects while they do not change (see the registry and audience clients).
        self.tables = service.tables
        self.service_id = service.id
        self.node = node
        self._explain, self._outcome = explainer(node)
        # By pattern of leaf results.
        self.seen_results: dict[Held, AudienceResult] = {}
        # By pattern number (see `pattern_of`), as `finder_of_all` looks them up.
        self.seen_documents: dict[int, bytes] = {}

    def result(self, values: ProfileValues, now: datetime) -> AudienceResult:
        """The audience's result for one user; `now` aware and in UTC."""
        return self.result_of(self._explain(values, now))

    def result_of(self, held: Held) -> AudienceResult:
        """The audience's result for a pattern of leaf results (see `explainer`)."""
        result = self.seen_results.get(held)
        if result is None:
            result = AudienceResult(self.definition.id, self.definition.name, self._outcome(held))
            if len(self.seen_results) < _RESULTS_PER_AUDIENCE:
                self.seen_results[held] = result
        return result

    def document(self, values: ProfileValues, now: datetime) -> bytes:
        """The audience's result for one user as its v1 JSON document; `now` aware and in UTC."""
        return self.document_of(self._explain(values, now))

    def document_of(self, held: Held) -> bytes:
        pattern = pattern_of(held)
        document = self.seen_documents.get(pattern)
        if document is None:
            result = self.result_of(held)
            document = outcome_document(result.audience_id, result.name, result.outcome, saved=True)
            if len(self.seen_documents) < _RESULTS_PER_AUDIENCE:
                self.seen_documents[pattern] = document
        return document


class _Chosen(Protocol):
    def results(self, values: ProfileValues, now: datetime) -> list[AudienceResult]: ...

    def documents(self, values: ProfileValues, now: datetime) -> list[bytes]: ...


class _ServiceAudiences:
    """A service's audiences ready to evaluate, with one function that checks a user against all of them."""

    __slots__ = ("_explain_all", "_find_documents", "_seen", "audiences")

    def __init__(self, audiences: list[_Audience]) -> None:
        self.audiences = audiences
        nodes = [audience.node for audience in audiences]
        # Made when first asked for: callers that answer in JSON (the gateway) never ask for results.
        self._explain_all: Callable[[ProfileValues, datetime], tuple[Held, ...]] | None = None
        # Each audience's results by pattern, looked up here: most users' patterns were seen before,
        # and a method call per audience was a third of the time of the lookups.
        self._seen = [audience.seen_results for audience in audiences]
        self._find_documents = finder_of_all(
            nodes, [audience.seen_documents for audience in audiences], [audience.document_of for audience in audiences]
        )

    def results(self, values: ProfileValues, now: datetime) -> list[AudienceResult]:
        """Each audience's result for one user, in order; `now` aware and in UTC."""
        if self._explain_all is None:
            self._explain_all = explainer_of_all([audience.node for audience in self.audiences])
        return [
            seen.get(held) or audience.result_of(held)
            for audience, seen, held in zip(self.audiences, self._seen, self._explain_all(values, now), strict=True)
        ]

    def documents(self, values: ProfileValues, now: datetime) -> list[bytes]:
        """Each audience's result as its v1 JSON document, in order; `now` aware and in UTC."""
        return self._find_documents(values, now)


class _Picked:
    """Some of a service's audiences (a project's, or those asked for by id), checked one at a time."""

    __slots__ = ("audiences",)

    def __init__(self, audiences: list[_Audience]) -> None:
        self.audiences = audiences

    def results(self, values: ProfileValues, now: datetime) -> list[AudienceResult]:
        return [audience.result(values, now) for audience in self.audiences]

    def documents(self, values: ProfileValues, now: datetime) -> list[bytes]:
        return [audience.document(values, now) for audience in self.audiences]


@dataclass(frozen=True)
class ResolvedAudience:
    """An audience ready to run against one service's data."""

    definition: AudienceDefinition
    service: ServiceSnapshot
    node: Node | None


def usable_lookup(service: ServiceSnapshot) -> AttributeLookup:
    """Attributes as the service has them now; archived ones make their conditions stop holding."""

    def lookup(datasource_id: int, attribute_id: int) -> AttributeRef | str:
        table = service.tables.get(datasource_id)
        if table is None:
            return f"table {datasource_id} is not a table of DCP service {service.id}"
        if table.archived:
            return f"table {datasource_id} is archived"
        active = table.by_id.get(attribute_id)
        if active is None:
            return f"attribute {attribute_id} is archived or not an attribute of table {datasource_id}"
        return AttributeRef(
            datasource_id=datasource_id,
            attribute_id=attribute_id,
            datatype=active.spec.datatype,
            format=active.spec.format,
        )

    return lookup


class Targeting:
    def __init__(
        self,
        profiles: Profiles,
        registry: RegistryClient,
        audiences: AudienceDirectory,
        membership: Membership,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._profiles = profiles
        self._registry = registry
        self._audiences = audiences
        self._membership = membership
        self._clock = clock
        # Parsing 25 audiences for every page view would cost more than evaluating them.
        self._parsed: dict[int, _Audience] = {}
        # Each service's whole list, as the audience client hands it out (the same object while unchanged).
        self._listed: dict[int, tuple[Sequence[AudienceDefinition], Mapping[int, TableInfo], _ServiceAudiences]] = {}

    def _ready(self, definitions: Sequence[AudienceDefinition], service: ServiceSnapshot) -> _ServiceAudiences:
        """The service's audiences, ready to evaluate: one check for the whole list while nothing changes."""
        listed = self._listed.get(service.id)
        if listed is not None and listed[0] is definitions and listed[1] is service.tables:
            return listed[2]
        audiences = _ServiceAudiences([self._audience(definition, service) for definition in definitions])
        if len(self._listed) >= _PARSED_CACHE_LIMIT:
            self._listed.clear()
        self._listed[service.id] = (definitions, service.tables, audiences)
        return audiences

    def _audience(self, definition: AudienceDefinition, service: ServiceSnapshot) -> _Audience:
        cached = self._parsed.get(definition.id)
        if (
            cached is not None
            and cached.definition is definition
            and cached.tables is service.tables
            and cached.service_id == service.id
        ):
            return cached
        audience = _Audience(
            definition, service, parse_conditions(definition.conditions, usable_lookup(service), strict=False)
        )
        if len(self._parsed) >= _PARSED_CACHE_LIMIT:
            self._parsed.clear()
        self._parsed[definition.id] = audience
        return audience

    async def evaluate(
        self,
        identity: Identity,
        service_id: int,
        optimizely_user_id: str,
        *,
        project_id: int = 0,
        audience_ids: Sequence[int] = (),
    ) -> list[AudienceResult]:
        """Every chosen audience's outcome for one user, with each condition's."""
        values, now, chosen = await self._choose(identity, service_id, optimizely_user_id, project_id, audience_ids)
        return chosen.results(values, now)

    async def evaluate_documents(
        self,
        identity: Identity,
        service_id: int,
        optimizely_user_id: str,
        *,
        project_id: int = 0,
        audience_ids: Sequence[int] = (),
    ) -> list[bytes]:
        """`evaluate`, each outcome as its v1 JSON document (see `outcome_document`).

        Each audience keeps the documents of the patterns of leaf results it has
        seen, so that most users cost one lookup per audience rather than a
        result, then a document, found one after the other.
        """
        values, now, chosen = await self._choose(identity, service_id, optimizely_user_id, project_id, audience_ids)
        return chosen.documents(values, now)

    async def _choose(
        self, identity: Identity, service_id: int, optimizely_user_id: str, project_id: int, audience_ids: Sequence[int]
    ) -> tuple[ProfileValues, datetime, _Chosen]:
        """The user's values, the moment to judge them at, and the audiences to judge them by."""
        if project_id and await self._audiences.project_service(identity, project_id) != service_id:
            raise InvalidArgument.field("project_id", f"project {project_id} is not linked to DCP service {service_id}")
        service, _, values = await self._profiles.consolidated_values(identity, service_id, optimizely_user_id)
        definitions = await self._audiences.of_service(identity, service_id, audience_ids)
        missing = sorted(set(audience_ids) - {d.id for d in definitions}) if audience_ids else ()
        if missing:
            raise NotFound(
                f"audience {missing[0]} is not an active audience of a project linked to DCP service {service_id}",
                metadata={"resource": "audience", "id": str(missing[0])},
            )
        now = utc(self._clock())
        if project_id or audience_ids:
            chosen = [d for d in definitions if not project_id or d.project_id == project_id]
            return values, now, _Picked([self._audience(d, service) for d in chosen])
        return values, now, self._ready(definitions, service)

    async def definition(self, identity: Identity, audience_id: int) -> AudienceDefinition:
        """The audience as saved, archived or not; NOT_FOUND when the caller has no such audience."""
        return await self._audiences.get(identity, audience_id)

    async def resolve(self, identity: Identity, audience_id: int) -> ResolvedAudience:
        """An audience with its conditions checked against its service as it is now."""
        definition = await self.definition(identity, audience_id)
        if definition.archived:
            raise FailedPrecondition(
                f"audience {audience_id} is archived; it no longer matches anyone",
                reason="RESOURCE_ARCHIVED",
                metadata={"resource": "audience", "id": str(audience_id)},
            )
        if not definition.dcp_service_id:
            raise _not_linked(f"the project of audience {audience_id}", definition.project_id)
        # Membership is asked rarely and must see attributes archived a moment ago.
        service = await self._registry.fresh_service(identity, definition.dcp_service_id)
        node = parse_conditions(definition.conditions, usable_lookup(service), strict=False)
        return ResolvedAudience(definition, service, node)

    def now(self) -> datetime:
        return self._clock()

    async def count_draft(self, identity: Identity, project_id: int, conditions: str) -> int:
        """How many users an unsaved tree would match in the project; it is checked as saving it would check it."""
        checked = await self._audiences.check(identity, project_id, conditions)
        if not checked.dcp_service_id:
            raise _not_linked(f"project {project_id}", project_id)
        # As for a saved audience: counts are asked rarely and must see attributes archived a moment ago.
        service = await self._registry.fresh_service(identity, checked.dcp_service_id)
        node = parse_conditions(checked.conditions, usable_lookup(service), strict=False)
        return await self._membership.count(service.id, service.optimizely_table_id, node, now=self._clock())

    async def evaluate_draft(
        self, identity: Identity, service_id: int, optimizely_user_id: str, *, project_id: int, conditions: str
    ) -> AudienceResult:
        """An unsaved tree's outcome for one user (audience id 0, no name), checked as saving it would check it."""
        # The service first: one of another account's answers NOT_FOUND, as everywhere.
        service, _, values = await self._profiles.consolidated_values(identity, service_id, optimizely_user_id)
        checked = await self._audiences.check(identity, project_id, conditions)
        if checked.dcp_service_id != service_id:
            raise InvalidArgument.field("project_id", f"project {project_id} is not linked to DCP service {service_id}")
        node = parse_conditions(checked.conditions, usable_lookup(service), strict=False)
        return AudienceResult(0, "", evaluate(node, values, now=self._clock()))

    async def count(self, identity: Identity, audience_id: int) -> int:
        audience = await self.resolve(identity, audience_id)
        return await self._membership.count(
            audience.service.id, audience.service.optimizely_table_id, audience.node, now=self._clock()
        )

    async def members(self, identity: Identity, audience_id: int, *, after: str | None, limit: int) -> list[str]:
        audience = await self.resolve(identity, audience_id)
        return await self._membership.members(
            audience.service.id,
            audience.service.optimizely_table_id,
            audience.node,
            now=self._clock(),
            after=after,
            limit=limit,
        )


def _not_linked(subject: str, project_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"{subject} is not linked to a DCP service",
        reason="PROJECT_NOT_LINKED",
        metadata={"resource": "project", "id": str(project_id)},
    )
