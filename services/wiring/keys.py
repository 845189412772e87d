"""The keys a process signs identities and seals secrets with, and the first account of a new platform."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from services._runtime.identity import AssertionSigner
from services._runtime.settings import Settings
from services.schema.credentials import Credentials
from services.schema.keyfile import read_keys, read_or_create_keys
from services.schema.model import TokenKind


def identity_signer(settings: Settings, *, allow_generated: bool) -> AssertionSigner:
    key = settings.identity_key
    if key is None:
        if not allow_generated:
            raise SystemExit("DCP_IDENTITY_KEY must be set when services run in separate processes")
        # One process signs and verifies, so a key that lives as long as it does is enough.
        key = secrets.token_urlsafe(48)
    return AssertionSigner(key, ttl_seconds=settings.identity_ttl_seconds)


SECRETS_KEY_FILE = "secrets.key"


def with_secrets_key(settings: Settings, *, allow_generated: bool, create: bool = True) -> Settings:
    """Settings holding the key that seals S3 secrets: DCP_SECRETS_KEY, else the data dir's.

    The data dir's key is made on the first start (`create`) and outlives
    restarts, since rows sealed with it must open again.
    """
    if settings.secrets_key is not None:
        return settings
    if not allow_generated:
        raise SystemExit(
            "DCP_SECRETS_KEY must be set when services run in separate processes (`dcp secrets new-key` makes one)"
        )
    path = settings.data_dir / SECRETS_KEY_FILE
    keys = read_or_create_keys(path) if create else read_keys(path)
    if not keys:
        return settings
    return settings.with_overrides(
        secrets_key=keys[0], secrets_previous_keys=(*settings.secrets_previous_keys, *keys[1:])
    )


async def ensure_first_account(credentials: Credentials, data_dir: Path) -> str | None:
    """On the very first start: a default account and a classic token, saved owner-only."""
    if await credentials.list_accounts():
        return None
    account = await credentials.create_account("default")
    issued = await credentials.issue_token(account.id, TokenKind.CLASSIC, label="created by dcp up")
    await asyncio.to_thread(_write_owner_only, data_dir / "token", issued.secret + "\n")
    return issued.secret


def _write_owner_only(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
