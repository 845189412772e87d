"""The catalog's sealed S3 secrets in bulk: sealing what older versions stored in plaintext, and rotating the key."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.schema.repository import SchemaRepository
from services.schema.sealing import (
    CURRENT_KEY_VARIABLE,
    PREVIOUS_KEYS_VARIABLE,
    Keyring,
    SecretKeyUnknown,
    SecretsKey,
    SecretsKeyNotConfigured,
    SecretUnreadable,
    sealed_key_id,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 500
_LISTED_SERVICES = 10


@dataclass(frozen=True)
class Rotation:
    reencrypted: int
    """Rows sealed anew with the new key (plaintext ones included)."""
    rows: int
    """Rows looked at."""
    key_id: str
    """Id of the key that now seals every row."""


def _services(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:_LISTED_SERVICES])
    more = f" and {len(ids) - _LISTED_SERVICES} more" if len(ids) > _LISTED_SERVICES else ""
    return f"DCP service(s) {shown}{more}"


class _Unopenable:
    """Rows that no configured key opens, gathered so one error names every key id needed."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._missing: dict[str, list[int]] = defaultdict(list)
        self._altered: dict[str, list[int]] = defaultdict(list)

    def add(self, service_id: int, stored: str, error: SecretKeyUnknown | SecretUnreadable) -> None:
        kid = sealed_key_id(stored) or "?"
        (self._missing if isinstance(error, SecretKeyUnknown) else self._altered)[kid].append(service_id)

    def raise_if_any(self) -> None:
        if self._missing:
            needed = "; ".join(f"{_services(ids)} need key id {kid}" for kid, ids in self._missing.items())
            raise SecretKeyUnknown(
                f"stored S3 secret keys were sealed with a secrets key that is not configured: {needed}."
                f" Set that key in {CURRENT_KEY_VARIABLE} or {PREVIOUS_KEYS_VARIABLE}"
                f" (configured key ids: {', '.join(self._keyring.key_ids)})",
                key_ids=self._missing,
            )
        if self._altered:
            which = "; ".join(f"{_services(ids)} (key id {kid})" for kid, ids in self._altered.items())
            raise SecretUnreadable(
                f"stored S3 secret keys do not open with the key that sealed them: {which}. They were altered, or"
                " copied from another service's row; restore the rows from a backup or issue those services new keys"
            )


class StoredSecrets:
    def __init__(self, repository: SchemaRepository, keyring: Keyring | None) -> None:
        self._repo = repository
        self._keyring = keyring

    def _ring(self) -> Keyring:
        if self._keyring is None:
            raise SecretsKeyNotConfigured()
        return self._keyring

    async def _rows(self, repo: SchemaRepository, batch_size: int) -> AsyncIterator[list[tuple[int, str]]]:
        after = 0
        while rows := await repo.stored_secrets(after, batch_size):
            yield rows
            after = rows[-1][0]

    async def seal_at_start(self, *, batch_size: int = BATCH_SIZE) -> int:
        """Seals plaintext rows left by older versions and checks that every row opens; returns the rows sealed.

        One transaction under the secrets lock, so replicas starting together
        seal each row once; should any row not open, nothing is written and the
        error names the key ids that are needed.
        """
        keyring = self._ring()
        sealed = 0
        async with self._repo.transaction() as repo:
            await repo.lock_stored_secrets()
            unopenable = _Unopenable(keyring)
            async for rows in self._rows(repo, batch_size):
                for service_id, stored in rows:
                    try:
                        plaintext = keyring.open(service_id, stored)
                    except (SecretKeyUnknown, SecretUnreadable) as error:
                        unopenable.add(service_id, stored, error)
                        continue
                    if sealed_key_id(stored) is None and await repo.replace_stored_secret(
                        service_id, stored, keyring.seal(service_id, plaintext)
                    ):
                        sealed += 1
            unopenable.raise_if_any()
        if sealed:
            log.info("sealed %d S3 secret key(s) stored in plaintext with key id %s", sealed, keyring.current.id)
        return sealed

    async def check(self, keyring: Keyring, *, batch_size: int = BATCH_SIZE) -> int:
        """Every row opens with `keyring`, or the error names the key ids needed; returns the rows."""
        unopenable = _Unopenable(keyring)
        count = 0
        async for rows in self._rows(self._repo, batch_size):
            for service_id, stored in rows:
                count += 1
                try:
                    keyring.open(service_id, stored)
                except (SecretKeyUnknown, SecretUnreadable) as error:
                    unopenable.add(service_id, stored, error)
        unopenable.raise_if_any()
        return count

    async def rotate(self, new: SecretsKey, *, batch_size: int = BATCH_SIZE) -> Rotation:
        """Seals every row with `new`, a batch per transaction; rows already sealed with it are left alone.

        Every row is checked first, so a row that no key opens stops the
        rotation before anything changes. Running it again finishes what an
        interrupted run left, and seals rows that replicas still on the old
        key wrote meanwhile.
        """
        keyring = self._ring().turned_to(new)
        await self.check(keyring, batch_size=batch_size)
        reencrypted = 0
        rows_seen = 0
        after = 0
        while True:
            async with self._repo.transaction() as repo:
                await repo.lock_stored_secrets()
                rows = await repo.stored_secrets(after, batch_size)
                for service_id, stored in rows:
                    if keyring.is_current(stored):
                        continue
                    resealed = keyring.seal(service_id, keyring.open(service_id, stored))
                    if await repo.replace_stored_secret(service_id, stored, resealed):
                        reencrypted += 1
            if not rows:
                break
            rows_seen += len(rows)
            after = rows[-1][0]
        return Rotation(reencrypted=reencrypted, rows=rows_seen, key_id=new.id)
