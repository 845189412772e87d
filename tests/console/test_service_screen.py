"""The home screen (DCP services) and a DCP service's settings, driven in a real browser."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Locator, Page, expect

from tests.console.harness import V1, Console, json_of


def label(text: str) -> re.Pattern[str]:
    """A field's label exactly, whether or not it is marked required (a trailing " *")."""
    return re.compile(rf"^{re.escape(text)}( \*)?$")


def field_error(page: Page, text: str) -> Locator:
    """The message shown under the input labelled `text`."""
    return page.locator(".field", has=page.get_by_label(label(text))).locator(".field-error")


def new_service(console: Console, account: str, name: str = "Web shop") -> tuple[str, dict[str, Any]]:
    token = console.platform.new_account(account)
    with console.platform.rest(token) as rest:
        return token, json_of(rest.post(f"{V1}/dcp_services", json={"name": name}), 201)


async def test_the_first_service_is_created_from_the_empty_home_and_the_limit_is_explained(console: Console) -> None:
    token = console.platform.new_account("console-home")
    rest = console.platform.rest(token)
    page = console.page
    await console.sign_in(token)
    await expect(page.get_by_role("heading", name="Create your DCP service first")).to_be_visible()

    await page.get_by_label(label("Name")).fill("Web shop")
    await page.get_by_label(label("Name")).press("Enter")
    await expect(page.get_by_role("heading", name="Web shop")).to_be_visible()
    [created] = json_of(rest.get(f"{V1}/dcp_services"))
    assert created["name"] == "Web shop"
    await expect(page.get_by_role("region", name="Details")).to_contain_text(created["s3_path"])

    # One active DCP service per account: a second is refused, and the screen says why and where to go.
    await console.go("/")
    row = page.get_by_role("row", name=re.compile("Web shop"))
    await expect(row.get_by_role("link", name="Attributes of Web shop")).to_have_attribute(
        "href", f"#/services/{created['id']}/tables"
    )
    await page.get_by_label(label("Name")).fill("Second shop")
    await page.get_by_role("button", name="Create DCP service").click()
    form_error = page.get_by_role("form", name="Create a DCP service").locator(".form-error")
    await expect(form_error).to_contain_text("SERVICE_LIMIT_REACHED")
    await expect(page.get_by_text("Archive one in its settings before creating another")).to_be_visible()
    await expect(page.get_by_role("link", name="Settings of “Web shop”")).to_be_visible()
    assert len(json_of(rest.get(f"{V1}/dcp_services"))) == 1

    # Once the first is archived, the second can be made, and the list marks the archived one.
    assert rest.delete(f"{V1}/dcp_services/{created['id']}").status_code == 204
    await page.reload()
    await page.get_by_label(label("Name")).fill("Second shop")
    await page.get_by_role("button", name="Create DCP service").click()
    await expect(page.get_by_role("heading", name="Second shop")).to_be_visible()
    await console.go("/")
    await page.reload()  # for a picture without the notices of what was just done
    await expect(page.get_by_role("row", name=re.compile("Web shop"))).to_contain_text("archived")
    await expect(page.get_by_role("row", name=re.compile("Second shop"))).to_contain_text("active")
    await expect(page.get_by_role("row", name=re.compile("Web shop"))).to_have_class("archived")
    await console.screenshot("services")
    rest.close()


async def test_rename_and_guards_are_saved_and_a_bad_guard_is_refused_next_to_its_field(console: Console) -> None:
    token, service = new_service(console, "console-guards")
    rest = console.platform.rest(token)
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service['id']}")

    await page.get_by_role("region", name="Name").get_by_label(label("Name")).fill("Web shop EU")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("heading", name="Web shop EU")).to_be_visible()
    assert json_of(rest.get(f"{V1}/dcp_services/{service['id']}"))["name"] == "Web shop EU"

    guards = page.get_by_role("region", name="Guards")
    await guards.get_by_label(re.compile("PII guard")).uncheck()
    await guards.get_by_label(label("Blocked customer ids")).fill('""\nnull\nguest')
    await guards.get_by_label(label("Most visitors per customer id")).fill("0")
    await guards.get_by_role("button", name="Save guards").click()
    await expect(field_error(page, "Most visitors per customer id")).to_contain_text("must be between 1 and")
    await expect(guards.get_by_label(label("Most visitors per customer id"))).to_have_attribute("aria-invalid", "true")
    unchanged = json_of(rest.get(f"{V1}/dcp_services/{service['id']}"))
    assert unchanged["pii_guard"] is True
    assert unchanged["alias_max_users_per_customer_id"] == 100

    await guards.get_by_label(label("Most visitors per customer id")).fill("5")
    await guards.get_by_role("button", name="Save guards").click()
    await expect(page.get_by_text("Guards saved.")).to_be_visible()
    saved = json_of(rest.get(f"{V1}/dcp_services/{service['id']}"))
    assert saved["pii_guard"] is False
    assert saved["alias_blocked_customer_ids"] == ["", "null", "guest"]
    assert saved["alias_max_users_per_customer_id"] == 5
    await page.reload()
    guards = page.get_by_role("region", name="Guards")
    await expect(guards.get_by_label(label("Blocked customer ids"))).to_have_value('""\nnull\nguest')
    await expect(guards.get_by_label(re.compile("PII guard"))).not_to_be_checked()
    rest.close()


async def test_projects_are_created_linked_and_unlinked_and_archiving_asks_first(console: Console) -> None:
    token, service = new_service(console, "console-projects")
    rest = console.platform.rest(token)
    mobile = json_of(rest.post(f"{V1}/projects", json={"project_name": "Mobile app"}), 201)
    page = console.page
    await console.sign_in(token)
    await console.go(f"/services/{service['id']}")
    projects = page.get_by_role("region", name="Projects")
    await expect(projects).to_contain_text("No project is linked to this DCP service yet")

    await projects.get_by_label(label("New project name")).fill("Web")
    await projects.get_by_role("button", name="Create project").click()
    await expect(projects.get_by_role("row", name=re.compile("Web"))).to_be_visible()
    linked = {p["project_name"]: p["dcp_service_id"] for p in json_of(rest.get(f"{V1}/projects"))}
    assert linked == {"Mobile app": None, "Web": service["id"]}

    await projects.get_by_label(label("Existing project")).select_option(label=f"Mobile app (project {mobile['id']})")
    await projects.get_by_role("button", name="Link project").click()
    await expect(projects.get_by_role("row", name=re.compile("Mobile app"))).to_be_visible()
    assert json_of(rest.get(f"{V1}/projects/{mobile['id']}"))["dcp_service_id"] == service["id"]
    await page.reload()  # for a picture without the notices of what was just done
    await expect(projects.get_by_role("row", name=re.compile("Mobile app"))).to_be_visible()
    await console.screenshot("service-settings")

    await projects.get_by_role("button", name="Unlink Mobile app").click()
    await page.get_by_role("dialog").get_by_role("button", name="Unlink").click()
    await expect(projects.get_by_role("row", name=re.compile("Mobile app"))).to_have_count(0)
    assert json_of(rest.get(f"{V1}/projects/{mobile['id']}"))["dcp_service_id"] is None

    # Archiving asks first; cancelling changes nothing.
    await page.get_by_role("button", name="Archive DCP service").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert json_of(rest.get(f"{V1}/dcp_services/{service['id']}"))["archived"] is False
    await page.get_by_role("button", name="Archive DCP service").click()
    await page.get_by_role("dialog").get_by_role("button", name="Archive").click()
    await expect(page.get_by_text("This DCP service is archived")).to_be_visible()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("archived")
    await expect(page.get_by_role("button", name="Rename")).to_have_count(0)
    assert json_of(rest.get(f"{V1}/dcp_services/{service['id']}"))["archived"] is True
    rest.close()
