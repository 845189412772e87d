"""The access key pair each DCP service hands its account for uploading files.

Where the store has an IAM API (AWS, and S3 servers that copy it), each
service gets an IAM user whose only right is its own `dcp/{service id}/`
prefix of the upload bucket (and reading its own exports), so one customer's
key can never read or write another's files. The embedded store of `dcp up`
enforces the same rights itself. Elsewhere the pair is generated here, and the
store must be told of it by its operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import string
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from services._runtime.embedded_s3 import EmbeddedS3, EmbeddedS3Error
from services._runtime.errors import Unavailable
from services._runtime.s3 import client_config
from services._runtime.settings import S3Settings

log = logging.getLogger(__name__)

_KEY_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "/+"
USER_PATH = "/open-dcp/"
POLICY_NAME = "dcp-upload-prefix"


def new_access_key_pair() -> tuple[str, str]:
    """An S3-style key pair: 20-character id, 40-character secret (>= 200 random bits)."""
    access_key = "AKDC" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    secret_key = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    return access_key, secret_key


class KeyIssuer(Protocol):
    async def issue(self, service_id: int) -> tuple[str, str]:
        """A key pair for the service's upload prefix."""
        ...

    async def revoke(self, service_id: int, access_key: str) -> None:
        """The service is archived: its key stops working."""
        ...

    async def restore(self, keys: Iterable[tuple[int, str, str]]) -> None:
        """At start: these (service id, access key, secret key) of the active services must work."""
        ...


class LocalKeys:
    """Key pairs generated here, for stores without an IAM API."""

    async def issue(self, service_id: int) -> tuple[str, str]:
        return new_access_key_pair()

    async def revoke(self, service_id: int, access_key: str) -> None:
        return None

    async def restore(self, keys: Iterable[tuple[int, str, str]]) -> None:
        return None


class EmbeddedKeys:
    """Key pairs generated here and registered with the embedded S3 server of `dcp up`."""

    def __init__(self, server: EmbeddedS3) -> None:
        self._server = server

    async def issue(self, service_id: int) -> tuple[str, str]:
        pair = new_access_key_pair()
        await self._register([(service_id, *pair)])
        return pair

    async def revoke(self, service_id: int, access_key: str) -> None:
        try:
            await asyncio.to_thread(self._server.revoke, access_key)
        except EmbeddedS3Error as error:
            log.error("could not revoke the upload key of DCP service %d: %s", service_id, error)
            raise Unavailable("the embedded S3 server did not revoke the upload key; retry later") from error

    async def restore(self, keys: Iterable[tuple[int, str, str]]) -> None:
        """Makes these (service id, access key, secret key) work again on a freshly started server."""
        await self._register(list(keys))

    async def _register(self, keys: list[tuple[int, str, str]]) -> None:
        try:
            await asyncio.to_thread(self._server.grant, keys)
        except EmbeddedS3Error as error:
            log.error("could not register upload keys with the embedded S3 server: %s", error)
            raise Unavailable("the embedded S3 server did not take the upload key; retry later") from error


def prefix_policy(bucket: str, service_id: int) -> dict[str, Any]:
    """Uploading, reading back and listing under dcp/{service id}/, reading exports/{service id}/, nothing else."""
    prefix = f"dcp/{service_id}/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ObjectsUnderTheServicePrefix",
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
            },
            {
                "Sid": "TheServiceExports",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/exports/{service_id}/*",
            },
            {
                "Sid": "ListingTheServicePrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            },
        ],
    }


class IamKeys:
    """One IAM user per DCP service, limited to the service's prefix."""

    def __init__(self, iam: Any, bucket: str) -> None:
        self._iam = iam
        self._bucket = bucket

    @staticmethod
    def user_name(service_id: int) -> str:
        return f"dcp-service-{service_id}"

    async def issue(self, service_id: int) -> tuple[str, str]:
        user = self.user_name(service_id)
        try:
            with contextlib.suppress(self._iam.exceptions.EntityAlreadyExistsException):
                await self._iam.create_user(UserName=user, Path=USER_PATH)
            await self._iam.put_user_policy(
                UserName=user,
                PolicyName=POLICY_NAME,
                PolicyDocument=json.dumps(prefix_policy(self._bucket, service_id)),
            )
            created = await self._iam.create_access_key(UserName=user)
        except (ClientError, BotoCoreError) as error:
            log.error("could not provision an upload key for DCP service %d: %s", service_id, error)
            raise Unavailable("the store's IAM API refused to create an upload key; retry later") from error
        key = created["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    async def revoke(self, service_id: int, access_key: str) -> None:
        try:
            await self._iam.delete_access_key(UserName=self.user_name(service_id), AccessKeyId=access_key)
        except (ClientError, BotoCoreError) as error:
            # The service is archived either way; a key left behind still only reaches its own prefix.
            log.warning("could not delete the upload key of DCP service %d: %s", service_id, error)

    async def restore(self, keys: Iterable[tuple[int, str, str]]) -> None:
        return None  # IAM keeps its users and keys


@contextlib.asynccontextmanager
async def key_issuer(settings: S3Settings) -> AsyncIterator[KeyIssuer]:
    """IAM-backed keys when `provision_keys` is on, else locally generated ones."""
    if not settings.provision_keys:
        yield LocalKeys()
        return
    arguments = client_config(settings)
    arguments.pop("config")
    async with get_session().create_client("iam", **arguments) as iam:
        yield IamKeys(iam, settings.bucket)
