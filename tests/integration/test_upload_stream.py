"""Streaming uploads to the store: multipart for large streams, one PUT for small ones, nothing left on failure."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from services._runtime.s3 import MIN_PART_BYTES, ObjectStore, StoredObject

MIB = 1024 * 1024


async def _stream(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(0)


def _pieces(total: int, size: int) -> list[bytes]:
    # Random bytes, so a part sent twice or out of order cannot read back the same.
    data = os.urandom(total)
    return [data[start : start + size] for start in range(0, total, size)]


async def _read(store: ObjectStore, key: str) -> bytes:
    stored = await store.head(key)
    assert stored is not None, f"{key} was not stored"
    return b"".join([chunk async for chunk in store.chunks(stored)])


async def _part_sizes(store: ObjectStore, key: str) -> list[int]:
    sizes: list[int] = []
    number = 1
    while True:
        try:
            answer: dict[str, Any] = await store._client.head_object(Bucket=store.bucket, Key=key, PartNumber=number)
        except ClientError:
            return sizes
        sizes.append(int(answer["ContentLength"]))
        parts = int(answer.get("PartsCount", 1))
        if number >= parts:
            return sizes
        number += 1


async def _pending_uploads(store: ObjectStore) -> list[Any]:
    answer = await store._client.list_multipart_uploads(Bucket=store.bucket)
    uploads: list[Any] = answer.get("Uploads", [])
    return uploads


async def _objects(store: ObjectStore, prefix: str) -> list[StoredObject]:
    return [found async for found in store.list(prefix)]


async def test_a_large_stream_is_stored_in_equal_parts_and_reads_back_byte_for_byte(store: ObjectStore) -> None:
    total = 12 * MIB + 12345
    pieces = _pieces(total, 300_000)  # pieces that do not divide a part evenly

    written = await store.upload_stream(
        "exports/large.csv", _stream(pieces), content_type="text/csv", part_bytes=MIN_PART_BYTES
    )

    assert written == total
    data = await _read(store, "exports/large.csv")
    assert hashlib.sha256(data).digest() == hashlib.sha256(b"".join(pieces)).digest()
    assert await _part_sizes(store, "exports/large.csv") == [5 * MIB, 5 * MIB, 2 * MIB + 12345]
    answer = await store._client.head_object(Bucket=store.bucket, Key="exports/large.csv")
    assert answer["ContentType"] == "text/csv"
    assert await _pending_uploads(store) == []


async def test_one_chunk_larger_than_several_parts_is_cut_into_parts(store: ObjectStore) -> None:
    pieces = [b"h" * 10, *_pieces(11 * MIB, 11 * MIB), b"t" * 10]

    written = await store.upload_stream(
        "exports/big-chunk.jsonl", _stream(pieces), content_type="application/x-ndjson", part_bytes=MIN_PART_BYTES
    )

    assert written == 11 * MIB + 20
    assert await _read(store, "exports/big-chunk.jsonl") == b"".join(pieces)
    assert await _part_sizes(store, "exports/big-chunk.jsonl") == [5 * MIB, 5 * MIB, MIB + 20]


async def test_a_small_stream_is_one_plain_object(store: ObjectStore) -> None:
    pieces = [b"customerId,name\n", b"", b"c1,Ann\n", b"c2,Bob\n"]

    written = await store.upload_stream("exports/small.csv", _stream(pieces), content_type="text/csv")

    assert written == len(b"".join(pieces))
    assert await _read(store, "exports/small.csv") == b"customerId,name\nc1,Ann\nc2,Bob\n"
    answer = await store._client.head_object(Bucket=store.bucket, Key="exports/small.csv")
    assert "PartsCount" not in answer  # a PUT, not a one-part multipart upload
    assert answer["ContentType"] == "text/csv"


async def test_a_stream_of_exactly_one_part_is_one_plain_object(store: ObjectStore) -> None:
    pieces = _pieces(MIN_PART_BYTES, MIB)

    await store.upload_stream("exports/exact.csv", _stream(pieces), content_type="text/csv", part_bytes=MIN_PART_BYTES)

    assert await _read(store, "exports/exact.csv") == b"".join(pieces)
    assert await _pending_uploads(store) == []


async def test_an_empty_stream_is_an_empty_object(store: ObjectStore) -> None:
    assert await store.upload_stream("exports/empty.csv", _stream([]), content_type="text/csv") == 0

    stored = await store.head("exports/empty.csv")
    assert stored is not None
    assert stored.size == 0


async def test_a_failing_source_leaves_no_object_and_no_stored_parts(store: ObjectStore) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for piece in _pieces(11 * MIB, MIB):
            yield piece
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        await store.upload_stream("exports/broken.csv", failing(), content_type="text/csv", part_bytes=MIN_PART_BYTES)

    assert await _objects(store, "exports/") == []
    assert await _pending_uploads(store) == []


async def test_a_cancelled_upload_leaves_no_object_and_no_stored_parts(store: ObjectStore) -> None:
    two_parts_sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        sent = 0
        piece = os.urandom(MIB)
        while True:
            yield piece
            sent += len(piece)
            if sent > 2 * MIN_PART_BYTES:
                two_parts_sent.set()
            await asyncio.sleep(0)

    upload = asyncio.create_task(
        store.upload_stream("exports/cancelled.csv", endless(), content_type="text/csv", part_bytes=MIN_PART_BYTES)
    )
    await asyncio.wait_for(two_parts_sent.wait(), timeout=30)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload

    assert await _objects(store, "exports/") == []
    assert await _pending_uploads(store) == []


async def test_parts_smaller_than_s3_allows_are_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="part_bytes"):
        await store.upload_stream("exports/x.csv", _stream([b"x"]), content_type="text/csv", part_bytes=MIB)


async def test_a_presigned_download_url_serves_the_object_under_the_given_name(store: ObjectStore) -> None:
    await store.upload_stream("exports/7/table-3-export-9.csv", _stream([b"customerId\nc1\n"]), content_type="text/csv")

    url = await store.presigned_get("exports/7/table-3-export-9.csv", expires_seconds=60, file_name="profiles é.csv")

    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.content == b"customerId\nc1\n"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="profiles _.csv"')
    assert "filename*=UTF-8''profiles%20%C3%A9.csv" in disposition


async def test_a_presigned_download_url_without_a_name_serves_the_object(store: ObjectStore) -> None:
    await store.put("exports/plain.jsonl", b'{"customerId":"c1"}\n', content_type="application/x-ndjson")

    url = await store.presigned_get("exports/plain.jsonl")

    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b'{"customerId":"c1"}\n'
    assert "content-disposition" not in response.headers
