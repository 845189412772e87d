"""Caller identities: what the internal scope allows, and that no account credential can carry it."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services._runtime.auth import OAuthVerifier
from services._runtime.errors import PermissionDenied, Unauthenticated
from services._runtime.identity import AssertionSigner, CredentialKind, Identity, Scope, internal_identity
from services._runtime.settings import OAuthSettings

KEY = secrets.token_urlsafe(48)


def test_an_internal_identity_is_no_account_caller() -> None:
    internal = internal_identity("imports")
    assert internal == Identity(0, frozenset({Scope.INTERNAL}), CredentialKind.SERVICE, "imports")
    internal.require(Scope.INTERNAL)
    for scope in (Scope.READ, Scope.WRITE):
        with pytest.raises(PermissionDenied) as refused:
            internal.require(scope)
        assert refused.value.reason == "INSUFFICIENT_SCOPE"


def test_write_implies_read_but_no_account_scope_implies_internal() -> None:
    writer = Identity(7, frozenset({Scope.WRITE}), CredentialKind.CLASSIC, "token:1")
    writer.require(Scope.READ)
    writer.require(Scope.WRITE)
    reader = Identity(7, frozenset({Scope.READ}), CredentialKind.OAUTH, "oauth:x")
    with pytest.raises(PermissionDenied):
        reader.require(Scope.WRITE)
    for identity in (writer, reader, Identity(7, frozenset({Scope.READ, Scope.WRITE}), CredentialKind.SERVICE, "s")):
        with pytest.raises(PermissionDenied):
            identity.require(Scope.INTERNAL)


@pytest.mark.parametrize(
    ("account_id", "scopes", "kind"),
    [
        (0, {Scope.INTERNAL}, CredentialKind.CLASSIC),
        (0, {Scope.INTERNAL}, CredentialKind.OAUTH),
        (5, {Scope.INTERNAL}, CredentialKind.SERVICE),
        (0, {Scope.INTERNAL, Scope.READ}, CredentialKind.SERVICE),
        (0, {Scope.INTERNAL, Scope.WRITE}, CredentialKind.SERVICE),
    ],
    ids=["classic", "oauth", "an account's", "with read", "with write"],
)
def test_the_internal_scope_belongs_to_a_service_of_account_0_alone(
    account_id: int, scopes: set[Scope], kind: CredentialKind
) -> None:
    with pytest.raises(ValueError, match="internal scope"):
        Identity(account_id, frozenset(scopes), kind, "x")


def test_an_internal_assertion_verifies() -> None:
    signer = AssertionSigner(KEY, ttl_seconds=60)
    internal = internal_identity("imports")
    assert AssertionSigner(KEY, ttl_seconds=60).verify(signer.sign(internal)) == internal


def _assertion(**claims: Any) -> str:
    now = int(time.time())
    base = {"iss": "open-dcp", "aud": "open-dcp-services", "iat": now, "exp": now + 60, "sub": "x"}
    return jwt.encode({**base, **claims}, KEY, algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [
        {"acc": 5, "scp": ["internal"], "knd": "service"},
        {"acc": 0, "scp": ["internal"], "knd": "classic"},
        {"acc": 0, "scp": ["internal"], "knd": "oauth"},
        {"acc": 0, "scp": ["internal", "read"], "knd": "service"},
        {"acc": 3, "scp": ["internal", "read", "write"], "knd": "classic"},
    ],
    ids=["for an account", "classic", "oauth", "with read", "on a classic token's scopes"],
)
def test_signed_assertions_that_mix_internal_with_an_account_are_refused(claims: dict[str, Any]) -> None:
    # Even with the right key: a signer bug must not open every account.
    with pytest.raises(Unauthenticated):
        AssertionSigner(KEY, ttl_seconds=60).verify(_assertion(**claims))


@pytest.fixture(scope="module")
def issuer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _verifier(key: rsa.RSAPrivateKey, tmp_path: Path, **overrides: Any) -> OAuthVerifier:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "issuer.pem"
    key_file.write_bytes(pem)
    return OAuthVerifier(OAuthSettings(issuer="https://idp.test/", public_key_file=key_file, **overrides))


def _access_token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": "https://idp.test/", "sub": "svc", "iat": now, "exp": now + 60, "account_id": 4}
    return jwt.encode({**base, **claims}, key, algorithm="RS256")


@pytest.mark.parametrize(
    ("claims", "settings", "expected"),
    [
        ({"scope": "internal dcp:read"}, {}, {Scope.READ}),
        ({"scp": ["internal", "dcp:write"]}, {}, {Scope.WRITE}),
        ({"scope": "internal"}, {"read_scope": "internal"}, {Scope.READ}),
        ({"scope": "internal"}, {"write_scope": "internal"}, {Scope.WRITE}),
    ],
    ids=["scope claim", "scp claim", "as the read scope", "as the write scope"],
)
async def test_oauth_tokens_never_grant_the_internal_scope(
    issuer_key: rsa.RSAPrivateKey,
    tmp_path: Path,
    claims: dict[str, Any],
    settings: dict[str, str],
    expected: set[Scope],
) -> None:
    verifier = _verifier(issuer_key, tmp_path, **settings)
    verified = await verifier.verify(_access_token(issuer_key, **claims))
    assert (verified.account_id, verified.scopes) == (4, frozenset(expected))


async def test_an_oauth_token_asking_only_for_internal_is_refused(
    issuer_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    with pytest.raises(PermissionDenied):
        await _verifier(issuer_key, tmp_path).verify(_access_token(issuer_key, scope="internal"))
