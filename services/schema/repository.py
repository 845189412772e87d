"""SQL for the catalog schema; every query is scoped by account but the importer's listing of all tables."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from services._runtime.db import MigrationSet
from services._runtime.paging import Page
from services.domain.datatypes import Datatype, DatetimeFormat
from services.schema.model import (
    Account,
    Attribute,
    Audience,
    DcpService,
    ImportMode,
    ImportTarget,
    LocatorType,
    Project,
    Table,
    Token,
    TokenKind,
)
from services.schema.sealing import Keyring, SecretsKeyNotConfigured

SCHEMA = "catalog"
# Held by whoever rewrites stored secrets in bulk (the start-up sealing, a rotation), for one transaction.
_SECRETS_LOCK = "dcp-secrets:catalog"
MIGRATIONS = MigrationSet(schema=SCHEMA, directory=Path(__file__).parent / "migrations")

_TABLE_COLUMNS = """
    d.id, d.account_id, d.dcp_service_id, d.name, d.description, d.keyfield_locator_type,
    d.keyfield_locator_name, d.is_optimizely, d.archived, d.created, d.last_modified,
    s.aws_access_key, s.aws_secret_key, d.import_mode
"""
_TABLE_FROM = "catalog.datasources d JOIN catalog.dcp_services s ON s.id = d.dcp_service_id"
_ATTRIBUTE_COLUMNS = """
    id, datasource_id, name, datatype, format, description, is_value_public, archived, created, last_modified
"""


_AUDIENCE_COLUMNS = """
    a.id, a.account_id, a.project_id, a.name, a.description, a.conditions, a.segmentation, a.archived,
    a.created, a.last_modified, p.dcp_service_id
"""
_AUDIENCE_FROM = "catalog.audiences a JOIN catalog.projects p ON p.id = a.project_id"


def _audience(row: asyncpg.Record) -> Audience:
    return Audience(**dict(row))


def _account(row: asyncpg.Record) -> Account:
    return Account(id=row["id"], name=row["name"], created=row["created"])


def _token(row: asyncpg.Record) -> Token:
    return Token(
        id=row["id"],
        account_id=row["account_id"],
        kind=TokenKind(row["kind"]),
        label=row["label"],
        created=row["created"],
        revoked_at=row["revoked_at"],
    )


def _project(row: asyncpg.Record) -> Project:
    return Project(**dict(row))


def _service(row: asyncpg.Record, secret_key: str) -> DcpService:
    values = dict(row)
    values["aws_secret_key"] = secret_key
    values["alias_blocked_customer_ids"] = tuple(values["alias_blocked_customer_ids"])
    return DcpService(**values)


def _attribute(row: asyncpg.Record) -> Attribute:
    values = dict(row)
    values["datatype"] = Datatype(values["datatype"])
    values["format"] = DatetimeFormat(values["format"]) if values["format"] else None
    return Attribute(**values)


def _table(row: asyncpg.Record, secret_key: str, attributes: Sequence[Attribute] = ()) -> Table:
    values = dict(row)
    values["aws_secret_key"] = secret_key
    values["keyfield_locator_type"] = LocatorType(values["keyfield_locator_type"])
    values["import_mode"] = ImportMode(values["import_mode"])
    return Table(**values, attributes=tuple(attributes))


class SchemaRepository:
    """Queries against `catalog`; bound to a pool, or to one transaction.

    S3 secret keys are sealed on their way in and opened on their way out with
    `secrets`; without it, rows holding them cannot be read or written.
    """

    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection, secrets: Keyring | None = None) -> None:
        self._db: Any = executor
        self._secrets = secrets

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SchemaRepository]:
        async with self._db.acquire() as connection, connection.transaction():
            yield SchemaRepository(connection, self._secrets)

    def _keyring(self) -> Keyring:
        if self._secrets is None:
            raise SecretsKeyNotConfigured()
        return self._secrets

    def _service(self, row: asyncpg.Record) -> DcpService:
        return _service(row, self._keyring().open(row["id"], row["aws_secret_key"]))

    def _table(self, row: asyncpg.Record, attributes: Sequence[Attribute] = ()) -> Table:
        return _table(row, self._keyring().open(row["dcp_service_id"], row["aws_secret_key"]), attributes)

    # Accounts and tokens

    async def create_account(self, name: str) -> Account:
        row = await self._db.fetchrow("INSERT INTO catalog.accounts (name) VALUES ($1) RETURNING *", name)
        return _account(row)

    async def get_account(self, account_id: int) -> Account | None:
        row = await self._db.fetchrow("SELECT * FROM catalog.accounts WHERE id = $1", account_id)
        return _account(row) if row else None

    async def list_accounts(self) -> list[Account]:
        return [_account(r) for r in await self._db.fetch("SELECT * FROM catalog.accounts ORDER BY id")]

    async def create_token(self, account_id: int, kind: TokenKind, token_hash: bytes, label: str | None) -> Token:
        row = await self._db.fetchrow(
            "INSERT INTO catalog.tokens (account_id, kind, token_hash, label) VALUES ($1, $2, $3, $4)"
            " RETURNING id, account_id, kind, label, created, revoked_at",
            account_id,
            kind.value,
            token_hash,
            label,
        )
        return _token(row)

    async def find_token(self, token_hash: bytes) -> Token | None:
        row = await self._db.fetchrow(
            "SELECT id, account_id, kind, label, created, revoked_at FROM catalog.tokens WHERE token_hash = $1",
            token_hash,
        )
        return _token(row) if row else None

    async def revoke_token(self, token_id: int) -> Token | None:
        row = await self._db.fetchrow(
            "UPDATE catalog.tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
            " RETURNING id, account_id, kind, label, created, revoked_at",
            token_id,
        )
        return _token(row) if row else None

    async def list_tokens(self, account_id: int) -> list[Token]:
        rows = await self._db.fetch(
            "SELECT id, account_id, kind, label, created, revoked_at FROM catalog.tokens"
            " WHERE account_id = $1 ORDER BY id",
            account_id,
        )
        return [_token(r) for r in rows]

    # Projects

    async def list_projects(self, account_id: int, page: Page) -> list[Project]:
        rows = await self._db.fetch(
            "SELECT id, account_id, name, dcp_service_id, created, last_modified FROM catalog.projects"
            " WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            account_id,
            page.after_id,
            page.size + 1,
        )
        return [_project(r) for r in rows]

    async def get_project(self, account_id: int, project_id: int) -> Project | None:
        row = await self._db.fetchrow(
            "SELECT id, account_id, name, dcp_service_id, created, last_modified FROM catalog.projects"
            " WHERE account_id = $1 AND id = $2",
            account_id,
            project_id,
        )
        return _project(row) if row else None

    async def create_project(self, account_id: int, name: str, dcp_service_id: int | None) -> Project:
        row = await self._db.fetchrow(
            "INSERT INTO catalog.projects (account_id, name, dcp_service_id) VALUES ($1, $2, $3)"
            " RETURNING id, account_id, name, dcp_service_id, created, last_modified",
            account_id,
            name,
            dcp_service_id,
        )
        return _project(row)

    async def update_project(self, account_id: int, project_id: int, name: str, dcp_service_id: int | None) -> Project:
        row = await self._db.fetchrow(
            "UPDATE catalog.projects SET name = $3, dcp_service_id = $4, last_modified = now()"
            " WHERE account_id = $1 AND id = $2"
            " RETURNING id, account_id, name, dcp_service_id, created, last_modified",
            account_id,
            project_id,
            name,
            dcp_service_id,
        )
        return _project(row)

    # DCP services

    async def lock_account(self, account_id: int) -> bool:
        """Serialises changes that count an account's resources."""
        row = await self._db.fetchrow("SELECT id FROM catalog.accounts WHERE id = $1 FOR UPDATE", account_id)
        return row is not None

    async def count_active_services(self, account_id: int) -> int:
        count: int = await self._db.fetchval(
            "SELECT count(*) FROM catalog.dcp_services WHERE account_id = $1 AND NOT archived", account_id
        )
        return count

    async def list_services(self, account_id: int, page: Page) -> list[DcpService]:
        rows = await self._db.fetch(
            "SELECT * FROM catalog.dcp_services WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            account_id,
            page.after_id,
            page.size + 1,
        )
        return [self._service(r) for r in rows]

    async def get_service(self, account_id: int, service_id: int, *, for_update: bool = False) -> DcpService | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._db.fetchrow(
            f"SELECT * FROM catalog.dcp_services WHERE account_id = $1 AND id = $2{lock}", account_id, service_id
        )
        return self._service(row) if row else None

    async def create_service(self, account_id: int, name: str, access_key: str, secret_key: str) -> DcpService:
        # The id is sealed with the secret, so it is drawn before the row is written.
        service_id: int = await self._db.fetchval(
            "SELECT nextval(pg_get_serial_sequence('catalog.dcp_services', 'id'))"
        )
        row = await self._db.fetchrow(
            "INSERT INTO catalog.dcp_services (id, account_id, name, aws_access_key, aws_secret_key)"
            " OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5) RETURNING *",
            service_id,
            account_id,
            name,
            access_key,
            self._keyring().seal(service_id, secret_key),
        )
        return self._service(row)

    async def set_service_keys(self, account_id: int, service_id: int, access_key: str, secret_key: str) -> DcpService:
        row = await self._db.fetchrow(
            "UPDATE catalog.dcp_services SET aws_access_key = $3, aws_secret_key = $4"
            " WHERE account_id = $1 AND id = $2 RETURNING *",
            account_id,
            service_id,
            access_key,
            self._keyring().seal(service_id, secret_key),
        )
        return self._service(row)

    async def update_service(self, service: DcpService) -> DcpService:
        row = await self._db.fetchrow(
            "UPDATE catalog.dcp_services SET name = $3, pii_guard = $4, alias_blocked_customer_ids = $5,"
            " alias_max_users_per_customer_id = $6, last_modified = now()"
            " WHERE account_id = $1 AND id = $2 RETURNING *",
            service.account_id,
            service.id,
            service.name,
            service.pii_guard,
            list(service.alias_blocked_customer_ids),
            service.alias_max_users_per_customer_id,
        )
        return self._service(row)

    async def active_upload_keys(self) -> list[tuple[int, str, str]]:
        """(service id, access key, secret key) of every active DCP service, whichever account owns it."""
        rows = await self._db.fetch(
            "SELECT id, aws_access_key, aws_secret_key FROM catalog.dcp_services WHERE NOT archived ORDER BY id"
        )
        keyring = self._keyring()
        return [(row["id"], row["aws_access_key"], keyring.open(row["id"], row["aws_secret_key"])) for row in rows]

    async def archive_service(self, account_id: int, service_id: int) -> None:
        await self._db.execute(
            "UPDATE catalog.datasources SET archived = true, last_modified = now()"
            " WHERE account_id = $1 AND dcp_service_id = $2 AND NOT archived",
            account_id,
            service_id,
        )
        await self._db.execute(
            "UPDATE catalog.dcp_services SET archived = true, last_modified = now()"
            " WHERE account_id = $1 AND id = $2 AND NOT archived",
            account_id,
            service_id,
        )

    # Stored secrets, as stored: for sealing old rows and for rotations

    async def lock_stored_secrets(self) -> None:
        """Serialises bulk rewrites of stored secrets until this transaction ends."""
        await self._db.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _SECRETS_LOCK)

    async def stored_secrets(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        rows = await self._db.fetch(
            "SELECT id, aws_secret_key FROM catalog.dcp_services WHERE id > $1 ORDER BY id LIMIT $2",
            after_id,
            limit,
        )
        return [(r["id"], r["aws_secret_key"]) for r in rows]

    async def replace_stored_secret(self, service_id: int, stored: str, replacement: str) -> bool:
        """Only while the row still holds `stored`: a key changed meanwhile is newer and stays."""
        status: str = await self._db.execute(
            "UPDATE catalog.dcp_services SET aws_secret_key = $3 WHERE id = $1 AND aws_secret_key = $2",
            service_id,
            stored,
            replacement,
        )
        return status == "UPDATE 1"

    # Tables

    async def list_tables(self, account_id: int, service_id: int, page: Page) -> list[Table]:
        # The Optimizely table is created with its service, so it always has the
        # lowest id and id order puts it first.
        rows = await self._db.fetch(
            f"SELECT {_TABLE_COLUMNS} FROM {_TABLE_FROM}"
            " WHERE d.account_id = $1 AND d.dcp_service_id = $2 AND d.id > $3 ORDER BY d.id LIMIT $4",
            account_id,
            service_id,
            page.after_id,
            page.size + 1,
        )
        attributes = await self._attributes_of([r["id"] for r in rows])
        return [self._table(r, attributes.get(r["id"], ())) for r in rows]

    async def get_table(self, account_id: int, table_id: int, *, for_update: bool = False) -> Table | None:
        lock = " FOR UPDATE OF d" if for_update else ""
        row = await self._db.fetchrow(
            f"SELECT {_TABLE_COLUMNS} FROM {_TABLE_FROM} WHERE d.account_id = $1 AND d.id = $2{lock}",
            account_id,
            table_id,
        )
        if row is None:
            return None
        attributes = await self._attributes_of([table_id])
        return self._table(row, attributes.get(table_id, ()))

    async def _attributes_of(self, table_ids: list[int]) -> dict[int, list[Attribute]]:
        if not table_ids:
            return {}
        rows = await self._db.fetch(
            f"SELECT {_ATTRIBUTE_COLUMNS} FROM catalog.attributes WHERE datasource_id = ANY($1::bigint[])"
            " ORDER BY datasource_id, id",
            table_ids,
        )
        grouped: dict[int, list[Attribute]] = {}
        for row in rows:
            grouped.setdefault(row["datasource_id"], []).append(_attribute(row))
        return grouped

    async def create_table(
        self,
        account_id: int,
        service_id: int,
        *,
        name: str,
        description: str | None,
        locator_type: LocatorType,
        locator_name: str | None,
        import_mode: ImportMode = ImportMode.PARTIAL,
        is_optimizely: bool = False,
    ) -> int:
        table_id: int = await self._db.fetchval(
            "INSERT INTO catalog.datasources (account_id, dcp_service_id, name, description,"
            " keyfield_locator_type, keyfield_locator_name, is_optimizely, import_mode)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            account_id,
            service_id,
            name,
            description,
            locator_type.value,
            locator_name,
            is_optimizely,
            import_mode.value,
        )
        return table_id

    async def update_table(
        self,
        account_id: int,
        table_id: int,
        *,
        name: str,
        description: str | None,
        locator_type: LocatorType,
        locator_name: str | None,
        import_mode: ImportMode,
        archived: bool,
    ) -> None:
        await self._db.execute(
            "UPDATE catalog.datasources SET name = $3, description = $4, keyfield_locator_type = $5,"
            " keyfield_locator_name = $6, import_mode = $7, archived = $8, last_modified = now()"
            " WHERE account_id = $1 AND id = $2",
            account_id,
            table_id,
            name,
            description,
            locator_type.value,
            locator_name,
            import_mode.value,
            archived,
        )

    async def list_import_targets(self, page: Page) -> list[ImportTarget]:
        """Every account's tables, for the importer that maps uploads to them."""
        rows = await self._db.fetch(
            "SELECT d.id, d.dcp_service_id, d.account_id, d.import_mode, d.archived OR s.archived AS archived"
            f" FROM {_TABLE_FROM} WHERE d.id > $1 ORDER BY d.id LIMIT $2",
            page.after_id,
            page.size + 1,
        )
        return [
            ImportTarget(
                table_id=r["id"],
                service_id=r["dcp_service_id"],
                account_id=r["account_id"],
                import_mode=ImportMode(r["import_mode"]),
                archived=r["archived"],
            )
            for r in rows
        ]

    async def archive_table(self, account_id: int, table_id: int) -> None:
        await self._db.execute(
            "UPDATE catalog.datasources SET archived = true, last_modified = now()"
            " WHERE account_id = $1 AND id = $2 AND NOT archived",
            account_id,
            table_id,
        )

    # Attributes

    async def list_attributes(
        self, account_id: int, table_id: int, page: Page, *, active_only: bool
    ) -> list[Attribute]:
        rows = await self._db.fetch(
            f"SELECT {_ATTRIBUTE_COLUMNS} FROM catalog.attributes"
            " WHERE account_id = $1 AND datasource_id = $2 AND id > $3 AND (NOT $4 OR NOT archived)"
            " ORDER BY id LIMIT $5",
            account_id,
            table_id,
            page.after_id,
            active_only,
            page.size + 1,
        )
        return [_attribute(r) for r in rows]

    async def get_attribute(self, account_id: int, attribute_id: int) -> Attribute | None:
        row = await self._db.fetchrow(
            f"SELECT {_ATTRIBUTE_COLUMNS} FROM catalog.attributes WHERE account_id = $1 AND id = $2",
            account_id,
            attribute_id,
        )
        return _attribute(row) if row else None

    async def create_attribute(
        self,
        account_id: int,
        table_id: int,
        *,
        name: str,
        datatype: Datatype,
        datetime_format: DatetimeFormat | None,
        description: str | None,
        is_value_public: bool,
    ) -> Attribute:
        row = await self._db.fetchrow(
            "INSERT INTO catalog.attributes (account_id, datasource_id, name, datatype, format, description,"
            f" is_value_public) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_ATTRIBUTE_COLUMNS}",
            account_id,
            table_id,
            name,
            datatype.value,
            datetime_format.value if datetime_format else None,
            description,
            is_value_public,
        )
        return _attribute(row)

    async def update_attribute(
        self, account_id: int, attribute_id: int, *, description: str | None, is_value_public: bool
    ) -> Attribute:
        row = await self._db.fetchrow(
            "UPDATE catalog.attributes SET description = $3, is_value_public = $4, last_modified = now()"
            f" WHERE account_id = $1 AND id = $2 RETURNING {_ATTRIBUTE_COLUMNS}",
            account_id,
            attribute_id,
            description,
            is_value_public,
        )
        return _attribute(row)

    async def set_attribute_archived(self, account_id: int, attribute_id: int, archived: bool) -> Attribute:
        row = await self._db.fetchrow(
            "UPDATE catalog.attributes SET archived = $3,"
            " last_modified = CASE WHEN archived = $3 THEN last_modified ELSE now() END"
            f" WHERE account_id = $1 AND id = $2 RETURNING {_ATTRIBUTE_COLUMNS}",
            account_id,
            attribute_id,
            archived,
        )
        return _attribute(row)

    # Audiences

    async def list_audiences(self, account_id: int, project_id: int, page: Page) -> list[Audience]:
        rows = await self._db.fetch(
            f"SELECT {_AUDIENCE_COLUMNS} FROM {_AUDIENCE_FROM}"
            " WHERE a.account_id = $1 AND a.project_id = $2 AND a.id > $3 ORDER BY a.id LIMIT $4",
            account_id,
            project_id,
            page.after_id,
            page.size + 1,
        )
        return [_audience(r) for r in rows]

    async def list_service_audiences(
        self, account_id: int, service_id: int, audience_ids: Sequence[int], page: Page
    ) -> list[Audience]:
        """Active audiences of every project linked to the service; only `audience_ids` when given."""
        rows = await self._db.fetch(
            f"SELECT {_AUDIENCE_COLUMNS} FROM {_AUDIENCE_FROM}"
            " WHERE a.account_id = $1 AND p.dcp_service_id = $2 AND NOT a.archived"
            " AND (cardinality($3::bigint[]) = 0 OR a.id = ANY($3::bigint[]))"
            " AND a.id > $4 ORDER BY a.id LIMIT $5",
            account_id,
            service_id,
            list(audience_ids),
            page.after_id,
            page.size + 1,
        )
        return [_audience(r) for r in rows]

    async def get_audience(self, account_id: int, audience_id: int, *, for_update: bool = False) -> Audience | None:
        lock = " FOR UPDATE OF a" if for_update else ""
        row = await self._db.fetchrow(
            f"SELECT {_AUDIENCE_COLUMNS} FROM {_AUDIENCE_FROM} WHERE a.account_id = $1 AND a.id = $2{lock}",
            account_id,
            audience_id,
        )
        return _audience(row) if row else None

    async def create_audience(
        self, account_id: int, project_id: int, *, name: str, description: str, conditions: Any, segmentation: bool
    ) -> int:
        audience_id: int = await self._db.fetchval(
            "INSERT INTO catalog.audiences (account_id, project_id, name, description, conditions, segmentation)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            account_id,
            project_id,
            name,
            description,
            conditions,
            segmentation,
        )
        return audience_id

    async def update_audience(
        self, account_id: int, audience_id: int, *, name: str, description: str, conditions: Any, segmentation: bool
    ) -> None:
        await self._db.execute(
            "UPDATE catalog.audiences SET name = $3, description = $4, conditions = $5, segmentation = $6,"
            " last_modified = now() WHERE account_id = $1 AND id = $2",
            account_id,
            audience_id,
            name,
            description,
            conditions,
            segmentation,
        )

    async def archive_audience(self, account_id: int, audience_id: int) -> None:
        await self._db.execute(
            "UPDATE catalog.audiences SET archived = true, last_modified = now()"
            " WHERE account_id = $1 AND id = $2 AND NOT archived",
            account_id,
            audience_id,
        )
