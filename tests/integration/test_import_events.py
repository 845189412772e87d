"""S3 event notifications start imports without waiting for a listing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services._runtime.s3 import ObjectStore, open_queue, open_store
from services._runtime.settings import Settings
from services.imports.intake import event_objects
from services.wiring.keys import identity_signer
from services.wiring.parts import import_parts, remote_merger
from tests.conftest import MakeAccount, RunningPlatform
from tests.integration.test_imports import Table, make_table


@dataclasses.dataclass
class Evented:
    store: ObjectStore
    queue: Any
    queue_url: str


@pytest.fixture
async def evented(
    running: RunningPlatform, settings: Settings, pool: asyncpg.Pool, store: ObjectStore
) -> AsyncIterator[Evented]:
    """A bucket of its own that notifies a queue, and an importer that lists it only once an hour."""
    s3 = dataclasses.replace(settings.s3, bucket=f"events-{secrets.token_hex(4)}")
    async with open_store(s3) as bucket, open_queue(s3, "configured below") as queue:
        await bucket.ensure_bucket(s3.region)
        await bucket.keep_versions()
        queue_url = (await queue.create_queue(QueueName=f"uploads-{secrets.token_hex(4)}"))["QueueUrl"]
        arn = (await queue.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        await bucket._client.put_bucket_notification_configuration(
            Bucket=s3.bucket,
            NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
        )
        hourly = dataclasses.replace(
            settings, s3=s3, imports=dataclasses.replace(settings.imports, poll_seconds=3600, queue_url=queue_url)
        )
        parts = import_parts(
            hourly,
            pool,
            identity_signer(settings, allow_generated=False),
            bucket,
            schema_channel=running.channel,
            merger=remote_merger(running.channel, identity_signer(settings, allow_generated=False)),
            queue=queue,
        )
        worker = asyncio.create_task(parts.worker.run())
        try:
            yield Evented(bucket, queue, queue_url)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def test_an_event_starts_the_import_and_repeats_are_one_upload(
    http: httpx.AsyncClient, store: ObjectStore, make_account: MakeAccount, evented: Evented, pool: asyncpg.Pool
) -> None:
    table: Table = await make_table(http, evented.store, await make_account())
    # The first listing happened when the importer started; only the event can bring this file in.
    await asyncio.sleep(0.5)
    await table.put("with space.csv", "customerId,ltv\ne1,5\n")
    [upload] = await table.finished(within=20)
    assert upload["status"] == "processed", upload["error"]
    assert upload["file_name"] == "with space.csv"
    assert await table.profile("e1") == {"ltv": 5}

    # The same notification delivered again, as queues do, and a test event: still one upload.
    record = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"object": {"key": f"{table.s3_path}/with+space.csv"}},
            }
        ]
    }
    for body in (record, {"Event": "s3:TestEvent"}, record):
        await evented.queue.send_message(QueueUrl=evented.queue_url, MessageBody=json.dumps(body))
    await asyncio.sleep(1.5)
    assert len(await table.uploads()) == 1
    assert await pool.fetchval("SELECT count(*) FROM imports.uploads WHERE datasource_id = $1", table.id) == 1


def test_event_bodies_are_read_as_s3_sends_them() -> None:
    created = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "dcp/1/2/a+b%2Bc.csv", "versionId": "v1"}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "dcp/1/2/gone.csv"}}},
        ]
    }
    assert event_objects(json.dumps(created)) == ([("dcp/1/2/a b+c.csv", "v1")], True)
    through_sns = {"Type": "Notification", "Message": json.dumps(created)}
    assert event_objects(json.dumps(through_sns)) == ([("dcp/1/2/a b+c.csv", "v1")], True)
    assert event_objects(json.dumps({"Event": "s3:TestEvent"})) == ([], True)
    assert event_objects("not json") == ([], False)
