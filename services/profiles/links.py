"""Where the consolidated view gets a user's links: the two ways of reaching the aliases service.

Which one a process uses is decided where it is wired: the shared database
when profiles and aliases run on one, the aliases service's API otherwise.
"""

from __future__ import annotations

from services._runtime.identity import Identity
from services.aliases.client import AliasesClient
from services.profiles.profiles import LinkedValues
from services.profiles.repository import ProfilesRepository


class PublishedLinks:
    """Links read through the view the aliases service publishes for readers of its database.

    Links and profiles come in one query: one round trip on the read behind
    every targeting decision.
    """

    def __init__(self, repository: ProfilesRepository) -> None:
        self._repo = repository

    async def linked(
        self, identity: Identity, service_id: int, optimizely_table_id: int, optimizely_user_id: str
    ) -> LinkedValues:
        # The caller's access to the service was checked with the registry before this read.
        links, stored = await self._repo.consolidated(service_id, optimizely_table_id, optimizely_user_id)
        return LinkedValues(links, stored)


class AskedLinks:
    """Links asked of the aliases service, then the profiles they name read here."""

    def __init__(self, aliases: AliasesClient, repository: ProfilesRepository) -> None:
        self._aliases = aliases
        self._repo = repository

    async def linked(
        self, identity: Identity, service_id: int, optimizely_table_id: int, optimizely_user_id: str
    ) -> LinkedValues:
        links = await self._aliases.links_of(identity, service_id, optimizely_user_id)
        keys = [*links.items()]
        if optimizely_table_id:
            keys.append((optimizely_table_id, optimizely_user_id))
        return LinkedValues(links, await self._repo.get_many(keys))
