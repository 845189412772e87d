"""The registry's resources as plain values, in v1 vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.domain.catalog import DEFAULT_BLOCKED_CUSTOMER_IDS
from services.domain.datatypes import Datatype, DatetimeFormat


class LocatorType(StrEnum):
    COOKIE = "cookie"
    QUERY_PARAMETER = "query parameter"
    JS_VARIABLE = "js_variable"
    UID = "uid"


class ImportMode(StrEnum):
    """What an uploaded file with bad rows stores."""

    PARTIAL = "partial"
    """Its valid rows; the bad ones are reported."""
    ALL_OR_NOTHING = "all_or_nothing"
    """Nothing at all."""


class TokenKind(StrEnum):
    CLASSIC = "classic"
    PERSONAL = "personal"


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    created: datetime


@dataclass(frozen=True)
class Token:
    id: int
    account_id: int
    kind: TokenKind
    label: str | None
    created: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Project:
    id: int
    account_id: int
    name: str
    dcp_service_id: int | None
    created: datetime
    last_modified: datetime


@dataclass(frozen=True)
class Audience:
    id: int
    account_id: int
    project_id: int
    name: str
    description: str
    conditions: Any
    """The conditions as the user wrote them, parsed from JSON."""
    segmentation: bool
    archived: bool
    created: datetime
    last_modified: datetime
    dcp_service_id: int | None
    """The DCP service the project is linked to now."""


@dataclass(frozen=True)
class DcpService:
    id: int
    account_id: int
    name: str
    archived: bool
    aws_access_key: str
    aws_secret_key: str
    created: datetime
    last_modified: datetime
    pii_guard: bool = True
    alias_blocked_customer_ids: tuple[str, ...] = DEFAULT_BLOCKED_CUSTOMER_IDS
    alias_max_users_per_customer_id: int = 100

    @property
    def s3_path(self) -> str:
        return f"dcp/{self.id}"


@dataclass(frozen=True)
class Attribute:
    id: int
    datasource_id: int
    name: str
    datatype: Datatype
    format: DatetimeFormat | None
    description: str | None
    is_value_public: bool
    archived: bool
    created: datetime
    last_modified: datetime


@dataclass(frozen=True)
class Table:
    id: int
    account_id: int
    dcp_service_id: int
    name: str
    description: str | None
    keyfield_locator_type: LocatorType
    keyfield_locator_name: str | None
    is_optimizely: bool
    archived: bool
    created: datetime
    last_modified: datetime
    aws_access_key: str
    aws_secret_key: str
    import_mode: ImportMode
    attributes: tuple[Attribute, ...] = ()

    @property
    def s3_path(self) -> str:
        return table_s3_path(self.dcp_service_id, self.id)


def table_s3_path(service_id: int, table_id: int) -> str:
    """The prefix a table's uploads arrive under."""
    return f"dcp/{service_id}/{table_id}"


@dataclass(frozen=True)
class ImportTarget:
    """A table as the importer sees it, whichever account owns it."""

    table_id: int
    service_id: int
    account_id: int
    import_mode: ImportMode
    archived: bool
    """The table or its service is archived."""

    @property
    def s3_path(self) -> str:
        return table_s3_path(self.service_id, self.table_id)
