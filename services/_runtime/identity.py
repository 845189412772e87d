"""The caller identity every RPC carries, and its signed assertion form."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

from services._runtime.errors import PermissionDenied, Unauthenticated

IDENTITY_METADATA_KEY = "x-dcp-identity"
_CACHE_LIMIT = 10_000
_ASSERTION_ISSUER = "open-dcp"
_ASSERTION_AUDIENCE = "open-dcp-services"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    INTERNAL = "internal"
    """Cross-account methods for the platform's own services; no token grants it."""


class CredentialKind(StrEnum):
    CLASSIC = "classic"
    OAUTH = "oauth"
    SERVICE = "service"
    """One of the platform's services, asserting itself with the identity key."""


@dataclass(frozen=True)
class Identity:
    """A verified caller: every query it leads to is scoped to `account_id`."""

    account_id: int
    scopes: frozenset[Scope]
    credential_kind: CredentialKind
    subject: str

    def __post_init__(self) -> None:
        # The internal scope reaches every account, so it must never ride along
        # with an account's credentials, nor pass for an account caller: a
        # method checking only for read or write would then serve account 0.
        if Scope.INTERNAL in self.scopes and (
            self.credential_kind is not CredentialKind.SERVICE or self.account_id != 0 or len(self.scopes) != 1
        ):
            raise ValueError("the internal scope belongs to a service identity of account 0, alone")

    def require(self, scope: Scope) -> None:
        # Write access includes read access: an integration that may change
        # data may also look at what it changed.
        if scope in self.scopes or (scope is Scope.READ and Scope.WRITE in self.scopes):
            return
        raise PermissionDenied(
            f"the credentials lack the {scope.value!r} scope this method needs", reason="INSUFFICIENT_SCOPE"
        )


def internal_identity(subject: str) -> Identity:
    """The identity a platform service (named by `subject`) calls internal methods with."""
    return Identity(
        account_id=0, scopes=frozenset({Scope.INTERNAL}), credential_kind=CredentialKind.SERVICE, subject=subject
    )


@dataclass(frozen=True)
class SignedAssertion:
    assertion: str
    expires_at: float
    """Seconds since the epoch."""


class AssertionSigner:
    """Signs and verifies identity assertions with a key shared by the services."""

    def __init__(self, key: str, *, ttl_seconds: int) -> None:
        if len(key) < 32:
            raise ValueError("the identity key must be at least 32 characters")
        self._key = key
        self._ttl = ttl_seconds
        # A caller repeats its assertion on every call until it expires; checking
        # the signature once per assertion takes HMAC work off the hot path.
        self._verified: dict[str, tuple[Identity, float]] = {}
        self._signed: dict[Identity, tuple[SignedAssertion, float]] = {}

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

    def sign_cached(self, identity: Identity) -> str:
        """An assertion for `identity`, reused while it has most of its life left."""
        return self.signed_cached(identity).assertion

    def signed_cached(self, identity: Identity) -> SignedAssertion:
        """`sign_cached` with the moment its assertion expires."""
        cached = self._signed.get(identity)
        now = time.time()
        if cached is not None and cached[1] > now:
            return cached[0]
        if len(self._signed) >= _CACHE_LIMIT:
            self._signed.clear()
        signed = SignedAssertion(self.sign(identity), expires_at=int(now) + self._ttl)
        self._signed[identity] = (signed, now + self._ttl / 2)
        return signed

    def verify(self, assertion: str) -> Identity:
        cached = self._verified.get(assertion)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        identity, expires = self._verify(assertion)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[assertion] = (identity, expires)
        return identity

    def _verify(self, assertion: str) -> tuple[Identity, float]:
        try:
            claims = jwt.decode(
                assertion,
                self._key,
                algorithms=["HS256"],
                audience=_ASSERTION_AUDIENCE,
                issuer=_ASSERTION_ISSUER,
                options={"require": ["exp", "iat", "acc", "scp", "knd"]},
            )
            identity = Identity(
                account_id=int(claims["acc"]),
                scopes=frozenset(Scope(s) for s in claims["scp"]),
                credential_kind=CredentialKind(claims["knd"]),
                subject=str(claims.get("sub", "")),
            )
            return identity, float(claims["exp"])
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
