"""The Profiles screen: one customer's values (read, edit, erase) and an Optimizely user's view."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import Locator, Page, expect

from tests.console.harness import V1, Console, json_of

ATTRIBUTES = [
    {"name": "ltv", "datatype": "long"},
    {"name": "score", "datatype": "double"},
    {"name": "vip", "datatype": "bool"},
    {"name": "segment", "datatype": "string"},
    {"name": "last_order", "datatype": "datetime", "format": "yyyy-mm-dd"},
    {"name": "last_seen", "datatype": "datetime", "format": "yyyy-mm-ddThh:mm:ssZ"},
    {"name": "signed_up", "datatype": "datetime", "format": "epoch"},
]


def label(text: str) -> re.Pattern[str]:
    """A field's label exactly, whether or not it is marked required (a trailing " *")."""
    return re.compile(rf"^{re.escape(text)}( \*)?$")


def field_error(scope: Page | Locator, text: str) -> Locator:
    """The message shown under the input labelled `text`."""
    page = scope if isinstance(scope, Page) else scope.page
    return scope.locator(".field", has=page.get_by_label(label(text))).locator(".field-error")


def table_with(rest: httpx.Client, service_id: int, name: str, cookie: str, attributes: list[dict[str, Any]]) -> int:
    body = {"name": name, "keyfield_locator_type": "cookie", "keyfield_locator_name": cookie}
    table = json_of(rest.post(f"{V1}/dcp_services/{service_id}/dcp_datasources", json=body), 201)
    for attribute in attributes:
        json_of(rest.post(f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", json=attribute), 201)
    return int(table["id"])


def scene(console: Console, account: str) -> tuple[str, httpx.Client, int, int]:
    """A new account with a DCP service and a CRM table of every datatype: token, client, ids."""
    token = console.platform.new_account(account)
    rest = console.platform.rest(token)
    service = json_of(rest.post(f"{V1}/dcp_services", json={"name": "Web shop"}), 201)
    return token, rest, service["id"], table_with(rest, service["id"], "CRM", "crm_id", ATTRIBUTES)


async def test_a_customer_is_looked_up_edited_with_field_errors_and_erased(console: Console) -> None:
    token, rest, service_id, crm = scene(console, "console-profiles-edit")
    profile_url = f"/api/customer_profile/{service_id}/{crm}/crm-42"
    stored = {"ltv": 10, "vip": True, "segment": "gold", "last_order": "2024-01-31", "signed_up": 1700000000000}
    json_of(rest.post(profile_url, json={"data": stored}), 201)
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service_id}/profiles")

    lookup = page.get_by_role("region", name="Customer profile")
    await lookup.get_by_label(label("Table")).select_option(label="CRM")
    await lookup.get_by_label(label("Customer id")).fill("crm-42")
    await lookup.get_by_role("button", name="Look up").click()
    await expect(lookup.get_by_role("heading", name="Customer “crm-42” in “CRM”")).to_be_visible()
    values = lookup.get_by_role("table", name="Stored values")
    await expect(values.get_by_role("row", name=re.compile("^ltv long 10"))).to_be_visible()
    signed_up = values.get_by_role("row", name=re.compile("^signed_up datetime \\(epoch\\) 1700000000000"))
    await expect(signed_up).to_contain_text("2023-11-14T22:13:20.000Z")

    # One input per attribute, fitting its datatype and format.
    edit = lookup.get_by_role("form", name="Values of crm-42")
    for name, kind in [("ltv", "number"), ("score", "number"), ("segment", "text"), ("last_order", "date"),
                       ("last_seen", "text"), ("signed_up", "number")]:  # fmt: skip
        await expect(edit.get_by_label(label(name))).to_have_attribute("type", kind)
    await expect(edit.get_by_label(label("vip"))).to_have_value("true")
    await expect(edit.get_by_label(label("last_order"))).to_have_value("2024-01-31")

    # A bad value: the API's message next to that attribute's input, and nothing stored.
    await edit.get_by_label(label("ltv")).fill("1.5")
    await edit.get_by_label(label("score")).fill("2.5")
    await edit.get_by_role("button", name="Save values").click()
    await expect(field_error(edit, "ltv")).to_contain_text("must be an integer")
    await expect(edit.get_by_label(label("ltv"))).to_have_attribute("aria-invalid", "true")
    assert json_of(rest.get(profile_url))["data"] == stored

    await edit.get_by_label(label("last_seen")).fill("2024-02-01 10:00")
    await edit.get_by_label(label("ltv")).fill("42")
    await edit.get_by_role("button", name="Save values").click()
    await expect(field_error(edit, "last_seen")).to_contain_text("yyyy-mm-ddThh:mm:ssZ")
    await expect(field_error(edit, "ltv")).to_be_empty()
    assert json_of(rest.get(profile_url))["data"] == stored

    # A good edit: only the changed values are sent; an emptied input clears its value.
    await edit.get_by_label(label("last_seen")).fill("2024-02-01T10:00:00Z")
    await edit.get_by_label(label("segment")).fill("")
    await edit.get_by_label(label("vip")).select_option("false")
    await edit.get_by_label(label("last_order")).fill("2024-02-29")
    await edit.get_by_role("button", name="Save values").click()
    await expect(values.get_by_role("row", name=re.compile("^ltv long 42"))).to_be_visible()
    assert json_of(rest.get(profile_url))["data"] == {
        "ltv": 42,
        "score": 2.5,
        "vip": False,
        "last_order": "2024-02-29",
        "last_seen": "2024-02-01T10:00:00Z",
        "signed_up": 1700000000000,
    }
    await console.screenshot("profiles")

    # A customer without values says so.
    await lookup.get_by_label(label("Customer id")).fill("crm-404")
    await lookup.get_by_role("button", name="Look up").click()
    await expect(lookup.get_by_text("No profile for this customer")).to_be_visible()

    # Erasing asks first.
    await lookup.get_by_label(label("Customer id")).fill("crm-42")
    await lookup.get_by_role("button", name="Look up").click()
    await lookup.get_by_role("button", name="Delete this customer's values").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(lookup.get_by_text("No profile for this customer")).to_be_visible()
    assert rest.get(profile_url).status_code == 404
    rest.close()


async def test_an_optimizely_users_aliases_are_added_and_removed_and_its_consolidated_view_shows_them(
    console: Console,
) -> None:
    token, rest, service_id, crm = scene(console, "console-profiles-view")
    loyalty = table_with(rest, service_id, "Loyalty", "loyalty_id", [{"name": "points", "datatype": "long"}])
    json_of(rest.post(f"/api/customer_profile/{service_id}/{crm}/crm-42", json={"data": {"ltv": 10}}), 201)
    json_of(rest.post(f"/api/customer_profile/{service_id}/{loyalty}/loy-9", json={"data": {"points": 300}}), 201)
    optimizely = next(
        t["id"] for t in json_of(rest.get(f"{V1}/dcp_services/{service_id}/dcp_datasources")) if t["is_optimizely"]
    )
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service_id}/profiles")

    visitor = page.get_by_role("region", name="Optimizely user")
    await visitor.get_by_label(label("Optimizely user id")).fill("oeu1457385393173r0.65")
    await visitor.get_by_role("button", name="Show user").click()
    await expect(visitor.get_by_text("not linked to a customer of another table yet")).to_be_visible()
    await expect(visitor.get_by_text("Nothing is known about this user yet")).to_be_visible()

    # A placeholder id is refused by the service's guards, next to the customer id.
    await visitor.get_by_label(label("Table of the customer")).select_option(label="CRM")
    await visitor.get_by_label(label("Customer id in that table")).fill("null")
    await visitor.get_by_role("button", name="Add alias").click()
    await expect(field_error(visitor, "Customer id in that table")).to_contain_text("placeholder")

    await visitor.get_by_label(label("Customer id in that table")).fill("crm-42")
    await visitor.get_by_role("button", name="Add alias").click()
    await expect(visitor.get_by_role("row", name=re.compile("^CRM crm-42"))).to_be_visible()
    await visitor.get_by_label(label("Table of the customer")).select_option(label="Loyalty")
    await visitor.get_by_label(label("Customer id in that table")).fill("loy-9")
    await visitor.get_by_role("button", name="Add alias").click()
    consolidated = visitor.get_by_role("region", name="Consolidated profile")
    await expect(consolidated.get_by_role("heading", name="Loyalty · customer “loy-9”")).to_be_visible()
    await expect(consolidated.get_by_role("table", name="Values from Loyalty")).to_contain_text("300")
    await expect(consolidated.get_by_role("table", name="Values from CRM")).to_contain_text("10")
    aliases_url = f"/api/alias/{service_id}/{optimizely}/oeu1457385393173r0.65"
    assert json_of(rest.get(aliases_url))["data"] == {str(crm): "crm-42", str(loyalty): "loy-9"}

    await visitor.get_by_role("button", name="Remove alias to CRM").click()
    await page.get_by_role("dialog").get_by_role("button", name="Remove").click()
    await expect(consolidated.get_by_role("table", name="Values from CRM")).to_have_count(0)
    await expect(visitor.get_by_role("row", name=re.compile("^CRM crm-42"))).to_have_count(0)
    assert json_of(rest.get(aliases_url))["data"] == {str(loyalty): "loy-9"}

    # A linked customer id opens that customer's profile.
    await visitor.get_by_role("button", name="loy-9").click()
    lookup = page.get_by_role("region", name="Customer profile")
    await expect(lookup.get_by_role("heading", name="Customer “loy-9” in “Loyalty”")).to_be_visible()
    await expect(lookup.get_by_role("table", name="Stored values")).to_contain_text("300")
    rest.close()
