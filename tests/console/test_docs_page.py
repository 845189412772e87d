"""The API reference at /docs: every operation of /openapi.json listed by area, each with its
parameters, body and answers, a filter, and nothing loaded from elsewhere."""

from __future__ import annotations

import re

from playwright.async_api import expect

from gateway.console_files import DOCS_DIR
from tests.console.harness import Console


async def test_the_reference_lists_every_operation_and_opens_one(console: Console) -> None:
    page = console.page
    document = await (await page.request.get(console.platform.url + "/openapi.json")).json()
    operations = [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]

    answer = await page.goto(console.platform.url + "/docs")
    assert answer is not None
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    await expect(page.get_by_role("heading", name=re.compile("Open DCP REST API"))).to_be_visible()
    cards = page.locator("details.operation")
    await expect(cards).to_have_count(len(operations))
    await expect(page.locator("#docs-shown")).to_have_text(f"{len(operations)} operations")
    for tag in ("DCP services", "Tables", "Profiles", "Audiences", "Exports", "Uploads"):
        await expect(page.get_by_role("heading", name=tag, exact=True)).to_be_visible()

    # One operation, opened: method, path, summary, then its parameters, body and answers.
    create_table = page.locator("#createTable")
    summary = create_table.locator("summary")
    await expect(summary).to_contain_text("POST")
    await expect(summary).to_contain_text("/experiment/v1/dcp_services/{service_id}/dcp_datasources")
    await expect(summary).to_contain_text("Create a table")
    await summary.click()
    body = create_table.locator(".operation-body")
    await expect(body.get_by_role("heading", name="Parameters")).to_be_visible()
    await expect(body.get_by_role("cell", name="service_id")).to_be_visible()
    await expect(body.get_by_role("heading", name="Request body")).to_be_visible()
    locator_type = body.locator("li", has=page.locator(".prop-name", has_text="keyfield_locator_type")).first
    await expect(locator_type).to_contain_text("required")
    await expect(locator_type).to_contain_text('"cookie"')
    await expect(body.locator(".status-code", has_text="201")).to_be_visible()
    await expect(body.locator(".status-code", has_text="409")).to_be_visible()
    await expect(body.get_by_role("link", name="Table").first).to_be_visible()
    await console.screenshot("api-reference")

    # The filter narrows the list, and says how many it shows.
    search = page.get_by_label("Filter operations")
    await search.fill("post audiences/count")
    await expect(cards.locator("visible=true")).to_have_count(1)
    await expect(page.locator("#countDraftAudience")).to_be_visible()
    await expect(page.locator("#docs-shown")).to_have_text(f"1 of {len(operations)} operations")
    await search.fill("no such operation at all")
    await expect(cards.locator("visible=true")).to_have_count(0)
    await search.fill("")
    await expect(cards.locator("visible=true")).to_have_count(len(operations))

    # A link to an operation opens it.
    await page.goto(console.platform.url + "/docs#getDcpService")
    await expect(page.locator("#getDcpService .operation-body")).to_be_visible()


async def test_the_reference_fits_a_phone(phone: Console) -> None:
    await phone.page.goto(phone.platform.url + "/docs")
    await expect(phone.page.locator("details.operation").first).to_be_visible()
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390


def test_the_reference_loads_nothing_from_elsewhere() -> None:
    files = sorted(path for path in DOCS_DIR.rglob("*") if path.is_file())
    assert {path.name for path in files} >= {"index.html", "docs.js", "docs.css"}
    for path in files:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']https?://", text), path
        assert not re.search(r"@import|url\(\s*[\"']?https?://|import .* from [\"']https?://", text), path
