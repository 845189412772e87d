"""The Exports screen: start a table or audience export, watch it reach done, download its file, and
page through the past exports, against a real `dcp up`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from tests.console.audience_scene import ATTRIBUTES, Scene, Scenes, customer_values, user_of
from tests.console.harness import V1, Console, Platform, json_of


@pytest.fixture
def scenes(console_platform: Platform) -> Iterator[Scenes]:
    with Scenes(console_platform) as making:
        yield making


async def open_exports(console: Console, scene: Scene) -> Page:
    await console.sign_in(scene.token)
    await console.go(f"/services/{scene.service_id}/exports")
    await expect(console.page.get_by_role("heading", name="Exports", exact=True)).to_be_visible()
    return console.page


def export_card(page: Page) -> Locator:
    return page.get_by_role("region", name=re.compile(r"^Export \d+$"))


def fact(card: Locator, name: str) -> Locator:
    return card.locator(f"dt:text-is('{name}') + dd")


async def download_text(page: Page, link: Locator) -> tuple[str, str]:
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    path = await download.path()
    return download.suggested_filename, await asyncio.to_thread(Path(path).read_text)


async def test_a_table_export_runs_to_done_and_its_file_downloads(console: Console, scenes: Scenes) -> None:
    scene = scenes("exports-table", customers=12)
    page = await open_exports(console, scene)
    await expect(page.get_by_role("region", name="Past exports")).to_contain_text("No exports yet")
    form = page.get_by_role("form", name="Export a table")
    await form.get_by_label("Table").select_option(label="Orders")
    await form.get_by_label("Format").select_option(label="CSV")
    await form.get_by_role("button", name="Export table").click()

    card = export_card(page)
    await expect(card).to_contain_text("Table: Orders")
    await expect(fact(card, "Status")).to_have_text("done")
    await expect(fact(card, "Rows")).to_have_text("12")
    await expect(fact(card, "Format")).to_have_text("CSV")
    await expect(fact(card, "Size")).not_to_have_text("0 B")
    name, text = await download_text(page, card.get_by_role("link", name=re.compile(r"^Download ")))
    assert re.fullmatch(rf"table-{scene.table_id}-export-\d+\.csv", name)
    rows = list(csv.DictReader(io.StringIO(text)))
    # An export's rows come in no promised order.
    rows.sort(key=lambda row: row["customerId"])
    assert [row["customerId"] for row in rows] == [f"crm-{i:03d}" for i in range(12)]
    assert set(rows[0]) == {"customerId", *(spec["name"] for spec in ATTRIBUTES)}
    assert rows[4]["orders"] == "4"
    assert rows[4]["segment"] == customer_values(4)["segment"]

    past = page.get_by_role("region", name="Past exports")
    row = past.get_by_role("row").filter(has_text="Table: Orders")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("done")
    await expect(row.get_by_role("link", name=re.compile(r"^Download "))).to_have_attribute("download", name)


async def test_an_audience_export_in_json_lines_holds_its_members(console: Console, scenes: Scenes) -> None:
    scene = scenes("exports-audience", customers=12)
    audience = scene.audience("VIPs", ["and", scene.leaf("vip", "exact", True)])
    members = scene.members(audience["id"])
    assert members == {user_of(i) for i in (0, 3, 6, 9)}
    earlier = scene.rest.post(f"{V1}/dcp_datasources/{scene.table_id}/exports", json={"format": "csv"})
    json_of(earlier, 201)
    page = await open_exports(console, scene)
    form = page.get_by_role("form", name="Export an audience")
    await form.get_by_label("Audience").select_option(label="VIPs (project Web)")
    await form.get_by_label("Format").select_option(label="JSON Lines")
    await form.get_by_role("button", name="Export audience").click()

    card = export_card(page)
    await expect(card).to_contain_text("Audience: VIPs")
    await expect(fact(card, "Status")).to_have_text("done")
    await expect(fact(card, "Rows")).to_have_text("4")
    name, text = await download_text(page, card.get_by_role("link", name=re.compile(r"^Download ")))
    assert name.endswith(".jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    assert {line["optimizelyUserId"] for line in lines} == members
    first = next(line for line in lines if line["optimizelyUserId"] == user_of(3))
    orders = next(p for p in first["profiles"] if p["datasourceId"] == str(scene.table_id))
    assert orders["data"]["orders"] == 3
    past = page.get_by_role("region", name="Past exports")
    await expect(past.get_by_role("row")).to_have_count(3)
    await expect(past.get_by_text("done", exact=True)).to_have_count(2)
    await console.screenshot("exports")


async def test_past_exports_are_listed_newest_first_and_paged(console: Console, scenes: Scenes) -> None:
    scene = scenes("exports-past", customers=3)
    audience = scene.audience("Everyone", ["and", scene.leaf("orders", "ge", 0)])
    table_exports = f"{V1}/dcp_datasources/{scene.table_id}/exports"
    started = [json_of(scene.rest.post(table_exports, json={"format": "csv"}), 201)]
    started += [json_of(scene.rest.post(table_exports, json={"format": "jsonl"}), 201) for _ in range(9)]
    started.append(json_of(scene.rest.post(f"{V1}/audiences/{audience['id']}/exports", json={"format": "csv"}), 201))
    page = await open_exports(console, scene)
    past = page.get_by_role("region", name="Past exports")
    await past.get_by_label("Per page").select_option("10")
    rows = past.get_by_role("row")
    await expect(rows).to_have_count(11)  # a header and ten exports
    first_cells = past.locator("tbody tr td:first-child")
    newest_first = [str(item["id"]) for item in reversed(started)]
    await expect(first_cells).to_have_text(newest_first[:10])
    await expect(rows.nth(1)).to_contain_text("Audience: Everyone")
    await expect(rows.nth(2)).to_contain_text("JSON Lines")
    # Each one still running is followed until it ends.
    await expect(past.get_by_text("done", exact=True)).to_have_count(10)
    await past.get_by_role("button", name="Next").click()
    await expect(first_cells).to_have_text(newest_first[10:])
    await expect(rows.nth(1)).to_contain_text("Table: Orders")
    await expect(rows.nth(1)).to_contain_text("CSV")
    await expect(past.get_by_role("button", name="Next")).to_be_disabled()


async def test_a_service_without_audiences_says_how_to_get_one(console: Console, scenes: Scenes) -> None:
    scene = scenes("exports-empty", customers=1, project=False)
    page = await open_exports(console, scene)
    region = page.get_by_role("region", name="Export an audience")
    await expect(region).to_contain_text("No audience to export yet")
    await region.get_by_role("link", name="Go to Audiences").click()
    await expect(page.get_by_role("heading", name="Audiences")).to_be_visible()
