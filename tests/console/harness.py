"""Drives the console in a real headless Chromium against a running `dcp up`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import ConsoleMessage, Page, Request, Response, expect

from tests.e2e.processes import DCP

V1 = "/experiment/v1"


def chromium_path() -> str:
    """The Chromium to drive: DCP_TEST_CHROMIUM, else one on PATH (Debian's `chromium` package)."""
    explicit = os.environ.get("DCP_TEST_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "the console tests need Chromium: `apt-get install chromium` (Debian/Ubuntu), "
        "or set DCP_TEST_CHROMIUM to a Chromium or Chrome binary"
    )


@dataclass
class Platform:
    """A running `dcp up`: where it answers, and how to make accounts on its database."""

    url: str
    s3_endpoint: str
    env: dict[str, str]
    data_dir: Path
    first_token: str

    def new_account(self, name: str) -> str:
        """A new account with a classic token, made with the `dcp` commands an operator uses."""
        created = subprocess.run(
            [DCP, "accounts", "create", name, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        account_id = re.search(r"account (\d+) created", created.stdout)
        assert account_id, created.stdout + created.stderr
        issued = subprocess.run(
            [DCP, "tokens", "create", "--account", account_id.group(1), "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return issued.stdout.strip()

    def rest(self, token: str) -> httpx.Client:
        """A REST client of the same API, for setting the scene and checking what the console did."""
        return httpx.Client(base_url=self.url, headers={"Token": token}, timeout=30)


@dataclass
class Watch:
    """What went wrong in the page: uncaught errors, console errors, failed or 5xx requests."""

    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "assert"):
            return
        # Chromium logs every 4xx answer as a failed resource load; an API's 4xx is an answer the
        # console shows the user (a validation message), and each test asserts what is shown.
        # A 4xx of the console's own files is caught in `_response`.
        if re.match(r"Failed to load resource: the server responded with a status of 4\d\d", message.text):
            return
        self.problems.append(f"console {message.type}: {message.text} at {message.location}")

    def _response(self, response: Response) -> None:
        path = re.sub(r"^https?://[^/]+", "", response.url)
        if response.status >= 500:
            self.problems.append(f"{response.status} from {response.request.method} {path}")
        elif response.status >= 400 and path.startswith("/console"):
            self.problems.append(f"{response.status} for the console's own {path}")

    def _failed(self, request: Request) -> None:
        failure = request.failure or ""
        if "ERR_ABORTED" in failure:
            return  # a request the page itself dropped (navigation, a superseded poll)
        self.problems.append(f"request failed: {request.method} {request.url}: {failure}")


@dataclass
class Console:
    """A browser tab on the console, with helpers written the way a person uses it."""

    page: Page
    platform: Platform
    shots: Path

    @property
    def url(self) -> str:
        return self.platform.url + "/console/"

    async def sign_in(self, token: str) -> None:
        await self.page.goto(self.url)
        await self.page.get_by_label("API token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()

    async def go(self, route: str) -> None:
        """Follows a console route the way a link does (the tab keeps its sign-in)."""
        await self.page.evaluate("route => { window.location.hash = route; }", route)

    async def screenshot(self, name: str) -> Path:
        """A picture of the screen as it is now, for docs/console.md."""
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


def json_of(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()
