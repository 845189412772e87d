"""Each DCP service's upload key reaches its own prefix only, on a store that enforces IAM policies."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from services._runtime.s3 import open_store
from services._runtime.settings import S3Settings, Settings
from services.schema.keys import key_issuer
from services.wiring.parts import schema_parts

BUCKET = "optimizely-import"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def strict_store() -> Iterator[tuple[str, str, str]]:
    """An S3 server that checks every request against IAM, with an administrator key."""
    port = _free_port()
    # The first three calls, unchecked, create the administrator; every later one is checked.
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "3", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.1)
        iam = boto3.client(
            "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="platform")
        iam.put_user_policy(
            UserName="platform",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="platform")["AccessKey"]
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def _s3(url: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


def _denied(call: Any) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return str(refused.value.response["Error"]["Code"])


async def test_a_service_key_reaches_only_its_own_prefix_and_dies_with_the_service(
    strict_store: tuple[str, str, str], settings: Settings, pool: asyncpg.Pool
) -> None:
    url, admin_key, admin_secret = strict_store
    s3_settings = S3Settings(
        endpoint_url=url, access_key_id=admin_key, secret_access_key=admin_secret, bucket=BUCKET, provision_keys=True
    )
    async with open_store(s3_settings) as store, key_issuer(s3_settings) as keys:
        await store.ensure_bucket(s3_settings.region)
        parts = schema_parts(settings, pool, keys)
        first_account = await parts.credentials.create_account("first")
        second_account = await parts.credentials.create_account("second")
        first = await parts.catalog.create_service(first_account.id, "first")
        second = await parts.catalog.create_service(second_account.id, "second")
        assert first.aws_access_key != second.aws_access_key
        assert not first.aws_access_key.startswith("AKDC")  # issued by the store, not generated here

        own = _s3(url, first.aws_access_key, first.aws_secret_key)
        own.put_object(Bucket=BUCKET, Key=f"dcp/{first.id}/7/customers.csv", Body=b"customerId\nc1\n")
        assert own.get_object(Bucket=BUCKET, Key=f"dcp/{first.id}/7/customers.csv")["Body"].read() == (
            b"customerId\nc1\n"
        )
        assert _denied(lambda: own.put_object(Bucket=BUCKET, Key=f"dcp/{second.id}/8/x.csv", Body=b"x")) == (
            "AccessDenied"
        )
        assert _denied(lambda: own.put_object(Bucket=BUCKET, Key="archive/x.csv", Body=b"x")) == "AccessDenied"
        assert _denied(lambda: own.delete_object(Bucket=BUCKET, Key=f"dcp/{first.id}/7/customers.csv")) == (
            "AccessDenied"
        )

        await parts.catalog.archive_service(first_account.id, first.id)
        assert _denied(lambda: own.put_object(Bucket=BUCKET, Key=f"dcp/{first.id}/7/late.csv", Body=b"x")) in (
            "InvalidAccessKeyId",
            "AccessDenied",
        )
