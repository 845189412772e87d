"""The seed's "QA integration" and bulk-upload guides, done end to end in the console the way a
person does them: every step through the screens, checked through the REST API."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Awaitable
from pathlib import Path

import httpx
from playwright.async_api import Page, expect

from tests.console.harness import V1, Console, json_of


def label(text: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(text)}( \*)?$")


async def _downloaded(page: Page, click: Awaitable[None]) -> tuple[str, str]:
    """The name and text of the file that `click` makes the browser download."""
    async with page.expect_download() as info:
        await click
    download = await info.value
    path = await download.path()
    return download.suggested_filename, await asyncio.to_thread(Path(path).read_text)


async def test_the_qa_checklist_and_bulk_upload_guide_in_the_console(console: Console, tmp_path: Path) -> None:
    token = console.platform.new_account("qa-checklist")
    async with httpx.AsyncClient(base_url=console.platform.url, headers={"Token": token}, timeout=30) as rest:
        await _walk(console, token, rest, tmp_path)


async def _walk(console: Console, token: str, rest: httpx.AsyncClient, tmp_path: Path) -> None:
    platform = console.platform
    page = console.page

    # Sign in; the home screen says to create the DCP service first.
    await console.sign_in(token)
    await expect(page.locator(".account-name")).to_have_text("qa-checklist")
    await expect(page.get_by_role("heading", name="Create your DCP service first")).to_be_visible()
    await page.get_by_label(label("Name")).fill("Web shop")
    await page.get_by_role("button", name="Create DCP service").click()
    await expect(page.get_by_role("heading", name="Create your DCP service first")).to_have_count(0)
    await expect(page.get_by_text("Web shop").first).to_be_visible()
    [service] = json_of(await rest.get(f"{V1}/dcp_services"))
    sid = service["id"]

    # "A table has been created in the Audiences > Attributes dashboard."
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Attributes").click()
    create = page.get_by_role("form", name="Create table")
    await create.get_by_label(label("Table name")).fill("CRM")
    await create.get_by_label(label("Where a visitor's page holds the customer id")).select_option("cookie")
    await create.get_by_label(label("Cookie name")).fill("crm_id")
    await create.get_by_role("button", name="Create table").click()
    await expect(page.get_by_role("heading", name="CRM", level=1)).to_be_visible()
    add = page.get_by_role("form", name="Add an attribute")
    for name, datatype in (("ltv", "long"), ("category", "string")):
        await add.get_by_label(label("Attribute name")).fill(name)
        await add.get_by_label(label("Datatype")).select_option(datatype)
        await add.get_by_role("button", name="Add attribute").click()
        await expect(page.get_by_role("row", name=re.compile(f"^{name} "))).to_be_visible()
    table = next(
        t for t in json_of(await rest.get(f"{V1}/dcp_services/{sid}/dcp_datasources")) if not t["is_optimizely"]
    )
    tid = table["id"]
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Attributes").click()
    crm = page.get_by_role("region", name=re.compile("^CRM"))
    await expect(crm).to_contain_text("ltv")
    await expect(crm).to_contain_text("category")

    # The bulk-upload guide: "Audiences > Attributes > More Actions > Data Upload" for the keys and the path.
    await crm.get_by_role("link", name="Data Upload").click()
    await expect(page.get_by_role("heading", name="Data Upload: CRM")).to_be_visible()
    connect = page.get_by_role("region", name="Connect an S3 client")
    await expect(connect).to_contain_text(table["aws_access_key"])
    await expect(connect).not_to_contain_text(table["aws_secret_key"])
    await connect.get_by_role("button", name="Show the AWS secret key").click()
    await expect(connect).to_contain_text(table["aws_secret_key"])
    await expect(connect).to_contain_text(f"/optimizely-import/dcp/{sid}/{tid}")

    # The template CSV holds the header row of the registered attributes.
    _, template = await _downloaded(page, page.get_by_role("button", name="Download template CSV").click())
    assert template.splitlines()[0] == "customerId,ltv,category"

    # Upload a CSV with one bad row from the browser; the history shows it processed with its row error.
    upload = tmp_path / "customers.csv"
    upload.write_text("customerId,ltv,category\ncrm-1,120,jeans\ncrm-2,ten,shoes\ncrm-3,80,jeans\n")
    form = page.get_by_role("form", name="Upload a file")
    await form.get_by_label("File to upload").set_input_files(str(upload))
    await form.get_by_role("button", name="Upload", exact=True).click()
    history = page.get_by_role("region", name="Upload history")
    entry = history.get_by_role("row").filter(has_text="customers.csv")
    await expect(entry).to_contain_text("partially_processed", timeout=60_000)
    await entry.get_by_role("button", name=re.compile("^Row errors")).click()
    errors = page.get_by_role("region", name=re.compile("Row errors"))
    await expect(errors).to_contain_text("ten")
    await expect(errors).to_contain_text("must be an integer")
    stored = json_of(await rest.get(f"/api/customer_profile/{sid}/{tid}/crm-1"))
    assert stored["data"] == {"ltv": 120, "category": "jeans"}

    # Alias two customers to Optimizely users, so an audience has members.
    optimizely = next(
        t for t in json_of(await rest.get(f"{V1}/dcp_services/{sid}/dcp_datasources")) if t["is_optimizely"]
    )
    for customer, user in (("crm-1", "oeu1"), ("crm-3", "oeu3")):
        json_of(
            await rest.post(f"/api/alias/{sid}/{optimizely['id']}/{user}", json={"data": {str(tid): customer}}), 201
        )

    # "Table attributes appear in the audience builder under the list of External Attribute conditions
    # and you can create an audience based on these attributes."
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Audiences").click()
    await page.get_by_label(label("Project name")).fill("Web")
    await page.get_by_role("button", name="Create project").click()
    await page.get_by_role("link", name=re.compile("^New audience")).click()
    await expect(page.get_by_role("heading", name="New audience")).to_be_visible()
    await page.get_by_label(label("Name"), exact=False).first.fill("Big spenders")
    await page.get_by_role("button", name="Add condition", exact=True).click()
    leaf = page.get_by_role("group", name="Condition 1", exact=True)
    await leaf.get_by_label("Table").select_option(label="CRM")
    await leaf.get_by_label("Attribute").select_option(label="ltv (long)")
    await leaf.get_by_label("Match type").select_option("gt")
    await leaf.get_by_label("Value", exact=True).fill("100")
    await expect(page.get_by_role("region", name="Live count").locator("output")).to_have_text("1")
    await page.get_by_role("button", name="Create audience").click()
    await expect(page.get_by_role("heading", name="Big spenders")).to_be_visible()
    members = page.get_by_role("region", name="Members")
    await expect(members).to_contain_text("oeu1")
    await expect(members).not_to_contain_text("oeu3")

    # Export the audience and download the file.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Exports").click()
    export = page.get_by_role("form", name="Export an audience")
    await export.get_by_label("Audience").select_option(label="Big spenders (project Web)")
    await export.get_by_label("Format").select_option(label="CSV")
    await export.get_by_role("button", name="Export audience").click()
    card = page.get_by_role("region", name=re.compile(r"^Export \d+$"))
    await expect(card.locator("dt:text-is('Status') + dd")).to_have_text("done", timeout=60_000)
    _, exported = await _downloaded(page, card.get_by_role("link", name=re.compile("^Download ")).click())
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [row["customerId"] for row in rows] == ["oeu1"]
    assert rows[0]["CRM.ltv"] == "120"

    # A second account's token sees none of it, even by the addresses of the first account's screens.
    await page.get_by_role("button", name="Sign out").click()
    other = platform.new_account("qa-checklist-other")
    await console.sign_in(other)
    await expect(page.get_by_role("heading", name="Create your DCP service first")).to_be_visible()
    await expect(page.get_by_text("Web shop")).to_have_count(0)
    for route in (f"/services/{sid}/tables", f"/services/{sid}/tables/{tid}/upload", f"/services/{sid}/exports"):
        await console.go(route)
        await expect(
            page.get_by_role("alert").filter(has_text=re.compile("not found|does not exist", re.I))
        ).to_be_visible()
        await expect(page.get_by_text(table["aws_access_key"])).to_have_count(0)
        await expect(page.get_by_text("CRM", exact=True)).to_have_count(0)
