"""Registry values to and from their protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from google.protobuf import timestamp_pb2

from dcp.common.v1 import identity_pb2
from dcp.schema.v1 import resources_pb2, schema_service_pb2
from services._runtime.errors import InvalidArgument
from services._runtime.identity import Identity
from services.schema.client import DATATYPE_FROM_PROTO, DATATYPE_TO_PROTO, FORMAT_FROM_PROTO, FORMAT_TO_PROTO
from services.schema.model import (
    Attribute,
    Audience,
    DcpService,
    ImportMode,
    ImportTarget,
    LocatorType,
    Project,
    Table,
)

LOCATOR_TO_PROTO = {
    LocatorType.COOKIE: resources_pb2.LOCATOR_TYPE_COOKIE,
    LocatorType.QUERY_PARAMETER: resources_pb2.LOCATOR_TYPE_QUERY_PARAMETER,
    LocatorType.JS_VARIABLE: resources_pb2.LOCATOR_TYPE_JS_VARIABLE,
    LocatorType.UID: resources_pb2.LOCATOR_TYPE_UID,
}
LOCATOR_FROM_PROTO = {v: k for k, v in LOCATOR_TO_PROTO.items()}
IMPORT_MODE_TO_PROTO = {
    ImportMode.PARTIAL: resources_pb2.IMPORT_MODE_PARTIAL,
    ImportMode.ALL_OR_NOTHING: resources_pb2.IMPORT_MODE_ALL_OR_NOTHING,
}
IMPORT_MODE_FROM_PROTO = {v: k for k, v in IMPORT_MODE_TO_PROTO.items()}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def _word_from_proto(value: int, words: Mapping[Any, StrEnum], field: str) -> str | None:
    """The v1 spelling of a wire enum value, or None when unset (0), so the domain names the field."""
    if value == 0:
        return None
    word = words.get(value)
    if word is None:
        raise InvalidArgument.field(field, f"unknown value {value}")
    return str(word.value)


def locator_from_proto(value: int) -> str | None:
    return _word_from_proto(value, LOCATOR_FROM_PROTO, "keyfield_locator_type")


def datatype_from_proto(value: int) -> str | None:
    return _word_from_proto(value, DATATYPE_FROM_PROTO, "datatype")


def format_from_proto(value: int) -> str | None:
    return _word_from_proto(value, FORMAT_FROM_PROTO, "format")


def import_mode_from_proto(value: int) -> str | None:
    """None when unset: the default on create, no change on update."""
    return _word_from_proto(value, IMPORT_MODE_FROM_PROTO, "import_mode")


def project_to_proto(project: Project) -> resources_pb2.Project:
    message = resources_pb2.Project(
        id=project.id,
        account_id=project.account_id,
        name=project.name,
        created=timestamp(project.created),
        last_modified=timestamp(project.last_modified),
    )
    if project.dcp_service_id is not None:
        message.dcp_service_id = project.dcp_service_id
    return message


def service_to_proto(service: DcpService) -> resources_pb2.DcpService:
    return resources_pb2.DcpService(
        id=service.id,
        account_id=service.account_id,
        name=service.name,
        archived=service.archived,
        aws_access_key=service.aws_access_key,
        aws_secret_key=service.aws_secret_key,
        s3_path=service.s3_path,
        created=timestamp(service.created),
        last_modified=timestamp(service.last_modified),
        guards=resources_pb2.ServiceGuards(
            pii_guard=service.pii_guard,
            alias_blocked_customer_ids=list(service.alias_blocked_customer_ids),
            alias_max_users_per_customer_id=service.alias_max_users_per_customer_id,
        ),
    )


def attribute_to_proto(attribute: Attribute) -> resources_pb2.Attribute:
    message = resources_pb2.Attribute(
        id=attribute.id,
        dcp_datasource_id=attribute.datasource_id,
        name=attribute.name,
        datatype=DATATYPE_TO_PROTO[attribute.datatype],
        format=FORMAT_TO_PROTO[attribute.format] if attribute.format else resources_pb2.DATETIME_FORMAT_UNSPECIFIED,
        is_value_public=attribute.is_value_public,
        archived=attribute.archived,
        created=timestamp(attribute.created),
        last_modified=timestamp(attribute.last_modified),
    )
    if attribute.description is not None:
        message.description = attribute.description
    return message


def table_to_proto(table: Table) -> resources_pb2.Table:
    message = resources_pb2.Table(
        id=table.id,
        dcp_service_id=table.dcp_service_id,
        name=table.name,
        keyfield_locator_type=LOCATOR_TO_PROTO[table.keyfield_locator_type],
        is_optimizely=table.is_optimizely,
        archived=table.archived,
        s3_path=table.s3_path,
        aws_access_key=table.aws_access_key,
        aws_secret_key=table.aws_secret_key,
        attributes=[attribute_to_proto(a) for a in table.attributes],
        created=timestamp(table.created),
        last_modified=timestamp(table.last_modified),
        import_mode=IMPORT_MODE_TO_PROTO[table.import_mode],
    )
    if table.description is not None:
        message.description = table.description
    if table.keyfield_locator_name is not None:
        message.keyfield_locator_name = table.keyfield_locator_name
    return message


def import_target_to_proto(target: ImportTarget) -> schema_service_pb2.ImportTarget:
    return schema_service_pb2.ImportTarget(
        dcp_datasource_id=target.table_id,
        dcp_service_id=target.service_id,
        account_id=target.account_id,
        s3_path=target.s3_path,
        import_mode=IMPORT_MODE_TO_PROTO[target.import_mode],
        archived=target.archived,
    )


def identity_to_proto(identity: Identity) -> identity_pb2.CallerIdentity:
    return identity_pb2.CallerIdentity(
        account_id=identity.account_id,
        scopes=sorted(scope.value for scope in identity.scopes),
        credential_kind=identity.credential_kind.value,
        subject=identity.subject,
    )


def audience_to_proto(audience: Audience) -> resources_pb2.Audience:
    return resources_pb2.Audience(
        id=audience.id,
        project_id=audience.project_id,
        account_id=audience.account_id,
        name=audience.name,
        description=audience.description,
        conditions=orjson.dumps(audience.conditions).decode(),
        segmentation=audience.segmentation,
        archived=audience.archived,
        created=timestamp(audience.created),
        last_modified=timestamp(audience.last_modified),
        dcp_service_id=audience.dcp_service_id or 0,
    )
