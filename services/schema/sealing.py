"""Sealing the S3 secret keys that the catalog keeps, so a copy of the database does not hand them out.

A sealed value is `dcp-sealed-v1:<key id>:<base64url(nonce + AES-256-GCM ciphertext)>`.
The key id (first 8 hex digits of the key's SHA-256) says which key sealed it,
so rows sealed before a rotation stay readable while the previous key is still
configured. The row's service id is authenticated with the ciphertext: a value
copied into another service's row fails to open instead of handing that
service somebody else's key.

Values without the prefix are plaintext from databases older than sealing;
they open as they are until the start-up step or a rotation seals them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services._runtime.errors import DcpError, InvalidArgument

PREFIX = "dcp-sealed-v1"
KEY_BYTES = 32
_NONCE_BYTES = 12
CURRENT_KEY_VARIABLE = "DCP_SECRETS_KEY"
PREVIOUS_KEYS_VARIABLE = "DCP_SECRETS_PREVIOUS_KEYS"


class SecretKeyUnknown(DcpError):
    """A stored secret names a key that no configured key matches."""

    code = grpc.StatusCode.INTERNAL
    reason = "SECRETS_KEY_UNKNOWN"

    def __init__(self, message: str, *, key_ids: Iterable[str]) -> None:
        self.key_ids = sorted(set(key_ids))
        super().__init__(message, metadata={"key_ids": ",".join(self.key_ids)})


class SecretUnreadable(DcpError):
    """A stored secret names a configured key but does not authenticate: altered, or copied from another row."""

    code = grpc.StatusCode.INTERNAL
    reason = "SECRET_UNREADABLE"


class SecretsKeyNotConfigured(DcpError):
    """A process without a secrets key (an admin command) reached for an S3 secret."""

    reason = "SECRETS_KEY_NOT_CONFIGURED"

    def __init__(self) -> None:
        super().__init__(f"{CURRENT_KEY_VARIABLE} is not set, so the S3 secret keys cannot be read or written")


def new_key() -> str:
    """A fresh key as the settings take it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True)
class SecretsKey:
    key: bytes = field(repr=False)
    id: str

    @classmethod
    def parse(cls, text: str, *, source: str) -> SecretsKey:
        """`source` names where the text came from (a variable, a file) for the error."""
        cleaned = text.strip()
        try:
            # Standard and URL-safe alphabets both, so a key pasted from either form works.
            raw = base64.b64decode(cleaned.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument.field(source, "must be base64 of 32 random bytes (`dcp secrets new-key`)") from None
        if len(raw) != KEY_BYTES:
            raise InvalidArgument.field(
                source, f"must be base64 of {KEY_BYTES} random bytes, got {len(raw)} bytes (`dcp secrets new-key`)"
            )
        return cls(key=raw, id=key_id(raw))


def _associated_data(service_id: int) -> bytes:
    return f"open-dcp:catalog.dcp_services:{service_id}:aws_secret_key".encode()


def sealed_key_id(stored: str) -> str | None:
    """The id of the key that sealed `stored`; None for plaintext from before sealing."""
    if not stored.startswith(PREFIX + ":"):
        return None
    return stored.split(":", 2)[1]


class Keyring:
    """The key that seals, and the keys that may still open what was sealed before a rotation."""

    def __init__(self, current: SecretsKey, previous: Iterable[SecretsKey] = ()) -> None:
        self.current = current
        self._keys: dict[str, SecretsKey] = {current.id: current}
        for key in previous:
            known = self._keys.setdefault(key.id, key)
            if known.key != key.key:
                # Four bytes of a hash: two different keys sharing one is all but impossible, yet not silent.
                raise InvalidArgument.field(PREVIOUS_KEYS_VARIABLE, f"two different keys share the key id {key.id}")
        self._ciphers = {kid: AESGCM(key.key) for kid, key in self._keys.items()}

    @classmethod
    def from_text(
        cls,
        current: str,
        previous: Iterable[str] = (),
        *,
        current_source: str = CURRENT_KEY_VARIABLE,
        previous_source: str = PREVIOUS_KEYS_VARIABLE,
    ) -> Keyring:
        return cls(
            SecretsKey.parse(current, source=current_source),
            [SecretsKey.parse(text, source=previous_source) for text in previous],
        )

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def turned_to(self, new: SecretsKey) -> Keyring:
        """`new` seals from now on; every key of this ring still opens."""
        return Keyring(new, [self.current, *self._keys.values()])

    def seal(self, service_id: int, plaintext: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.current.id].encrypt(nonce, plaintext.encode(), _associated_data(service_id))
        return f"{PREFIX}:{self.current.id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, service_id: int, stored: str) -> str:
        kid = sealed_key_id(stored)
        if kid is None:
            return stored
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretKeyUnknown(
                f"the S3 secret key of DCP service {service_id} was sealed with secrets key id {kid}, which is"
                f" neither {CURRENT_KEY_VARIABLE} nor one of {PREVIOUS_KEYS_VARIABLE} (configured: "
                f"{', '.join(self._keys)})",
                key_ids=[kid],
            )
        try:
            blob = base64.urlsafe_b64decode(stored.split(":", 2)[2])
            return cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _associated_data(service_id)).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretUnreadable(
                f"the stored S3 secret key of DCP service {service_id} does not open with secrets key id {kid}:"
                " it was altered, or copied from another service's row"
            ) from None

    def is_current(self, stored: str) -> bool:
        return sealed_key_id(stored) == self.current.id
