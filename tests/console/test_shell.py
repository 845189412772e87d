"""Signing in and out, the console's files, and how it behaves on a phone."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import expect

from console import STATIC_DIR
from tests.console.harness import Console, Platform


def test_root_and_bare_path_lead_to_the_console(console_platform: Platform) -> None:
    for path in ("/", "/console"):
        answer = httpx.get(console_platform.url + path, follow_redirects=False)
        assert answer.status_code == 302
        assert answer.headers["location"] == "/console/"


def test_the_console_knows_where_files_go(console_platform: Platform) -> None:
    # The Data Upload screen shows the store as an S3 client must be told it: the address dcp up printed.
    config = httpx.get(console_platform.url + "/console/config.json").json()
    assert config == {
        "s3": {"endpoint_url": console_platform.s3_endpoint, "bucket": "optimizely-import", "region": "us-east-1"}
    }


def test_the_console_ships_under_200_kb_of_javascript_from_its_own_origin(console_platform: Platform) -> None:
    scripts = sorted(STATIC_DIR.rglob("*.js"))
    total = sum(path.stat().st_size for path in scripts)
    assert scripts
    assert total < 200 * 1024, f"{total} bytes of JavaScript"
    page = httpx.get(console_platform.url + "/console/")
    assert page.status_code == 200
    # Every module is asked for with the page, so loading never waits on a chain of imports.
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/console/static/([^"]+)">', page.text))
    assert preloaded == {path.relative_to(STATIC_DIR).as_posix() for path in scripts}
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Nothing is fetched from another host: no CDN, fonts or scripts from elsewhere.
    for path in [*scripts, *STATIC_DIR.rglob("*.css"), *STATIC_DIR.rglob("*.html")]:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']https?://", text), path
        assert not re.search(r"@import|url\(\s*[\"']?https?://", text), path
        served = httpx.get(console_platform.url + "/console/static/" + path.relative_to(STATIC_DIR).as_posix())
        assert served.status_code == 200, path
        assert served.content == path.read_bytes()


async def test_sign_in_shows_the_account_and_sign_out_forgets_the_token(console: Console) -> None:
    page = console.page
    await page.goto(console.url)
    await expect(page.get_by_label("API token")).to_be_focused()
    await console.screenshot("sign-in")
    await console.sign_in(console.platform.first_token)
    await expect(page.locator(".account-name")).to_have_text("default")
    # The token lives in this tab only: not in a cookie, not in the address.
    assert await page.context.cookies() == []
    assert console.platform.first_token not in page.url
    await page.reload()
    await expect(page.locator(".account-name")).to_have_text("default")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API token")).to_be_visible()
    await page.reload()
    await expect(page.get_by_label("API token")).to_be_visible()


async def test_a_wrong_token_is_refused_next_to_the_token_field(console: Console) -> None:
    page = console.page
    await page.goto(console.url)
    await page.get_by_label("API token").fill("0" * 64 + ":999999")
    await page.get_by_role("button", name="Sign in").click()
    token_field = page.locator(".field", has=page.get_by_label("API token"))
    await expect(token_field.locator(".field-error")).not_to_be_empty()
    await expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


async def test_a_new_tab_must_sign_in_again(console: Console) -> None:
    await console.sign_in(console.platform.first_token)
    other = await console.page.context.new_page()
    await other.goto(console.url)
    await expect(other.get_by_label("API token")).to_be_visible()
    await other.close()


async def test_an_unknown_route_says_so_with_a_way_back(console: Console) -> None:
    await console.sign_in(console.platform.first_token)
    await console.go("/no/such/screen")
    await expect(console.page.get_by_role("heading", name="Page not found")).to_be_visible()
    await console.page.get_by_role("link", name="Go to your DCP services").click()
    await expect(console.page.get_by_role("heading", name="Page not found")).to_have_count(0)


async def test_the_header_fits_a_phone(phone: Console) -> None:
    await phone.sign_in(phone.platform.first_token)
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await expect(phone.page.get_by_role("button", name="Sign out")).to_be_visible()
