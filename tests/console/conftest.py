"""Fixtures of the browser tests: one `dcp up` and one Chromium for the session, a fresh tab per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Playwright, async_playwright

from tests.console.harness import Console, Platform, Watch, chromium_path
from tests.e2e.processes import Running, base_env, scratch_database


@pytest.fixture(scope="session")
def console_platform(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("console-dcp")
    with scratch_database(database_url, "dcp_console") as url:
        env = {**base_env(), "DCP_DATABASE_URL": url, "DCP_IMPORT_POLL_SECONDS": "0.2"}
        running = Running(["up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"], env)
        try:
            rest = running.wait_for(r"REST: (http://[\d.]+:\d+)/experiment/v1/").group(1)
            s3 = running.wait_for(r"S3: embedded, (http://[\d.]+:\d+) bucket").group(1)
            token = running.wait_for(r"^\s+([0-9a-f]{64}:\d+)\s*$").group(1)
            yield Platform(url=rest, s3_endpoint=s3, env=env, data_dir=data_dir, first_token=token)
            assert running.stop() == 0
        finally:
            running.kill()


@pytest.fixture(scope="session")
async def playwright_driver() -> AsyncIterator[Playwright]:
    async with async_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
async def browser(playwright_driver: Playwright) -> AsyncIterator[Browser]:
    # Root cannot use Chromium's sandbox; these tests run only the project's own pages.
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    launched = await playwright_driver.chromium.launch(executable_path=chromium_path(), args=args, headless=True)
    yield launched
    await launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests leave screenshots: DCP_CONSOLE_SCREENSHOTS (docs/console for the docs), else a temp dir."""
    chosen = os.environ.get("DCP_CONSOLE_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _tab(browser: Browser, platform: Platform, shots: Path, width: int, height: int) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    try:
        yield Console(page=page, platform=platform, shots=shots)
        assert not watch.problems, "the page had problems:\n" + "\n".join(watch.problems)
    finally:
        await context.close()


@pytest.fixture
async def console(browser: Browser, console_platform: Platform, screenshots: Path) -> AsyncIterator[Console]:
    """A fresh tab 1280 px wide; the test fails on any error the page shows in its console."""
    async for tab in _tab(browser, console_platform, screenshots, 1280, 860):
        yield tab


@pytest.fixture
async def phone(browser: Browser, console_platform: Platform, screenshots: Path) -> AsyncIterator[Console]:
    """A fresh tab the width of a phone."""
    async for tab in _tab(browser, console_platform, screenshots, 390, 844):
        yield tab
