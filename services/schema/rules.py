"""Validation rules of the registry; each failure names the field and why."""

from __future__ import annotations

import re

from services._runtime.errors import InvalidArgument
from services.domain.datatypes import Datatype, DatetimeFormat
from services.domain.limits import (
    MAX_BLOCKED_CUSTOMER_IDS,
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_USERS_PER_CUSTOMER_ID,
)
from services.schema.model import ImportMode, LocatorType

_LOCATOR_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z_0-9$]*$")


def _has_control_characters(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def name(value: str, *, field: str = "name") -> str:
    if not value or not value.strip():
        raise InvalidArgument.field(field, "is required and must not be blank")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument.field(field, f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    if _has_control_characters(value):
        raise InvalidArgument.field(field, "must not contain control characters")
    return value


def description(value: str | None, *, field: str = "description") -> str | None:
    if value is None:
        return None
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument.field(field, f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    if "\x00" in value:
        raise InvalidArgument.field(field, "must not contain NUL characters")
    return value


def locator_type(value: str | None) -> LocatorType:
    try:
        return LocatorType(value or "")
    except ValueError:
        choices = ", ".join(repr(t.value) for t in LocatorType)
        raise InvalidArgument.field("keyfield_locator_type", f"must be one of {choices}, got {value!r}") from None


def locator(kind: LocatorType, locator_name: str | None) -> str | None:
    """The stored locator name: none for uid, a valid identifier otherwise."""
    if kind is LocatorType.UID:
        if locator_name:
            raise InvalidArgument.field("keyfield_locator_name", "must be null when keyfield_locator_type is 'uid'")
        return None
    if not locator_name:
        raise InvalidArgument.field(
            "keyfield_locator_name", f"is required when keyfield_locator_type is {kind.value!r}"
        )
    if len(locator_name) > MAX_NAME_LENGTH or not _LOCATOR_NAME.fullmatch(locator_name):
        raise InvalidArgument.field(
            "keyfield_locator_name",
            "must start with a letter or underscore and hold only letters, digits, underscores and '$' "
            f"(at most {MAX_NAME_LENGTH} characters), got {locator_name!r}",
        )
    return locator_name


def import_mode(value: str) -> ImportMode:
    try:
        return ImportMode(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in ImportMode)
        raise InvalidArgument.field("import_mode", f"must be one of {choices}, got {value!r}") from None


def datatype(value: str | None) -> Datatype:
    try:
        return Datatype(value or "")
    except ValueError:
        choices = ", ".join(repr(t.value) for t in Datatype)
        raise InvalidArgument.field("datatype", f"must be one of {choices}, got {value!r}") from None


def datetime_format(kind: Datatype, value: str | None) -> DatetimeFormat | None:
    if kind is not Datatype.DATETIME:
        if value is not None:
            raise InvalidArgument.field("format", f"must be null for datatype {kind.value!r}; only datetime has one")
        return None
    if value is None:
        choices = ", ".join(repr(f.value) for f in DatetimeFormat)
        raise InvalidArgument.field("format", f"is required for datatype 'datetime': one of {choices}")
    try:
        return DatetimeFormat(value)
    except ValueError:
        choices = ", ".join(repr(f.value) for f in DatetimeFormat)
        raise InvalidArgument.field("format", f"must be one of {choices}, got {value!r}") from None


def blocked_customer_ids(values: list[str] | None) -> tuple[str, ...] | None:
    """Placeholder customer ids, normalised for case-insensitive comparison."""
    if values is None:
        return None
    if len(values) > MAX_BLOCKED_CUSTOMER_IDS:
        raise InvalidArgument.field(
            "guards.alias_blocked_customer_ids", f"at most {MAX_BLOCKED_CUSTOMER_IDS} values, got {len(values)}"
        )
    for value in values:
        if len(value) > MAX_NAME_LENGTH:
            raise InvalidArgument.field(
                "guards.alias_blocked_customer_ids", f"values must be at most {MAX_NAME_LENGTH} characters"
            )
        # No customer id holds one, so such a value would block nothing; NUL cannot even be stored.
        if _has_control_characters(value):
            raise InvalidArgument.field(
                "guards.alias_blocked_customer_ids", "values must not contain control characters"
            )
    return tuple(dict.fromkeys(value.strip().lower() for value in values))


def max_users_per_customer_id(value: int) -> int:
    if not 1 <= value <= MAX_USERS_PER_CUSTOMER_ID:
        raise InvalidArgument.field(
            "guards.alias_max_users_per_customer_id", f"must be between 1 and {MAX_USERS_PER_CUSTOMER_ID}, got {value}"
        )
    return value
