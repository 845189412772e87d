"""The Audiences screens: the projects' audiences, and the builder with its live count, its check of one
visitor and its members, against a real `dcp up`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.console.audience_scene import Scene, Scenes, user_of
from tests.console.harness import V1, Console, Platform, json_of

LONG_TYPES = ["exists", "exact", "in", "gt", "ge", "lt", "le", "between"]
DATETIME_TYPES = [*LONG_TYPES, "before", "after", "within_last"]


@pytest.fixture
def scenes(console_platform: Platform) -> Iterator[Scenes]:
    with Scenes(console_platform) as making:
        yield making


async def open_builder(console: Console, scene: Scene) -> Page:
    await console.sign_in(scene.token)
    await console.go(f"/services/{scene.service_id}/projects/{scene.project_id}/audiences/new")
    await expect(console.page.get_by_role("heading", name="New audience")).to_be_visible()
    return console.page


def condition(page: Page, label: str) -> Locator:
    return page.get_by_role("group", name=f"Condition {label}", exact=True)


def operator(page: Page, group: str) -> Locator:
    return page.get_by_label("Operator" if group == "" else f"Operator of group {group}", exact=True)


async def add_condition(page: Page, in_group: str = "") -> None:
    name = "Add condition" if in_group == "" else f"Add condition in group {in_group}"
    await page.get_by_role("button", name=name, exact=True).click()


async def add_group(page: Page, in_group: str = "") -> None:
    name = "Add group" if in_group == "" else f"Add group in group {in_group}"
    await page.get_by_role("button", name=name, exact=True).click()


async def pick(leaf: Locator, attribute: str, match_type: str | None = None) -> None:
    await leaf.get_by_label("Table").select_option(label="Orders")
    await leaf.get_by_label("Attribute").select_option(label=attribute)
    if match_type:
        await leaf.get_by_label("Match type").select_option(match_type)


async def option_values(select: Locator) -> list[str]:
    values: list[str] = await select.locator("option").evaluate_all("options => options.map(o => o.value)")
    return values


def live_count(page: Page) -> Locator:
    return page.get_by_role("region", name="Live count").locator("output")


async def test_match_types_and_value_inputs_follow_the_attribute_datatype(console: Console, scenes: Scenes) -> None:
    scene = scenes("builder-types", customers=2)
    page = await open_builder(console, scene)
    await add_condition(page)
    leaf = condition(page, "1")
    match_type = leaf.get_by_label("Match type")

    await pick(leaf, "orders (long)")
    assert await option_values(match_type) == LONG_TYPES
    await match_type.select_option("gt")
    await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("type", "number")
    await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("step", "1")

    await leaf.get_by_label("Attribute").select_option(label="spend (double)")
    assert await option_values(match_type) == LONG_TYPES
    await expect(match_type).to_have_value("gt")  # still allowed, so kept
    await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("step", "any")

    await leaf.get_by_label("Attribute").select_option(label="segment (string)")
    assert await option_values(match_type) == ["exists", "exact", "substring", "in"]
    await expect(match_type).to_have_value("exact")  # gt does not apply to a string
    await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("type", "text")
    await match_type.select_option("in")
    await expect(leaf.get_by_label("Value 1", exact=True)).to_be_visible()
    await leaf.get_by_role("button", name="Add value").click()
    await expect(leaf.get_by_label("Value 2", exact=True)).to_be_focused()
    await leaf.get_by_role("button", name="Remove value 1").click()
    await expect(leaf.get_by_label("Value 2", exact=True)).to_have_count(0)

    await leaf.get_by_label("Attribute").select_option(label="vip (bool)")
    assert await option_values(match_type) == ["exists", "exact"]
    assert await option_values(leaf.get_by_label("Value", exact=True)) == ["true", "false"]

    await leaf.get_by_label("Attribute").select_option(label="signup (datetime, yyyy-mm-dd)")
    assert await option_values(match_type) == DATETIME_TYPES
    await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("type", "date")
    await match_type.select_option("between")
    await expect(leaf.get_by_label("From")).to_have_attribute("type", "date")
    await expect(leaf.get_by_label("To (included)")).to_have_attribute("type", "date")
    await match_type.select_option("within_last")
    await expect(leaf.get_by_label("Days")).to_have_attribute("type", "number")
    await expect(leaf.get_by_label("Days")).to_have_attribute("step", "1")

    for attribute in ("last_seen (datetime, yyyy-mm-ddThh:mm:ssZ)", "first_order (datetime, epoch)"):
        await leaf.get_by_label("Attribute").select_option(label=attribute)
        await match_type.select_option("after")
        await expect(leaf.get_by_label("Value", exact=True)).to_have_attribute("type", "datetime-local")

    await match_type.select_option("exists")
    await expect(leaf.get_by_role("textbox")).to_have_count(0)
    await expect(leaf.get_by_label("Value", exact=True)).to_have_count(0)

    # The Optimizely table's attributes are offered too; a table without attributes offers none.
    await leaf.get_by_label("Table").select_option(label="Optimizely")
    assert await option_values(leaf.get_by_label("Attribute")) == [""]

    # A 64-bit long goes out exactly as typed (as a JS number it would round past the range) ...
    await pick(leaf, "orders (long)")
    await expect(match_type).to_have_value("exact")
    await leaf.get_by_label("Value", exact=True).fill("9223372036854775807")
    await expect(live_count(page)).to_have_text("0")
    # ... and comes back exactly.
    audience = scene.audience("Huge", ["and", scene.leaf("orders", "exact", 9223372036854775807)])
    await console.go(f"/services/{scene.service_id}/audiences/{audience['id']}")
    await expect(page.get_by_role("heading", name="Huge")).to_be_visible()
    await expect(condition(page, "1").get_by_label("Value", exact=True)).to_have_value("9223372036854775807")


async def test_the_live_count_follows_nested_conditions_and_equals_the_rest_count(
    console: Console, scenes: Scenes
) -> None:
    scene = scenes("builder-count", customers=12)
    page = await open_builder(console, scene)
    await expect(live_count(page)).to_have_text("—")
    await expect(page.get_by_role("region", name="Live count")).to_contain_text("Add a condition")

    await add_condition(page)
    first = condition(page, "1")
    await expect(first.get_by_label("Table")).to_be_focused()
    await pick(first, "orders (long)", "ge")
    await expect(page.get_by_role("region", name="Live count")).to_contain_text("condition 1: enter a value")
    await first.get_by_label("Value", exact=True).fill("3")
    tree: list[Any] = ["and", scene.leaf("orders", "ge", 3)]
    assert scene.count(tree) == 9
    await expect(live_count(page)).to_have_text("9")

    await first.get_by_label("Value", exact=True).fill("6")
    await expect(live_count(page)).to_have_text(str(scene.count(["and", scene.leaf("orders", "ge", 6)])))

    # ["and", orders >= 6, ["or", vip = true, segment = "silver", ["not", spend > 15]]]
    await add_group(page)
    await expect(operator(page, "2")).to_have_value("or")
    await pick(condition(page, "2.1"), "vip (bool)", "exact")
    await add_condition(page, "2")
    await pick(condition(page, "2.2"), "segment (string)", "exact")
    await condition(page, "2.2").get_by_label("Value", exact=True).fill("silver")
    await add_group(page, "2")
    await operator(page, "2.3").select_option("not")
    await pick(condition(page, "2.3.1"), "spend (double)", "gt")
    await condition(page, "2.3.1").get_by_label("Value", exact=True).fill("15")
    nested = [
        "or",
        scene.leaf("vip", "exact", True),
        scene.leaf("segment", "exact", "silver"),
        ["not", scene.leaf("spend", "gt", 15)],
    ]
    expected = scene.count(["and", scene.leaf("orders", "ge", 6), nested])
    assert 0 < expected < scene.count(["and", scene.leaf("orders", "ge", 6)])
    await expect(live_count(page)).to_have_text(str(expected))

    await operator(page, "").select_option("or")
    await expect(live_count(page)).to_have_text(str(scene.count(["or", scene.leaf("orders", "ge", 6), nested])))

    # Dates in each format, sent as the attribute takes them: a date, a UTC date-time, epoch milliseconds.
    await page.get_by_role("button", name="Remove group 2", exact=True).click()
    await operator(page, "").select_option("and")
    await add_condition(page)
    await pick(condition(page, "2"), "last_seen (datetime, yyyy-mm-ddThh:mm:ssZ)", "after")
    await condition(page, "2").get_by_label("Value", exact=True).fill("2024-03-05T12:00:00")
    await add_condition(page)
    await pick(condition(page, "3"), "first_order (datetime, epoch)", "between")
    await condition(page, "3").get_by_label("From").fill("2023-11-14T22:13:20")
    await condition(page, "3").get_by_label("To (included)").fill("2023-11-24T22:13:20")
    await add_condition(page)
    await pick(condition(page, "4"), "signup (datetime, yyyy-mm-dd)", "before")
    await condition(page, "4").get_by_label("Value", exact=True).fill("2024-01-11")
    dated = [
        "and",
        scene.leaf("orders", "ge", 6),
        scene.leaf("last_seen", "after", "2024-03-05T12:00:00Z"),
        scene.leaf("first_order", "between", [1_700_000_000_000, 1_700_864_000_000]),
        scene.leaf("signup", "before", "2024-01-11"),
    ]
    expected = scene.count(dated)
    assert expected == 4  # customers 6 to 9
    await expect(live_count(page)).to_have_text(str(expected))


async def test_an_invalid_value_shows_the_api_message_next_to_its_condition(console: Console, scenes: Scenes) -> None:
    scene = scenes("builder-invalid", customers=3)
    page = await open_builder(console, scene)
    await add_condition(page)
    await pick(condition(page, "1"), "orders (long)", "exact")
    await condition(page, "1").get_by_label("Value", exact=True).fill("2")
    await expect(live_count(page)).to_have_text("1")
    await add_condition(page)
    await pick(condition(page, "2"), "segment (string)", "substring")
    await condition(page, "2").get_by_label("Value", exact=True).fill("^gold")
    await expect(condition(page, "2")).to_contain_text("Value: looks like a regular expression")
    await expect(live_count(page)).to_have_text("—")
    await expect(page.get_by_role("region", name="Live count")).to_contain_text("not valid")
    await expect(condition(page, "1").locator(".cond-problem")).to_be_empty()

    # A long takes whole numbers only: the API's own words, next to the condition it names.
    await condition(page, "1").get_by_label("Value", exact=True).fill("1.5")
    await expect(condition(page, "1")).to_contain_text("Value: must be an integer")

    await page.get_by_label("Name").fill("Gold-ish")
    await page.get_by_role("button", name="Create audience").click()
    await expect(page.get_by_role("form", name="Audience").locator(".form-error")).to_contain_text("not valid")
    await expect(condition(page, "2")).to_contain_text("looks like a regular expression")
    await expect(page.get_by_role("heading", name="New audience")).to_be_visible()
    assert json_of(scene.rest.get(f"{V1}/projects/{scene.project_id}/audiences")) == []

    # An incomplete condition is named before anything is sent.
    await add_condition(page)
    await page.get_by_role("button", name="Create audience").click()
    await expect(condition(page, "3")).to_contain_text("pick a table")


async def test_evaluate_shows_which_conditions_held_for_one_visitor(console: Console, scenes: Scenes) -> None:
    scene = scenes("builder-evaluate", customers=12)
    page = await open_builder(console, scene)
    await add_condition(page)
    await pick(condition(page, "1"), "orders (long)", "ge")
    await condition(page, "1").get_by_label("Value", exact=True).fill("6")
    await add_group(page)
    await pick(condition(page, "2.1"), "vip (bool)", "exact")
    await expect(live_count(page)).to_have_text("2")  # customers 6 and 9

    checker = page.get_by_role("region", name="Check a visitor")
    await checker.get_by_label("Optimizely user id").fill(user_of(7))
    await checker.get_by_role("button", name="Evaluate").click()
    await expect(checker).to_contain_text(f"{user_of(7)} is not in this audience")
    await expect(condition(page, "1").locator(".cond-outcome")).to_contain_text("held")
    await expect(condition(page, "2.1").locator(".cond-outcome")).to_contain_text("did not hold")
    leaves = checker.get_by_role("list", name="Each condition for this visitor").get_by_role("listitem")
    await expect(leaves).to_have_text(
        ["held Condition 1: orders (Orders) at least", "did not hold Condition 2.1: vip (Orders) equals"]
    )

    await page.get_by_label("Name").fill("Frequent VIPs")
    await page.get_by_label("Description").fill("Six orders or more, and a VIP")
    await checker.get_by_label("Optimizely user id").fill(user_of(9))
    await checker.get_by_role("button", name="Evaluate").click()
    await expect(checker).to_contain_text(f"{user_of(9)} is in this audience")
    await expect(condition(page, "2.1").locator(".cond-outcome")).to_contain_text("held")
    await console.screenshot("audience-builder")

    # A change makes the check stale: the marks go, and the result says so.
    await condition(page, "1").get_by_label("Value", exact=True).fill("10")
    await expect(condition(page, "1").locator(".cond-outcome")).to_be_empty()
    await expect(checker).to_contain_text("changed since this check")


async def test_save_reload_edit_and_archive_an_audience(console: Console, scenes: Scenes) -> None:
    scene = scenes("builder-save", customers=12)
    page = await open_builder(console, scene)
    await page.get_by_label("Name").fill("Early regulars")
    await add_condition(page)
    await pick(condition(page, "1"), "orders (long)", "between")
    await condition(page, "1").get_by_label("From").fill("2")
    await condition(page, "1").get_by_label("To (included)").fill("9")
    await add_condition(page)
    await pick(condition(page, "2"), "segment (string)", "in")
    await condition(page, "2").get_by_label("Value 1", exact=True).fill("gold")
    await condition(page, "2").get_by_role("button", name="Add value").click()
    await condition(page, "2").get_by_label("Value 2", exact=True).fill("silver")
    await add_condition(page)
    await pick(condition(page, "3"), "first_order (datetime, epoch)", "after")
    await condition(page, "3").get_by_label("Value", exact=True).fill("2023-11-15T00:00:00")
    await page.get_by_role("button", name="Create audience").click()
    await expect(page.get_by_role("heading", name="Early regulars")).to_be_visible()

    audiences = json_of(scene.rest.get(f"{V1}/projects/{scene.project_id}/audiences"))
    assert len(audiences) == 1
    audience = audiences[0]
    assert json.loads(audience["conditions"]) == [
        "and",
        scene.leaf("orders", "between", [2, 9]),
        scene.leaf("segment", "in", ["gold", "silver"]),
        scene.leaf("first_order", "after", 1_700_006_400_000),
    ]
    assert page.url.endswith(f"/services/{scene.service_id}/audiences/{audience['id']}")
    saved_count = json_of(scene.rest.get(f"{V1}/audiences/{audience['id']}/members/count"))["count"]
    members = page.get_by_role("region", name="Members", exact=True)
    await expect(members).to_contain_text(f"Saved audience: {saved_count} members")

    # A reload reads the saved conditions back into the editor.
    await page.reload()
    await expect(condition(page, "1").get_by_label("From")).to_have_value("2")
    await expect(condition(page, "1").get_by_label("To (included)")).to_have_value("9")
    await expect(condition(page, "2").get_by_label("Value 2", exact=True)).to_have_value("silver")
    await expect(condition(page, "3").get_by_label("Value", exact=True)).to_have_value("2023-11-15T00:00")
    await expect(condition(page, "3").get_by_label("Match type")).to_have_value("after")
    await expect(live_count(page)).to_have_text(str(saved_count))

    await condition(page, "1").get_by_label("To (included)").fill("4")
    await page.get_by_label("Description").fill("Two to four orders")
    await page.get_by_role("button", name="Save audience").click()
    await expect(page.get_by_role("status").filter(has_text="saved")).to_be_visible()
    stored = json_of(scene.rest.get(f"{V1}/audiences/{audience['id']}"))
    assert json.loads(stored["conditions"])[1]["value"] == [2, 4]
    assert stored["description"] == "Two to four orders"

    # A name the API refuses is shown next to the name.
    await page.get_by_label("Name").fill("")
    await page.get_by_role("button", name="Save audience").click()
    name_field = page.locator(".field", has=page.get_by_label("Name"))
    await expect(name_field.locator(".field-error")).not_to_be_empty()
    assert json_of(scene.rest.get(f"{V1}/audiences/{audience['id']}"))["name"] == "Early regulars"
    await page.get_by_label("Name").fill("Early regulars")

    # Archive asks first; "Cancel" changes nothing.
    await page.get_by_role("button", name="Archive audience").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Archive the audience “Early regulars”?")
    await dialog.get_by_role("button", name="Cancel").click()
    assert json_of(scene.rest.get(f"{V1}/audiences/{audience['id']}"))["archived"] is False
    await page.get_by_role("button", name="Archive audience").click()
    await page.get_by_role("dialog").get_by_role("button", name="Archive").click()
    await expect(page.get_by_text("This audience is archived")).to_be_visible()
    await expect(page.get_by_role("button", name="Save audience")).to_be_disabled()
    await expect(page.get_by_role("button", name="Archive audience")).to_have_count(0)
    assert json_of(scene.rest.get(f"{V1}/audiences/{audience['id']}"))["archived"] is True

    await page.get_by_role("link", name="Audiences").first.click()
    row = page.get_by_role("row").filter(has_text="Early regulars")
    await expect(row).to_contain_text("archived")


async def test_the_members_list_pages_through_the_api(console: Console, scenes: Scenes) -> None:
    scene = scenes("builder-members", customers=25)
    audience = scene.audience("Everyone", ["and", scene.leaf("orders", "ge", 0)])
    expected = scene.members(audience["id"])
    assert len(expected) == 25
    await console.sign_in(scene.token)
    page = console.page
    await console.go(f"/services/{scene.service_id}/audiences/{audience['id']}")
    members = page.get_by_role("region", name="Members", exact=True)
    await expect(members).to_contain_text("Saved audience: 25 members")
    await members.get_by_label("Per page").select_option("10")
    seen: list[str] = []
    for size in (10, 10, 5):
        cells = members.get_by_role("cell")
        await expect(cells).to_have_count(size)
        page_users = await cells.all_inner_texts()
        assert not set(page_users) & set(seen)
        seen.extend(page_users)
        if len(seen) < 25:
            await members.get_by_role("button", name="Next").click()
            await expect(cells.first).not_to_have_text(page_users[0])
    await expect(members.get_by_role("button", name="Next")).to_be_disabled()
    assert set(seen) == expected
    await members.get_by_role("button", name="Previous").click()
    await expect(members.get_by_role("cell")).to_have_count(10)


async def test_the_audiences_screen_starts_with_a_linked_project_and_lists_audiences(
    console: Console, scenes: Scenes
) -> None:
    scene = scenes("audiences-list", customers=6, project=False)
    await console.sign_in(scene.token)
    page = console.page
    await console.go(f"/services/{scene.service_id}/audiences")
    await expect(page.get_by_text("No project is linked to this DCP service yet")).to_be_visible()
    await page.get_by_label("Project name").fill("Web")
    await page.get_by_role("button", name="Create project").click()
    web = page.get_by_role("region", name="Project Web")
    await expect(web).to_contain_text("No audiences in this project yet")
    projects = json_of(scene.rest.get(f"{V1}/projects"))
    assert [(p["project_name"], p["dcp_service_id"]) for p in projects] == [("Web", scene.service_id)]
    scene.project_id = projects[0]["id"]

    scene.audience("VIPs", ["and", scene.leaf("vip", "exact", True)])
    old = scene.audience("Last year's buyers", ["and", scene.leaf("orders", "gt", 2)])
    assert scene.rest.delete(f"{V1}/audiences/{old['id']}").status_code == 204
    await page.reload()
    await expect(web.get_by_role("row")).to_have_count(3)
    await expect(web.get_by_role("row").nth(1)).to_contain_text("VIPs")
    await expect(web.get_by_role("row").nth(1)).to_contain_text("active")
    await expect(web.get_by_role("row").nth(2)).to_contain_text("Last year's buyers")
    await expect(web.get_by_role("row").nth(2)).to_contain_text("archived")
    await console.screenshot("audiences")

    await web.get_by_role("link", name="New audience").click()
    await expect(page.get_by_role("heading", name="New audience")).to_be_visible()
    await expect(page.locator(".crumbs")).to_contain_text("Web")
    await page.go_back()
    await web.get_by_role("link", name="VIPs").click()
    await expect(page.get_by_role("heading", name="VIPs")).to_be_visible()
    await expect(condition(page, "1").get_by_label("Attribute")).to_have_value(str(scene.attributes["vip"]))


async def test_the_builder_fits_a_phone(phone: Console, scenes: Scenes) -> None:
    scene = scenes("builder-phone", customers=4)
    page = await open_builder(phone, scene)
    await add_condition(page)
    await pick(condition(page, "1"), "orders (long)", "between")
    await add_group(page)
    await add_group(page, "2")
    await pick(condition(page, "2.2.1"), "last_seen (datetime, yyyy-mm-ddThh:mm:ssZ)", "in")
    await condition(page, "2.2.1").get_by_role("button", name="Add value").click()
    await expect(condition(page, "2.2.1").get_by_label("Value 2", exact=True)).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    box = await condition(page, "2.2.1").get_by_label("Value 2", exact=True).bounding_box()
    assert box is not None
    assert 0 <= box["x"] <= box["x"] + box["width"] <= 390
    await expect(page.get_by_role("button", name="Create audience")).to_be_visible()
    assert re.search(r"/audiences/new$", page.url)
