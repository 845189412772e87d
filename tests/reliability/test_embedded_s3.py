"""The embedded S3 server of `dcp up`: signed requests only, each DCP service's key on its own prefix."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from services._runtime.embedded_s3 import EmbeddedS3, EmbeddedS3Error
from services._runtime.settings import ImportSettings, S3Settings, Settings
from services.schema.model import DcpService, TokenKind
from services.wiring.keys import identity_signer
from services.wiring.parts import schema_parts
from services.wiring.stores import Uploads, uploads_for_up
from services.wiring.suite import start_suite

BUCKET = "optimizely-import"


@pytest.fixture
def up_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test platform's settings, without a store: `dcp up` then starts its own."""
    return settings.with_overrides(
        data_dir=tmp_path / "dcp",
        s3=S3Settings(embedded_port=0, bucket=BUCKET),
        imports=ImportSettings(poll_seconds=0.2),
    )


@contextlib.asynccontextmanager
async def _uploads(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[tuple[Uploads, Any]]:
    """The upload store as `dcp up` starts it, and the catalog issuing keys for it."""
    async with uploads_for_up(settings, pool) as uploads:
        yield uploads, schema_parts(settings, pool, uploads.keys)


def _s3(endpoint: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return str(refused.value.response["Error"]["Code"])


async def _service(parts: Any, name: str) -> DcpService:
    account = await parts.credentials.create_account(name)
    service: DcpService = await parts.catalog.create_service(account.id, name)
    return service


async def test_a_service_key_reaches_its_own_prefix_and_exports_only(up_settings: Settings, pool: asyncpg.Pool) -> None:
    async with _uploads(up_settings, pool) as (uploads, parts):
        assert uploads.embedded is not None
        endpoint = uploads.embedded.endpoint_url
        first = await _service(parts, "first")
        second = await _service(parts, "second")
        await uploads.store.put(f"exports/{first.id}/profiles-export-1.csv", b"customerId\nc1\n")
        await uploads.store.put(f"exports/{second.id}/profiles-export-2.csv", b"customerId\nc2\n")
        await uploads.store.put(f"dcp/{second.id}/9/theirs.csv", b"customerId\nc2\n")

        def checks() -> None:
            own = _s3(endpoint, first.aws_access_key, first.aws_secret_key)
            mine = f"dcp/{first.id}/7/customers.csv"
            own.put_object(Bucket=BUCKET, Key=mine, Body=b"customerId\nc1\n")
            assert own.get_object(Bucket=BUCKET, Key=mine)["Body"].read() == b"customerId\nc1\n"
            listed = own.list_objects_v2(Bucket=BUCKET, Prefix=f"dcp/{first.id}/")
            assert [item["Key"] for item in listed["Contents"]] == [mine]
            export = own.get_object(Bucket=BUCKET, Key=f"exports/{first.id}/profiles-export-1.csv")
            assert export["Body"].read() == b"customerId\nc1\n"
            # Multipart, as the AWS CLI and SDKs send large files.
            own.upload_fileobj(
                _Bytes(12 * 1024 * 1024), BUCKET, f"dcp/{first.id}/7/big.csv", Config=_multipart_config()
            )
            assert own.head_object(Bucket=BUCKET, Key=f"dcp/{first.id}/7/big.csv")["ContentLength"] == 12 * 1024**2

            theirs = f"dcp/{second.id}/9/theirs.csv"
            assert _refused(lambda: own.put_object(Bucket=BUCKET, Key=f"dcp/{second.id}/9/x.csv", Body=b"x")) == (
                "AccessDenied"
            )
            assert _refused(lambda: own.get_object(Bucket=BUCKET, Key=theirs)) == "AccessDenied"
            assert _refused(lambda: own.list_objects_v2(Bucket=BUCKET, Prefix="dcp/")) == "AccessDenied"
            assert _refused(lambda: own.list_objects_v2(Bucket=BUCKET, Prefix=f"dcp/{second.id}/")) == "AccessDenied"
            assert _refused(lambda: own.list_objects_v2(Bucket=BUCKET)) == "AccessDenied"
            assert _refused(lambda: own.list_object_versions(Bucket=BUCKET, Prefix=f"dcp/{first.id}/")) == (
                "AccessDenied"
            )
            assert _refused(
                lambda: own.get_object(Bucket=BUCKET, Key=f"exports/{second.id}/profiles-export-2.csv")
            ) == ("AccessDenied")
            assert _refused(lambda: own.put_object(Bucket=BUCKET, Key=f"exports/{first.id}/x.csv", Body=b"x")) == (
                "AccessDenied"
            )
            assert _refused(lambda: own.delete_object(Bucket=BUCKET, Key=mine)) == "AccessDenied"
            stolen = f"dcp/{first.id}/7/stolen.csv"
            assert _refused(lambda: own.copy_object(Bucket=BUCKET, Key=stolen, CopySource=f"{BUCKET}/{theirs}")) == (
                "AccessDenied"
            )

            made_up = _s3(endpoint, "AKDCMADEUPMADEUP0000", "x" * 40)
            assert _refused(lambda: made_up.put_object(Bucket=BUCKET, Key=mine, Body=b"x")) == "InvalidAccessKeyId"
            assert _refused(lambda: made_up.get_object(Bucket=BUCKET, Key=mine)) == "InvalidAccessKeyId"
            assert _refused(lambda: made_up.list_objects_v2(Bucket=BUCKET, Prefix=f"dcp/{first.id}/")) == (
                "InvalidAccessKeyId"
            )
            forged = _s3(endpoint, first.aws_access_key, second.aws_secret_key)
            assert _refused(lambda: forged.get_object(Bucket=BUCKET, Key=mine)) == "SignatureDoesNotMatch"
            assert _refused(lambda: forged.put_object(Bucket=BUCKET, Key=mine, Body=b"x")) == "SignatureDoesNotMatch"
            unsigned = httpx.get(f"{endpoint}/{BUCKET}/{mine}")
            assert unsigned.status_code == 403
            assert "<Code>AccessDenied</Code>" in unsigned.text

            # Nothing the refused requests tried reached the bucket.
            platform_s3 = _s3(endpoint, uploads.settings.access_key_id or "", uploads.settings.secret_access_key or "")
            keys = {item["Key"] for item in platform_s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
            assert f"dcp/{second.id}/9/x.csv" not in keys
            assert stolen not in keys
            assert platform_s3.get_object(Bucket=BUCKET, Key=mine)["Body"].read() == b"customerId\nc1\n"

        await asyncio.to_thread(checks)


async def test_a_body_other_than_the_signed_one_is_refused(up_settings: Settings, pool: asyncpg.Pool) -> None:
    async with _uploads(up_settings, pool) as (uploads, parts):
        assert uploads.embedded is not None
        service = await _service(parts, "first")
        client = _s3(uploads.embedded.endpoint_url, service.aws_access_key, service.aws_secret_key)
        key = f"dcp/{service.id}/7/customers.csv"

        def swap_body(request: Any, **_: Any) -> None:
            request.body = b"customerId\nforged\n"  # after signing, as a tampering proxy would

        client.meta.events.register_last("before-send.s3.PutObject", swap_body)

        def put() -> str:
            with pytest.raises(ClientError) as refused:
                client.put_object(Bucket=BUCKET, Key=key, Body=b"customerId\nc1\n")
            return str(refused.value.response["Error"]["Code"])

        assert await asyncio.to_thread(put) == "XAmzContentSHA256Mismatch"
        assert await uploads.store.head(key) is None


async def test_a_presigned_put_from_the_platform_uploads_a_file_that_is_imported(
    up_settings: Settings, pool: asyncpg.Pool
) -> None:
    signer = identity_signer(up_settings, allow_generated=False)
    async with uploads_for_up(up_settings, pool) as uploads:
        suite = await start_suite(up_settings, pool, signer, store=uploads.store, keys=uploads.keys)
        try:
            account = await suite.schema.credentials.create_account("shop")
            token = (await suite.schema.credentials.issue_token(account.id, TokenKind.CLASSIC)).secret
            service = await suite.schema.catalog.create_service(account.id, "shop")
            table = await suite.schema.catalog.create_table(
                account.id, service.id, name="crm", description=None, locator_type="uid", locator_name=None
            )
            async with httpx.AsyncClient(base_url=suite.http_url, headers={"Token": token}, timeout=30) as http:
                answer = await http.post(
                    f"/experiment/v1/dcp_datasources/{table.id}/uploads", json={"file_name": "customers.csv"}
                )
                assert answer.status_code == 201, answer.text
                put = await http.put(answer.json()["url"], content=b"customerId\nc1\nc2\n")
                assert put.status_code == 200, put.text
                deadline = time.monotonic() + 30
                while True:
                    history = (await http.get(f"/experiment/v1/dcp_datasources/{table.id}/uploads")).json()
                    if history and history[0]["status"] not in ("pending", "processing"):
                        break
                    assert time.monotonic() < deadline, history
                    await asyncio.sleep(0.1)
                assert (history[0]["status"], history[0]["rows_ok"]) == ("processed", 2)
        finally:
            await suite.stop(1)


async def test_a_browser_page_puts_files_through_presigned_urls(up_settings: Settings, pool: asyncpg.Pool) -> None:
    signer = identity_signer(up_settings, allow_generated=False)
    async with uploads_for_up(up_settings, pool) as uploads:
        suite = await start_suite(up_settings, pool, signer, store=uploads.store, keys=uploads.keys)
        try:
            account = await suite.schema.credentials.create_account("shop")
            token = (await suite.schema.credentials.issue_token(account.id, TokenKind.CLASSIC)).secret
            service = await suite.schema.catalog.create_service(account.id, "shop")
            table = await suite.schema.catalog.create_table(
                account.id, service.id, name="crm", description=None, locator_type="uid", locator_name=None
            )
            # What a page served by the gateway sends, as a browser's fetch() would.
            origin = {"Origin": suite.http_url}
            async with httpx.AsyncClient(base_url=suite.http_url, headers={"Token": token}, timeout=30) as http:

                async def upload_url(name: str) -> str:
                    answer = await http.post(
                        f"/experiment/v1/dcp_datasources/{table.id}/uploads", json={"file_name": name}
                    )
                    assert answer.status_code == 201, answer.text
                    url: str = answer.json()["url"]
                    return url

                typed, untyped = await upload_url("typed.csv"), await upload_url("untyped.csv")
                # Only the host is signed, so the headers a browser adds do not break the signature.
                assert parse_qs(urlsplit(typed).query)["X-Amz-SignedHeaders"] == ["host"]
            async with httpx.AsyncClient(timeout=30) as browser:
                preflight = await browser.options(
                    typed,
                    headers={
                        **origin,
                        "Access-Control-Request-Method": "PUT",
                        "Access-Control-Request-Headers": "content-type",
                    },
                )
                assert preflight.status_code == 200, preflight.text
                assert preflight.headers["access-control-allow-origin"] == "*"
                assert "PUT" in preflight.headers["access-control-allow-methods"].split(", ")
                assert preflight.headers["access-control-allow-headers"] == "content-type"
                assert int(preflight.headers["access-control-max-age"]) > 0

                put = await browser.put(
                    typed, content=b"customerId\nc1\n", headers={**origin, "Content-Type": "text/csv"}
                )
                assert put.status_code == 200, put.text
                assert put.headers["access-control-allow-origin"] == "*"
                assert put.headers["access-control-expose-headers"] == "ETag"
                assert put.headers["etag"]
                plain = await browser.put(untyped, content=b"customerId\nc2\n", headers=origin)
                assert plain.status_code == 200, plain.text

                # The preflight opens no door: a request still needs its own signature.
                refused = await browser.put(typed.split("?")[0], content=b"customerId\nx\n", headers=origin)
                assert refused.status_code == 403
                assert "<Code>AccessDenied</Code>" in refused.text
                assert refused.headers["access-control-allow-origin"] == "*"  # so the page can read why
                elsewhere = typed.replace("typed.csv", "forged.csv")
                forged = await browser.put(elsewhere, content=b"customerId\nx\n", headers=origin)
                assert forged.status_code == 403
                assert "<Code>SignatureDoesNotMatch</Code>" in forged.text
                deleting = await browser.options(typed, headers={**origin, "Access-Control-Request-Method": "DELETE"})
                assert deleting.status_code == 403
                assert "access-control-allow-origin" not in deleting.headers
            assert await uploads.store.head(f"{table.s3_path}/forged.csv") is None

            async with httpx.AsyncClient(base_url=suite.http_url, headers={"Token": token}, timeout=30) as http:
                deadline = time.monotonic() + 30
                while True:
                    history = (await http.get(f"/experiment/v1/dcp_datasources/{table.id}/uploads")).json()
                    if len(history) == 2 and all(u["status"] not in ("pending", "processing") for u in history):
                        break
                    assert time.monotonic() < deadline, history
                    await asyncio.sleep(0.1)
            assert sorted((u["file_name"], u["status"], u["rows_ok"]) for u in history) == [
                ("typed.csv", "processed", 1),
                ("untyped.csv", "processed", 1),
            ]
        finally:
            await suite.stop(1)


async def test_archiving_revokes_and_a_restart_keeps_the_active_keys(up_settings: Settings, pool: asyncpg.Pool) -> None:
    async with _uploads(up_settings, pool) as (uploads, parts):
        assert uploads.embedded is not None
        kept = await _service(parts, "kept")
        archived = await _service(parts, "archived")
        archived_client = _s3(uploads.embedded.endpoint_url, archived.aws_access_key, archived.aws_secret_key)
        key = f"dcp/{archived.id}/1/a.csv"
        await asyncio.to_thread(archived_client.put_object, Bucket=BUCKET, Key=key, Body=b"x")
        await parts.catalog.archive_service(archived.account_id, archived.id)
        assert await asyncio.to_thread(
            _refused, lambda: archived_client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        ) == ("InvalidAccessKeyId")

    # A new server, which knows no key until the platform tells it the active ones.
    async with _uploads(up_settings, pool) as (uploads, parts):
        assert uploads.embedded is not None
        endpoint = uploads.embedded.endpoint_url
        kept_client = _s3(endpoint, kept.aws_access_key, kept.aws_secret_key)
        await asyncio.to_thread(kept_client.put_object, Bucket=BUCKET, Key=f"dcp/{kept.id}/1/b.csv", Body=b"x")
        archived_client = _s3(endpoint, archived.aws_access_key, archived.aws_secret_key)
        assert await asyncio.to_thread(
            _refused, lambda: archived_client.list_objects_v2(Bucket=BUCKET, Prefix=f"dcp/{archived.id}/")
        ) == ("InvalidAccessKeyId")


def test_the_server_dies_with_its_parent_even_when_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            "from services._runtime.embedded_s3 import EmbeddedS3\n"
            "server = EmbeddedS3(bucket='bkt', platform_key=('k', 's'), data_dir=pathlib.Path(sys.argv[1]))\n"
            "server.start()\n"
            "print(server.pid, flush=True)\n"
            "time.sleep(600)\n",
            str(tmp_path / "s3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the embedded S3 server outlived the process that started it"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_an_object_listed_while_it_is_being_put_is_listed_with_its_one_etag(tmp_path: Path) -> None:
    # The importer tells files apart by version and ETag: a second ETag for one version made
    # it import the same file twice, the second time failing as "removed from the bucket".
    server = EmbeddedS3(bucket=BUCKET, platform_key=("k", "s"), data_dir=tmp_path / "s3")
    s3 = _s3(server.start(), "k", "s")
    try:
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        body = b"customerId,ltv\n" + b"".join(b"c%d,%d\n" % (n, n) for n in range(100_000))
        expected = hashlib.md5(body).hexdigest()  # the ETag S3 gives a single-part object
        listed: set[tuple[str, str, str]] = set()
        finished = threading.Event()

        def list_until_finished() -> None:
            while not finished.is_set():
                for version in s3.list_object_versions(Bucket=BUCKET, Prefix="dcp/").get("Versions", ()):
                    listed.add((version["Key"], version["VersionId"], version["ETag"].strip('"')))

        lister = threading.Thread(target=list_until_finished)
        lister.start()
        try:
            answered = [
                s3.put_object(Bucket=BUCKET, Key=f"dcp/1/2/file-{n}.csv", Body=body)["ETag"].strip('"')
                for n in range(40)
            ]
        finally:
            finished.set()
            lister.join()
        assert set(answered) == {expected}
        assert {etag for _, _, etag in listed} == {expected}
        assert len(listed) == len({(key, version) for key, version, _ in listed})
    finally:
        server.stop()


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    first = EmbeddedS3(bucket=BUCKET, platform_key=("k", "s"), data_dir=tmp_path / "one")
    first.start()
    try:
        port = int(first.endpoint_url.rsplit(":", 1)[1])
        second = EmbeddedS3(bucket=BUCKET, platform_key=("k", "s"), data_dir=tmp_path / "two", port=port)
        with pytest.raises(EmbeddedS3Error, match=rf"could not start: cannot listen on 127\.0\.0\.1:{port}"):
            second.start()
        # A second server on the first one's data dir would throw its objects' bodies away.
        third = EmbeddedS3(bucket=BUCKET, platform_key=("k", "s"), data_dir=tmp_path / "one")
        with pytest.raises(EmbeddedS3Error, match="could not start: another embedded S3 server is using"):
            third.start()
    finally:
        first.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie awaiting its reaper has stopped all the same.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


class _Bytes:
    """A readable stream of `size` bytes."""

    def __init__(self, size: int) -> None:
        self._left = size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        self._left -= size
        return b"x" * size


def _multipart_config() -> Any:
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415

    return TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2, use_threads=False)
