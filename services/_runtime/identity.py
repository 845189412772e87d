"""The caller identity every RPC carries, and its signed assertion form."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

from services._runtime.errors import PermissionDenied, Unauthenticated

IDENTITY_METADATA_KEY = "x-dcp-identity"
_ASSERTION_ISSUER = "open-dcp"
_ASSERTION_AUDIENCE = "open-dcp-services"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


class CredentialKind(StrEnum):
    CLASSIC = "classic"
    OAUTH = "oauth"


@dataclass(frozen=True)
class Identity:
    """A verified caller: every query it leads to is scoped to `account_id`."""

    account_id: int
    scopes: frozenset[Scope]
    credential_kind: CredentialKind
    subject: str

    def require(self, scope: Scope) -> None:
        # Write access includes read access: an integration that may change
        # data may also look at what it changed.
        if scope in self.scopes or (scope is Scope.READ and Scope.WRITE in self.scopes):
            return
        raise PermissionDenied(
            f"the credentials lack the {scope.value!r} scope this method needs", reason="INSUFFICIENT_SCOPE"
        )


class AssertionSigner:
    """Signs and verifies identity assertions with a key shared by the services."""

    def __init__(self, key: str, *, ttl_seconds: int) -> None:
        if len(key) < 32:
            raise ValueError("the identity key must be at least 32 characters")
        self._key = key
        self._ttl = ttl_seconds

    def sign(self, identity: Identity) -> str:
        now = int(time.time())
        claims = {
            "iss": _ASSERTION_ISSUER,
            "aud": _ASSERTION_AUDIENCE,
            "iat": now,
            "exp": now + self._ttl,
            "sub": identity.subject,
            "acc": identity.account_id,
            "scp": sorted(scope.value for scope in identity.scopes),
            "knd": identity.credential_kind.value,
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, assertion: str) -> Identity:
        try:
            claims = jwt.decode(
                assertion,
                self._key,
                algorithms=["HS256"],
                audience=_ASSERTION_AUDIENCE,
                issuer=_ASSERTION_ISSUER,
                options={"require": ["exp", "iat", "acc", "scp", "knd"]},
            )
            return Identity(
                account_id=int(claims["acc"]),
                scopes=frozenset(Scope(s) for s in claims["scp"]),
                credential_kind=CredentialKind(claims["knd"]),
                subject=str(claims.get("sub", "")),
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise Unauthenticated(f"the identity assertion is not valid: {error}") from None


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("dcp_identity", default=None)


def bind(identity: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def reset(token: contextvars.Token[Identity | None]) -> None:
    _current.reset(token)


def caller(scope: Scope) -> Identity:
    """The current RPC's verified caller, checked for `scope`."""
    identity = _current.get()
    if identity is None:
        raise Unauthenticated("this method needs credentials")
    identity.require(scope)
    return identity
