"""Turning credentials into a verified caller identity.

Classic tokens are verified by whoever owns the token store (the schema
service); OAuth 2.0 access tokens by their issuer's signature. Every service
accepts either a signed identity assertion (what the gateway forwards) or the
raw credentials of an internal caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from services._runtime.errors import PermissionDenied, Unauthenticated
from services._runtime.identity import (
    IDENTITY_METADATA_KEY,
    AssertionSigner,
    CredentialKind,
    Identity,
    Scope,
)
from services._runtime.settings import OAuthSettings

PERSONAL_TOKEN_MESSAGE = (
    "personal tokens are not accepted by DCP endpoints; use a classic token or an OAuth 2.0 access token"  # noqa: S105 - a message, not a secret
)


class Authenticator(Protocol):
    """Verifies a token as sent by a caller."""

    async def authenticate(self, token: str) -> Identity: ...


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def token_from_headers(headers: Iterable[tuple[str, str]]) -> str | None:
    """The credential of `Token: ...` or `Authorization: Bearer ...`, if any."""
    for key, value in headers:
        name = key.lower()
        if name == "token" and value.strip():
            return value.strip()
        if name == "authorization":
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return None


@dataclass(frozen=True)
class VerifiedAccessToken:
    """What a valid OAuth 2.0 access token says, and until when (its "exp", seconds since the epoch)."""

    account_id: int
    scopes: frozenset[Scope]
    subject: str
    expires_at: float


class OAuthVerifier:
    """Verifies OAuth 2.0 JWT access tokens from the configured issuer."""

    def __init__(self, settings: OAuthSettings) -> None:
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        self._public_key: str | None = None
        if settings.jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300)
        elif settings.public_key_file:
            self._public_key = settings.public_key_file.read_text()

    async def _signing_key(self, token: str) -> Any:
        if self._jwks is not None:
            # PyJWKClient fetches with urllib; keep the event loop free.
            return (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
        return self._public_key

    async def verify(self, token: str) -> VerifiedAccessToken:
        if not self._settings.enabled:
            raise Unauthenticated("OAuth 2.0 access tokens are not configured on this server")
        try:
            key = await self._signing_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"],
                issuer=self._settings.issuer,
                audience=self._settings.audience,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iss"], "verify_aud": self._settings.audience is not None},
            )
        except (jwt.PyJWTError, OSError) as error:
            raise Unauthenticated(f"the OAuth access token is not valid: {error}") from None
        account_id = _account_of(claims.get(self._settings.account_claim))
        if account_id is None:
            raise Unauthenticated(
                f"the OAuth access token's {self._settings.account_claim!r} claim must be a JSON integer"
                f" from 1 to {ACCOUNT_ID_MAX}"
            )
        granted = _scopes_of(claims)
        scopes: set[Scope] = set()
        if self._settings.read_scope in granted:
            scopes.add(Scope.READ)
        if self._settings.write_scope in granted:
            scopes.add(Scope.WRITE)
        if not scopes:
            raise PermissionDenied(
                f"the OAuth access token grants neither {self._settings.read_scope!r} "
                f"nor {self._settings.write_scope!r}",
                reason="INSUFFICIENT_SCOPE",
            )
        return VerifiedAccessToken(
            account_id=account_id,
            scopes=frozenset(scopes),
            subject=str(claims.get("sub", "")),
            expires_at=float(claims["exp"]),
        )


ACCOUNT_ID_MAX = 2**63 - 1


def _account_of(claim: Any) -> int | None:
    """The account a claim names: only a JSON integer (not a bool, a float or a string) in 1..2^63-1."""
    # bool is an int subclass, so `true` would otherwise be account 1.
    if type(claim) is not int or not 1 <= claim <= ACCOUNT_ID_MAX:
        return None
    return claim


def _scopes_of(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return set(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return {str(s) for s in scp}
    if isinstance(scp, str):
        return set(scp.split())
    return set()


class CallerResolver:
    """Resolves one RPC's metadata into a verified identity."""

    def __init__(self, signer: AssertionSigner, authenticator: Authenticator) -> None:
        self._signer = signer
        self._authenticator = authenticator

    async def resolve(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        text_headers = [(k, v) for k, v in metadata if isinstance(v, str)]
        for key, value in text_headers:
            if key.lower() == IDENTITY_METADATA_KEY:
                return self._signer.verify(value)
        token = token_from_headers(text_headers)
        if token is None:
            raise Unauthenticated("no credentials: send 'Token: <classic token>' or 'Authorization: Bearer <token>'")
        return await self._authenticator.authenticate(token)


__all__ = [
    "PERSONAL_TOKEN_MESSAGE",
    "AssertionSigner",
    "Authenticator",
    "CallerResolver",
    "CredentialKind",
    "Identity",
    "OAuthVerifier",
    "VerifiedAccessToken",
    "looks_like_jwt",
    "token_from_headers",
]
