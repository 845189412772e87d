"""Sealing S3 secret keys: what a stored value reveals, which keys open it, and what never opens."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services._runtime.errors import InvalidArgument
from services._runtime.settings import Settings
from services.schema.keys import new_access_key_pair
from services.schema.sealing import (
    PREFIX,
    Keyring,
    SecretKeyUnknown,
    SecretsKey,
    SecretUnreadable,
    new_key,
    sealed_key_id,
)

OLD = new_key()
NEW = new_key()


def test_a_sealed_secret_holds_no_plaintext_and_names_its_key() -> None:
    _, secret = new_access_key_pair()
    keyring = Keyring.from_text(OLD)
    sealed = keyring.seal(7, secret)
    assert secret not in sealed
    assert sealed.startswith(f"{PREFIX}:")
    assert sealed_key_id(sealed) == hashlib.sha256(base64.b64decode(OLD)).hexdigest()[:8]
    assert keyring.open(7, sealed) == secret
    # A fresh nonce each time: equal secrets do not show as equal columns.
    assert keyring.seal(7, secret) != sealed


@given(st.text(max_size=200), st.integers(min_value=1, max_value=2**63 - 1))
def test_any_text_opens_as_it_was_sealed(secret: str, service_id: int) -> None:
    keyring = Keyring.from_text(OLD)
    assert keyring.open(service_id, keyring.seal(service_id, secret)) == secret


def test_a_value_copied_to_another_service_does_not_open() -> None:
    keyring = Keyring.from_text(OLD)
    sealed = keyring.seal(7, "the secret of service 7")
    with pytest.raises(SecretUnreadable, match="DCP service 8"):
        keyring.open(8, sealed)


def test_an_altered_value_does_not_open() -> None:
    keyring = Keyring.from_text(OLD)
    sealed = keyring.seal(7, "the secret of service 7")
    head, body = sealed.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(SecretUnreadable):
        keyring.open(7, f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode()}")
    with pytest.raises(SecretUnreadable):
        keyring.open(7, f"{head}:not base64!")


def test_after_a_rotation_the_previous_key_still_opens_and_the_new_one_seals() -> None:
    before = Keyring.from_text(OLD)
    sealed_before = before.seal(3, "secret")
    after = Keyring.from_text(NEW, [OLD])
    assert after.open(3, sealed_before) == "secret"
    assert not after.is_current(sealed_before)
    sealed_after = after.seal(3, "secret")
    assert after.is_current(sealed_after)
    assert sealed_key_id(sealed_after) == after.current.id != before.current.id


def test_a_value_sealed_with_a_key_not_configured_names_the_key_it_needs() -> None:
    sealed = Keyring.from_text(OLD).seal(3, "secret")
    needed = SecretsKey.parse(OLD, source="x").id
    with pytest.raises(SecretKeyUnknown, match=needed) as raised:
        Keyring.from_text(NEW).open(3, sealed)
    assert raised.value.key_ids == [needed]


def test_plaintext_from_before_sealing_opens_as_it_is() -> None:
    _, secret = new_access_key_pair()
    keyring = Keyring.from_text(OLD)
    assert sealed_key_id(secret) is None
    assert keyring.open(3, secret) == secret
    assert not keyring.is_current(secret)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64 at all!", "base64 of 32 random bytes"),
        (base64.b64encode(b"short").decode(), "got 5 bytes"),
    ],
)
def test_a_bad_key_is_refused_naming_its_variable(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        Keyring.from_text(text)
    assert raised.value.violations[0][0] == "DCP_SECRETS_KEY"
    with pytest.raises(InvalidArgument) as raised:
        Keyring.from_text(NEW, [text])
    assert raised.value.violations[0][0] == "DCP_SECRETS_PREVIOUS_KEYS"


def test_url_safe_and_standard_base64_are_the_same_key() -> None:
    raw = bytes(range(250, 256)) * 5 + b"\xfb\xff"
    standard = base64.b64encode(raw).decode()
    url_safe = base64.urlsafe_b64encode(raw).decode()
    assert standard != url_safe
    assert SecretsKey.parse(standard, source="x") == SecretsKey.parse(url_safe, source="x")


def test_settings_read_the_keys_and_keep_them_out_of_their_repr() -> None:
    settings = Settings.from_env({"DCP_SECRETS_KEY": NEW, "DCP_SECRETS_PREVIOUS_KEYS": f" {OLD} , ,"})
    assert settings.secrets_key == NEW
    assert settings.secrets_previous_keys == (OLD,)
    assert NEW not in repr(settings)
    assert OLD not in repr(settings)
    assert Settings.from_env({}).secrets_previous_keys == ()
