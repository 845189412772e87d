"""A real Redis for the gateway's shared rate limits: the configured one, the local one, or one started here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

LOCAL_REDIS_URL = "redis://127.0.0.1:6379"


def _client(url: str) -> Redis:
    # No retries: a Redis that is not there should say so at once.
    return Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))


async def _answers(url: str) -> bool:
    client = _client(url)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _started_redis(directory: Path) -> AsyncIterator[str]:
    """A throwaway redis-server on a free port that keeps nothing on disk."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = directory / "redis.log"
    arguments = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = await asyncio.create_subprocess_exec(
        binary,
        *arguments,
        "--dir",
        str(directory),
        "--logfile",
        str(log),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if await _answers(url):
                break
            if process.returncode is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}: {log.read_text()}")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture(scope="session")
async def redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """DCP_TEST_REDIS_URL, else the local default if it answers, else a redis-server started for the session."""
    explicit = os.environ.get("DCP_TEST_REDIS_URL")
    if explicit:
        yield explicit
    elif await _answers(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
    else:
        async with _started_redis(tmp_path_factory.mktemp("redis")) as url:
            yield url


@pytest.fixture(scope="session")
async def redis_key_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test run's own, so runs sharing a Redis never count each other's requests.

    Account ids restart in every run's fresh database; the prefix is what keeps them apart.
    """
    prefix = f"dcp-test-{uuid.uuid4().hex}:ratelimit:"
    yield prefix
    client = _client(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
