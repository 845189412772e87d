"""Protobuf resources in their v1 REST JSON shape (snake_case, integer ids)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2

from dcp.schema.v1 import resources_pb2
from gateway.openapi import BOOLEAN, COUNT, ID, TEXT, TIMESTAMP, Component, array, described, nullable, record
from services.schema.client import DATATYPE_FROM_PROTO, FORMAT_FROM_PROTO

LOCATOR_NAMES = {
    resources_pb2.LOCATOR_TYPE_COOKIE: "cookie",
    resources_pb2.LOCATOR_TYPE_QUERY_PARAMETER: "query parameter",
    resources_pb2.LOCATOR_TYPE_JS_VARIABLE: "js_variable",
    resources_pb2.LOCATOR_TYPE_UID: "uid",
}
LOCATOR_VALUES = {v: k for k, v in LOCATOR_NAMES.items()}
DATATYPE_NAMES = {number: str(kind) for number, kind in DATATYPE_FROM_PROTO.items()}
DATATYPE_VALUES = {v: k for k, v in DATATYPE_NAMES.items()}
FORMAT_NAMES = {number: str(kind) for number, kind in FORMAT_FROM_PROTO.items()}
FORMAT_VALUES = {v: k for k, v in FORMAT_NAMES.items()}
IMPORT_MODE_NAMES = {
    resources_pb2.IMPORT_MODE_PARTIAL: "partial",
    resources_pb2.IMPORT_MODE_ALL_OR_NOTHING: "all_or_nothing",
}
IMPORT_MODE_VALUES = {v: k for k, v in IMPORT_MODE_NAMES.items()}


def import_mode_name(value: resources_pb2.ImportMode.ValueType) -> str | None:
    # A schema service older than the setting leaves it unset, and imports partially.
    if value == resources_pb2.IMPORT_MODE_UNSPECIFIED:
        return "partial"
    return IMPORT_MODE_NAMES.get(value)


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """v1 timestamps: UTC with microseconds, e.g. 2015-08-18T21:38:55.927670Z."""
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


PROJECT = Component(
    "Project",
    record(
        {
            "id": ID,
            "account_id": ID,
            "project_name": TEXT,
            "dcp_service_id": described(nullable(ID), "The DCP service the project is linked to, if any"),
            "created": TIMESTAMP,
            "last_modified": TIMESTAMP,
        }
    ),
)


def project(message: resources_pb2.Project) -> dict[str, Any]:
    return {
        "id": message.id,
        "account_id": message.account_id,
        "project_name": message.name,
        "dcp_service_id": message.dcp_service_id if message.HasField("dcp_service_id") else None,
        "created": timestamp(message.created),
        "last_modified": timestamp(message.last_modified),
    }


DCP_SERVICE = Component(
    "DcpService",
    record(
        {
            "id": ID,
            "account_id": ID,
            "archived": BOOLEAN,
            "aws_access_key": described(TEXT, "The access key of the S3 credentials that upload to this service"),
            "aws_secret_key": TEXT,
            "created": TIMESTAMP,
            "last_modified": TIMESTAMP,
            "name": TEXT,
            "s3_path": described(TEXT, "Where in the bucket this service's files go"),
            "pii_guard": described(BOOLEAN, "Whether values that look like personal data are refused"),
            "alias_blocked_customer_ids": array(
                TEXT, description="Placeholder customer ids that are never linked to a visitor"
            ),
            "alias_max_users_per_customer_id": described(COUNT, "How many visitors one customer id may be linked to"),
        }
    ),
)


def dcp_service(message: resources_pb2.DcpService) -> dict[str, Any]:
    return {
        "id": message.id,
        "account_id": message.account_id,
        "archived": message.archived,
        "aws_access_key": message.aws_access_key,
        "aws_secret_key": message.aws_secret_key,
        "created": timestamp(message.created),
        "last_modified": timestamp(message.last_modified),
        "name": message.name,
        "s3_path": message.s3_path,
        # Open DCP's guards; v1 clients ignore fields they do not know.
        "pii_guard": message.guards.pii_guard,
        "alias_blocked_customer_ids": list(message.guards.alias_blocked_customer_ids),
        "alias_max_users_per_customer_id": message.guards.alias_max_users_per_customer_id,
    }


_ATTRIBUTE_SUMMARY_FIELDS: dict[str, Any] = {
    "archived": BOOLEAN,
    "datatype": nullable({"type": "string", "enum": list(DATATYPE_VALUES)}),
    "description": nullable(TEXT),
    "format": described(
        nullable({"type": "string", "enum": list(FORMAT_VALUES)}), "How a datetime attribute's values are written"
    ),
    "id": ID,
    "is_value_public": BOOLEAN,
    "name": TEXT,
}
ATTRIBUTE_SUMMARY = Component("AttributeSummary", record(_ATTRIBUTE_SUMMARY_FIELDS))


def attribute_summary(message: resources_pb2.Attribute) -> dict[str, Any]:
    """The shortened form v1 nests in a table's `attributes`."""
    return {
        "archived": message.archived,
        "datatype": DATATYPE_NAMES.get(message.datatype),
        "description": message.description if message.HasField("description") else None,
        "format": FORMAT_NAMES.get(message.format),
        "id": message.id,
        "is_value_public": message.is_value_public,
        "name": message.name,
    }


ATTRIBUTE = Component(
    "Attribute",
    record({**_ATTRIBUTE_SUMMARY_FIELDS, "created": TIMESTAMP, "dcp_datasource_id": ID, "last_modified": TIMESTAMP}),
)


def attribute(message: resources_pb2.Attribute) -> dict[str, Any]:
    return {
        **attribute_summary(message),
        "created": timestamp(message.created),
        "dcp_datasource_id": message.dcp_datasource_id,
        "last_modified": timestamp(message.last_modified),
    }


TABLE = Component(
    "Table",
    record(
        {
            "id": ID,
            "archived": BOOLEAN,
            "attributes": array(ATTRIBUTE_SUMMARY, description="The table's attributes, archived ones included"),
            "aws_access_key": TEXT,
            "aws_secret_key": TEXT,
            "created": TIMESTAMP,
            "dcp_service_id": ID,
            "description": nullable(TEXT),
            "is_optimizely": described(BOOLEAN, "The service's own table of Optimizely visitor ids"),
            "keyfield_locator_name": nullable(TEXT),
            "keyfield_locator_type": nullable({"type": "string", "enum": list(LOCATOR_VALUES)}),
            "last_modified": TIMESTAMP,
            "name": TEXT,
            "s3_path": TEXT,
            "import_mode": described(
                nullable({"type": "string", "enum": list(IMPORT_MODE_VALUES)}),
                "partial stores a file's valid rows; all_or_nothing stores none if any row is refused",
            ),
        }
    ),
)


def table(message: resources_pb2.Table) -> dict[str, Any]:
    return {
        "id": message.id,
        "archived": message.archived,
        "attributes": [attribute_summary(a) for a in message.attributes],
        "aws_access_key": message.aws_access_key,
        "aws_secret_key": message.aws_secret_key,
        "created": timestamp(message.created),
        "dcp_service_id": message.dcp_service_id,
        "description": message.description if message.HasField("description") else None,
        "is_optimizely": message.is_optimizely,
        "keyfield_locator_name": message.keyfield_locator_name if message.HasField("keyfield_locator_name") else None,
        "keyfield_locator_type": LOCATOR_NAMES.get(message.keyfield_locator_type),
        "last_modified": timestamp(message.last_modified),
        "name": message.name,
        "s3_path": message.s3_path,
        # Open DCP's setting; v1 clients ignore fields they do not know.
        "import_mode": import_mode_name(message.import_mode),
    }
