"""Accounts, API tokens and the verification of credentials."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from services._runtime.auth import PERSONAL_TOKEN_MESSAGE, OAuthVerifier, looks_like_jwt
from services._runtime.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from services._runtime.identity import CredentialKind, Identity, Scope
from services.schema import rules
from services.schema.model import Account, Token, TokenKind
from services.schema.repository import SchemaRepository

_TOKEN_BYTES = 32  # 256 random bits
_ACCOUNT_NAMES_CACHED = 10_000


def token_hash(token: str) -> bytes:
    # A plain digest suffices: tokens are 256 random bits, not guessable passwords.
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class IssuedToken:
    """A token as issued: `secret` is shown once and never stored."""

    token: Token
    secret: str


@dataclass(frozen=True)
class VerifiedCredential:
    identity: Identity
    expires_at: float | None
    """When the credential stops holding by itself (an OAuth token's "exp", seconds since the epoch);
    None for a classic token, which holds until it is revoked."""


class Credentials:
    def __init__(self, repository: SchemaRepository, oauth: OAuthVerifier) -> None:
        self._repo = repository
        self._oauth = oauth
        # Accounts are never renamed, so a name once read stays true for the life of the process.
        self._account_names: dict[int, str] = {}

    async def create_account(self, name: str) -> Account:
        rules.name(name)
        return await self._repo.create_account(name)

    async def account_name(self, account_id: int) -> str:
        name = self._account_names.get(account_id)
        if name is None:
            account = await self._repo.get_account(account_id)
            if account is None:
                raise NotFound(f"account {account_id} does not exist")
            if len(self._account_names) >= _ACCOUNT_NAMES_CACHED:
                self._account_names.clear()
            name = self._account_names[account_id] = account.name
        return name

    async def list_accounts(self) -> list[Account]:
        return await self._repo.list_accounts()

    async def issue_token(self, account_id: int, kind: TokenKind, label: str | None = None) -> IssuedToken:
        if await self._repo.get_account(account_id) is None:
            raise NotFound(f"account {account_id} does not exist")
        if label is not None:
            rules.name(label, field="label")
        # The id is only known after the insert, and the v1 shape "<secret>:<id>"
        # needs it; the hash covers the secret part, which alone is unguessable.
        secret = secrets.token_hex(_TOKEN_BYTES)
        token = await self._repo.create_token(account_id, kind, token_hash(secret), label)
        return IssuedToken(token=token, secret=f"{secret}:{token.id}")

    async def revoke_token(self, token_id: int) -> Token:
        token = await self._repo.revoke_token(token_id)
        if token is None:
            raise NotFound(f"token {token_id} does not exist")
        return token

    async def list_tokens(self, account_id: int) -> list[Token]:
        return await self._repo.list_tokens(account_id)

    async def authenticate(self, presented: str) -> Identity:
        """Verifies a classic token or an OAuth 2.0 access token."""
        return (await self.verify(presented)).identity

    async def verify(self, presented: str) -> VerifiedCredential:
        """`authenticate`, and until when the credential itself holds."""
        if not presented:
            raise Unauthenticated("no token was sent")
        if looks_like_jwt(presented):
            return await self._verify_oauth(presented)
        secret, _, token_id = presented.rpartition(":")
        if not secret or not token_id.isdigit():
            raise Unauthenticated("the token is not valid")
        token = await self._repo.find_token(token_hash(secret))
        if token is None or str(token.id) != token_id:
            raise Unauthenticated("the token is not valid")
        if token.revoked_at is not None:
            raise PermissionDenied("the token was revoked", reason="TOKEN_REVOKED")
        if token.kind is TokenKind.PERSONAL:
            raise PermissionDenied(PERSONAL_TOKEN_MESSAGE, reason="PERSONAL_TOKEN_REFUSED")
        identity = Identity(
            account_id=token.account_id,
            scopes=frozenset({Scope.READ, Scope.WRITE}),
            credential_kind=CredentialKind.CLASSIC,
            subject=f"token:{token.id}",
        )
        return VerifiedCredential(identity, expires_at=None)

    async def _verify_oauth(self, presented: str) -> VerifiedCredential:
        claims = await self._oauth.verify(presented)
        if await self._repo.get_account(claims.account_id) is None:
            raise Unauthenticated("the OAuth access token names an account that does not exist")
        identity = Identity(
            account_id=claims.account_id,
            scopes=claims.scopes,
            credential_kind=CredentialKind.OAUTH,
            subject=f"oauth:{claims.subject}",
        )
        return VerifiedCredential(identity, expires_at=claims.expires_at)


def parse_token_kind(value: str) -> TokenKind:
    try:
        return TokenKind(value)
    except ValueError:
        raise InvalidArgument.field("kind", "must be 'classic' or 'personal'") from None
