"""The Attributes dashboard and a table's page: tables, attributes, their errors and archiving."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import Locator, Page, expect

from tests.console.harness import V1, Console, json_of


def label(text: str) -> re.Pattern[str]:
    """A field's label exactly, whether or not it is marked required (a trailing " *")."""
    return re.compile(rf"^{re.escape(text)}( \*)?$")


def field_error(page: Page, text: str) -> Locator:
    """The message shown under the input labelled `text`."""
    return page.locator(".field", has=page.get_by_label(label(text))).locator(".field-error")


def scene(console: Console, account: str) -> tuple[str, httpx.Client, dict[str, Any]]:
    """A new account with one DCP service: its token, a REST client and the service."""
    token = console.platform.new_account(account)
    rest = console.platform.rest(token)
    return token, rest, json_of(rest.post(f"{V1}/dcp_services", json={"name": "Web shop"}), 201)


def crm_table(rest: httpx.Client, service: dict[str, Any], *attributes: dict[str, Any]) -> dict[str, Any]:
    body = {"name": "CRM", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"}
    table: dict[str, Any] = json_of(rest.post(f"{V1}/dcp_services/{service['id']}/dcp_datasources", json=body), 201)
    for attribute in attributes:
        json_of(rest.post(f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", json=attribute), 201)
    return table


def attributes_of(rest: httpx.Client, table_id: int) -> dict[str, dict[str, Any]]:
    listed = json_of(rest.get(f"{V1}/dcp_datasources/{table_id}/dcp_datasource_attributes"))
    return {a["name"]: a for a in listed}


async def test_an_empty_dashboard_says_what_to_do_first_and_the_optimizely_table_is_built_in(console: Console) -> None:
    token, rest, service = scene(console, "console-attributes-empty")
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service['id']}/tables")
    steps = page.get_by_role("region", name="Start here")
    await expect(steps).to_contain_text("Create a table")
    await expect(steps).to_contain_text("Register its attributes")
    await expect(steps).to_contain_text("Upload data")
    optimizely = page.get_by_role("region", name=re.compile("^Optimizely"))
    await expect(optimizely).to_contain_text("built-in")
    await expect(optimizely).to_contain_text("the Optimizely user id (uid)")

    # Its page offers no archive, and its customer-id locator cannot be edited.
    await optimizely.get_by_role("link", name="Table and attributes").click()
    await expect(page.get_by_role("heading", name=re.compile("^Optimizely"), level=1)).to_be_visible()
    await page.get_by_role("button", name="Edit table").click()
    await expect(page.get_by_label(label("Table name"))).to_be_focused()
    await expect(page.get_by_text("always the Optimizely user id (uid)")).to_be_visible()
    await expect(page.get_by_label(label("Where a visitor's page holds the customer id"))).to_have_count(0)
    await expect(page.get_by_role("button", name="Archive table")).to_have_count(0)
    rest.close()


async def test_a_table_and_attributes_of_every_datatype_are_created_with_errors_next_to_their_fields(
    console: Console,
) -> None:
    token, rest, service = scene(console, "console-attributes-create")
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service['id']}/tables")

    create = page.get_by_role("form", name="Create table")
    await create.get_by_label(label("Table name")).fill("CRM")
    await create.get_by_label(label("Description")).fill("Customers of the CRM, by CRM id")
    # The uid locator has no name to ask for; a cookie has.
    locator_type = create.get_by_label(label("Where a visitor's page holds the customer id"))
    await locator_type.select_option("uid")
    await expect(create.get_by_label(label("Cookie name"))).to_have_count(0)
    await locator_type.select_option("cookie")
    await create.get_by_label(label("Cookie name")).fill("crm id!")
    await create.get_by_label(label("Import mode")).select_option("all_or_nothing")
    await create.get_by_role("button", name="Create table").click()
    await expect(field_error(page, "Cookie name")).to_contain_text("must start with a letter or underscore")
    assert len(json_of(rest.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources"))) == 1

    await create.get_by_label(label("Cookie name")).fill("crm_id")
    await create.get_by_role("button", name="Create table").click()
    await expect(page.get_by_role("heading", name="CRM", level=1)).to_be_visible()
    table = next(
        t for t in json_of(rest.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources")) if not t["is_optimizely"]
    )
    assert (table["keyfield_locator_type"], table["keyfield_locator_name"]) == ("cookie", "crm_id")
    assert table["import_mode"] == "all_or_nothing"
    assert table["description"] == "Customers of the CRM, by CRM id"

    add = page.get_by_role("form", name="Add an attribute")
    datatype = add.get_by_label(label("Datatype"))
    datetime_format = add.get_by_label(label("Datetime format"))
    wanted = [
        ("Life-time value", "long", None, "Predicted LTV in USD", False),
        ("last_order", "datetime", "yyyy-mm-dd", "", False),
        ("last_seen", "datetime", "yyyy-mm-ddThh:mm:ssZ", "", False),
        ("signed_up", "datetime", "epoch", "", False),
        ("vip", "bool", None, "", True),
        ("score", "double", None, "", False),
        ("segment", "string", None, "Marketing segment", True),
    ]
    for name, kind, fmt, description, public in wanted:
        await add.get_by_label(label("Attribute name")).fill(name)
        await datatype.select_option(kind)
        if fmt:
            await datetime_format.select_option(fmt)
        else:
            await expect(datetime_format).to_be_hidden()
        await add.get_by_label(label("Description")).fill(description)
        await add.get_by_label(re.compile("Content-enabled")).set_checked(public)
        await add.get_by_role("button", name="Add attribute").click()
        await expect(page.get_by_role("row", name=re.compile(f"^{re.escape(name)} "))).to_be_visible()
        await expect(add.get_by_label(label("Attribute name"))).to_be_focused()

    # A second active attribute of the same name: the API's 409, next to the name.
    await add.get_by_label(label("Attribute name")).fill("vip")
    await datatype.select_option("string")
    await add.get_by_role("button", name="Add attribute").click()
    await expect(field_error(page, "Attribute name")).to_contain_text("already exists")

    stored = attributes_of(rest, table["id"])
    assert {n: (a["datatype"], a["format"], a["is_value_public"]) for n, a in stored.items()} == {
        name: (kind, fmt, public) for name, kind, fmt, _, public in wanted
    }
    assert stored["Life-time value"]["description"] == "Predicted LTV in USD"

    await page.get_by_role("link", name="Attributes", exact=True).first.click()
    card = page.get_by_role("region", name="CRM")
    await expect(card).to_contain_text("cookie “crm_id”")
    await expect(card).to_contain_text("all or nothing")
    await expect(card.get_by_role("row", name=re.compile("^last_order datetime \\(yyyy-mm-dd\\)"))).to_be_visible()
    await expect(card.get_by_role("row", name=re.compile("^vip bool"))).to_contain_text("yes")
    await expect(card.get_by_role("link", name="Data Upload")).to_have_attribute(
        "href", f"#/services/{service['id']}/tables/{table['id']}/upload"
    )
    await expect(page.get_by_role("region", name="Start here")).to_have_count(0)
    await page.reload()  # for a picture without the notices of what was just done
    await expect(card.get_by_role("row", name=re.compile("^segment string"))).to_be_visible()
    await console.screenshot("attributes-dashboard")
    rest.close()


async def test_attributes_and_tables_are_edited_archived_and_unarchived(console: Console) -> None:
    token, rest, service = scene(console, "console-attributes-archive")
    table = crm_table(rest, service, {"name": "ltv", "datatype": "long"}, {"name": "tier", "datatype": "string"})
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service['id']}/tables/{table['id']}")

    await page.get_by_role("button", name="Edit ltv").click()
    edit = page.get_by_role("form", name="Edit ltv")
    await expect(edit.get_by_label(label("Description"))).to_be_focused()
    await edit.get_by_label(label("Description")).fill("Predicted LTV in USD")
    await edit.get_by_label(re.compile("Content-enabled")).check()
    await edit.get_by_role("button", name="Save attribute").click()
    attributes = page.get_by_role("region", name="Attributes")
    await expect(attributes.get_by_role("row", name=re.compile("^ltv "))).to_contain_text("Predicted LTV in USD")
    ltv = attributes_of(rest, table["id"])["ltv"]
    assert (ltv["description"], ltv["is_value_public"]) == ("Predicted LTV in USD", True)

    await attributes.get_by_role("button", name="Archive tier").click()
    await page.get_by_role("dialog").get_by_role("button", name="Archive").click()
    archived_row = attributes.locator("tr.archived", has_text="tier")
    await expect(archived_row).to_be_visible()
    assert attributes_of(rest, table["id"])["tier"]["archived"] is True

    # Another active "tier" meanwhile: unarchiving the old one is refused, and the screen says why.
    tier = {"name": "tier", "datatype": "long"}
    new_tier = json_of(rest.post(f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes", json=tier), 201)
    await page.reload()
    await attributes.get_by_role("button", name="Unarchive tier").click()
    await expect(attributes.get_by_role("alert").filter(has_text="already has an active attribute")).to_be_visible()
    assert rest.delete(f"{V1}/dcp_datasource_attributes/{new_tier['id']}").status_code == 204
    await page.reload()
    await attributes.locator("tr.archived", has_text="string").get_by_role("button", name="Unarchive tier").click()
    await expect(attributes.locator("tr:not(.archived)", has_text="string")).to_be_visible()

    await page.get_by_role("button", name="Edit table").click()
    await page.get_by_label(label("Import mode")).select_option("all_or_nothing")
    await page.get_by_role("button", name="Save table").click()
    settings = page.get_by_role("region", name="Table settings")
    await expect(settings.get_by_role("button", name="Edit table")).to_be_visible()
    await expect(settings.locator("dl")).to_contain_text("all or nothing")
    assert json_of(rest.get(f"{V1}/dcp_datasources/{table['id']}"))["import_mode"] == "all_or_nothing"

    await page.get_by_role("button", name="Archive table").click()
    await page.get_by_role("dialog").get_by_role("button", name="Archive").click()
    await expect(page.get_by_text("This table is archived")).to_be_visible()
    assert json_of(rest.get(f"{V1}/dcp_datasources/{table['id']}"))["archived"] is True

    await page.get_by_role("link", name="Attributes", exact=True).first.click()
    shelf = page.get_by_role("region", name="Archived tables")
    await expect(shelf.get_by_role("row", name=re.compile("^CRM"))).to_have_class("archived")
    await expect(page.get_by_role("region", name="Start here")).to_be_visible()
    await shelf.get_by_role("button", name="Unarchive CRM").click()
    await expect(page.get_by_role("region", name="CRM")).to_be_visible()
    await expect(page.get_by_role("region", name="Archived tables")).to_have_count(0)
    assert json_of(rest.get(f"{V1}/dcp_datasources/{table['id']}"))["archived"] is False
    rest.close()


async def test_the_dashboard_fits_a_phone(phone: Console) -> None:
    token, rest, service = scene(phone, "console-attributes-phone")
    crm_table(
        rest,
        service,
        {"name": "Life-time value", "datatype": "long", "description": "Predicted LTV in USD"},
        {"name": "last_order", "datatype": "datetime", "format": "yyyy-mm-ddThh:mm:ssZ"},
    )
    await phone.sign_in(token)
    await phone.go(f"/services/{service['id']}/tables")
    card = phone.page.get_by_role("region", name="CRM")
    await expect(card).to_contain_text("last_order")
    await expect(card.get_by_role("link", name="Data Upload")).to_be_visible()
    assert await phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    rest.close()
