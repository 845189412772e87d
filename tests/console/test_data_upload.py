"""The Data Upload screen of a table: keys and paths for S3 clients, the template, checking a file,
uploading one from the browser, and the live upload history with its row errors."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Download, FilePayload, Locator, Page, expect

from tests.console.harness import V1, Console, Platform, json_of

ONE_BAD_ROW = (
    b'customerId,Life-time value,Favourite category\ncrm-42,10,"Height: 6\'1"""\ncrm-43,ten,shoes\ncrm-44,,hats\n'
)
# Long enough to import for many seconds, so the history is seen while it runs.
LIVE_ROWS = 1_000_000
# Fewer than half of LIVE_ROWS read so far: at least half of the import is still to come; and below, how
# much of the file has been read.
EARLY_ROWS_SO_FAR = re.compile(
    r"^([1-9]\d{0,2}|[1-9]\d?,\d{3}|[1-4]\d{2},\d{3}) total · .* so far\s*\d+\.\d of \d+\.\d MB read$"
)
# A minute is far longer than any file here takes; expect() returns as soon as the screen shows it.
IMPORT_WAIT_MS = 60_000


@dataclass
class Scene:
    token: str
    rest: httpx.Client
    service: dict[str, Any]
    table: dict[str, Any]

    @property
    def route(self) -> str:
        return f"/services/{self.service['id']}/tables/{self.table['id']}/upload"

    def put_file(self, name: str, body: bytes) -> None:
        """Puts a file in the table's import path the way any S3 client would, with a presigned URL."""
        uploads = f"{V1}/dcp_datasources/{self.table['id']}/uploads"
        ticket = json_of(self.rest.post(uploads, json={"file_name": name}), 201)
        assert httpx.put(ticket["url"], content=body, timeout=60).status_code == 200
        # The screen shows what the history holds when it opens: wait until the importer has listed the file.
        for _ in range(600):
            if any(u["s3_key"] == ticket["s3_key"] for u in json_of(self.rest.get(uploads))):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} was never listed in the upload history")

    def profile(self, customer_id: str) -> httpx.Response:
        return self.rest.get(f"/api/customer_profile/{self.service['id']}/{self.table['id']}/{customer_id}")


def make_scene(platform: Platform, account: str) -> Scene:
    token = platform.new_account(account)
    rest = platform.rest(token)
    service = json_of(rest.post(f"{V1}/dcp_services", json={"name": "Shop"}), 201)
    table = json_of(
        rest.post(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            json={"name": "Warehouse", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        ),
        201,
    )
    for name, datatype in (("Life-time value", "long"), ("Favourite category", "string")):
        path = f"{V1}/dcp_datasources/{table['id']}/dcp_datasource_attributes"
        json_of(rest.post(path, json={"name": name, "datatype": datatype}), 201)
    table = json_of(rest.get(f"{V1}/dcp_datasources/{table['id']}"))
    return Scene(token, rest, service, table)


Scenes = Callable[[str], Scene]


@pytest.fixture
def scenes(console_platform: Platform) -> Iterator[Scenes]:
    """Makes scenes, each in an account of its own (an account may hold one active DCP service)."""
    made: list[Scene] = []

    def make(account: str) -> Scene:
        made.append(make_scene(console_platform, account))
        return made[-1]

    yield make
    for scene in made:
        scene.rest.close()


def big_csv(rows: int, prefix: str = "big") -> bytes:
    return ("customerId,Life-time value\n" + "".join(f"{prefix}-{n},{n}\n" for n in range(rows))).encode()


def csv_file(name: str, body: bytes) -> FilePayload:
    return {"name": name, "mimeType": "text/csv", "buffer": body}


async def downloaded_text(download: Download) -> str:
    return await asyncio.to_thread(Path(await download.path()).read_text)


async def open_screen(console: Console, scene: Scene) -> Page:
    await console.sign_in(scene.token)
    await console.go(scene.route)
    await expect(console.page.get_by_role("heading", name="Data Upload: Warehouse")).to_be_visible()
    return console.page


def history_row(page: Page, file_name: str) -> Locator:
    return page.locator("table.upload-history tbody tr", has=page.get_by_text(file_name, exact=True))


async def test_the_keys_path_and_command_are_shown_and_the_secret_only_when_asked(
    console: Console, scenes: Scenes
) -> None:
    scene = scenes("upload-keys")
    await console.sign_in(scene.token)
    table_route = f"/services/{scene.service['id']}/tables/{scene.table['id']}"
    # The way in: the table's page on the Attributes dashboard.
    await console.go(table_route)
    page = console.page
    await page.get_by_role("link", name="Data Upload").click()
    await expect(page.get_by_role("heading", name="Data Upload: Warehouse")).to_be_visible()
    table, endpoint = scene.table, console.platform.s3_endpoint
    connect = page.get_by_role("region", name="Connect an S3 client")
    await expect(connect.get_by_text(table["aws_access_key"], exact=True).first).to_be_visible()
    import_path = f"/optimizely-import/{table['s3_path']}"
    assert table["s3_path"] == f"dcp/{scene.service['id']}/{table['id']}"
    await expect(connect.get_by_text(import_path, exact=True).first).to_be_visible()
    await expect(connect.get_by_text(endpoint, exact=True)).to_be_visible()
    command = page.get_by_label("AWS CLI command", exact=True)
    await expect(command).to_contain_text(
        f"aws s3 cp customers.csv s3://optimizely-import/{table['s3_path']}/customers.csv --endpoint-url {endpoint}"
    )
    await expect(command).to_contain_text(f"AWS_ACCESS_KEY_ID={table['aws_access_key']}")
    cyberduck = page.get_by_label("Cyberduck bookmark")
    host, port = endpoint.removeprefix("http://").split(":")
    await expect(cyberduck).to_contain_text(host)
    await expect(cyberduck).to_contain_text(port)
    await expect(cyberduck).to_contain_text(import_path)
    for copy in ("AWS access key", "AWS secret key", "S3 import path", "AWS CLI command"):
        await expect(page.get_by_role("button", name=f"Copy {copy}")).to_be_visible()

    # The secret is nowhere on the page until asked for, and gone again on Hide.
    secret = table["aws_secret_key"]
    assert secret not in await page.content()
    await page.get_by_role("button", name="Show the AWS secret key").click()
    await expect(connect.get_by_text(secret, exact=True)).to_be_visible()
    await expect(command).to_contain_text(f"AWS_SECRET_ACCESS_KEY={secret}")
    await console.screenshot("data-upload")
    await page.get_by_role("button", name="Hide the AWS secret key").click()
    await expect(connect.get_by_text(secret)).to_have_count(0)

    await page.get_by_role("link", name="Warehouse").click()
    await expect(page.get_by_role("heading", name="Data Upload: Warehouse")).to_have_count(0)
    assert page.url.endswith("#" + table_route)


async def test_the_template_downloads_with_the_tables_header(console: Console, scenes: Scenes) -> None:
    scene = scenes("upload-template")
    page = await open_screen(console, scene)
    async with page.expect_download() as arrival:
        await page.get_by_role("button", name="Download template CSV").click()
    template = await arrival.value
    assert template.suggested_filename == "Warehouse-template.csv"
    assert (await downloaded_text(template)).splitlines()[0] == "customerId,Life-time value,Favourite category"


async def test_a_checked_file_shows_its_row_errors_and_stores_nothing(console: Console, scenes: Scenes) -> None:
    scene = scenes("upload-check")
    page = await open_screen(console, scene)
    checker = page.get_by_role("form", name="Check a file")
    await checker.get_by_role("button", name="Check file").click()
    await expect(checker.get_by_text("Choose a file.")).to_be_visible()

    await page.get_by_label("File to check").set_input_files(csv_file("customers.csv", ONE_BAD_ROW))
    await checker.get_by_role("button", name="Check file").click()
    report = page.get_by_role("region", name="Check of customers.csv")
    await expect(report.locator(".badge")).to_have_text("partially_processed")
    await expect(report.locator("dd").nth(0)).to_have_text("3")
    await expect(report.locator("dd").nth(1)).to_have_text("2")
    await expect(report.locator("dd").nth(2)).to_have_text("1")
    problem = report.get_by_role("row").filter(has_text="ten")
    await expect(problem.locator("td")).to_have_text(["3", "Life-time value", "ten", re.compile("integer")])
    await expect(report).to_contain_text("Nothing was stored")

    # A file the import would refuse as a whole says why, at the file level.
    await page.get_by_label("File to check").set_input_files(csv_file("wrong.csv", b"customerId,Shoe size\nc1,9\n"))
    await checker.get_by_role("button", name="Check file").click()
    wrong = page.get_by_role("region", name="Check of wrong.csv")
    await expect(wrong.locator(".badge")).to_have_text("failed")
    await expect(wrong.locator(".file-error")).to_contain_text("Shoe size")

    assert scene.profile("crm-42").status_code == 404
    assert json_of(scene.rest.get(f"{V1}/dcp_datasources/{scene.table['id']}/uploads")) == []
    await expect(page.get_by_text("No upload yet")).to_be_visible()


async def test_a_check_while_another_runs_says_to_wait_for_it(console: Console, scenes: Scenes) -> None:
    scene = scenes("upload-check-busy")
    validate = f"{V1}/dcp_datasources/{scene.table['id']}/validate"
    release = threading.Event()

    def slow_check() -> int:
        # The account's check lasts as long as its body keeps coming.
        def body() -> Iterator[bytes]:
            yield b"customerId\nc1\n"
            release.wait(60)
            yield b"c2\n"

        with console.platform.rest(scene.token) as client:
            return client.post(validate, params={"file_name": "slow.csv"}, content=body(), timeout=90).status_code

    running = asyncio.create_task(asyncio.to_thread(slow_check))
    try:
        for _ in range(300):
            if scene.rest.post(validate, content=b"customerId\nc1\n").status_code == 429:
                break
            await asyncio.sleep(0.1)
        page = await open_screen(console, scene)
        await page.get_by_label("File to check").set_input_files(csv_file("customers.csv", ONE_BAD_ROW))
        checker = page.get_by_role("form", name="Check a file")
        await checker.get_by_role("button", name="Check file").click()
        await expect(checker.locator(".form-error")).to_contain_text(
            "Another file of this account is being checked right now; try again once it is done."
        )
    finally:
        release.set()
        assert await running == 200
    await checker.get_by_role("button", name="Check file").click()
    await expect(page.get_by_role("region", name="Check of customers.csv")).to_be_visible()
    await expect(checker.locator(".form-error")).to_be_empty()


async def test_a_file_name_the_platform_refuses_is_shown_at_the_file_input(console: Console, scenes: Scenes) -> None:
    scene = scenes("upload-bad-name")
    page = await open_screen(console, scene)
    uploader = page.get_by_role("form", name="Upload a file")
    await uploader.get_by_role("button", name="Upload", exact=True).click()
    await expect(uploader.get_by_text("Choose a file.")).to_be_visible()
    await page.get_by_label("File to upload").set_input_files(csv_file("c" * 252 + ".csv", ONE_BAD_ROW))
    await uploader.get_by_role("button", name="Upload", exact=True).click()
    file_field = uploader.locator(".field", has=page.get_by_label("File to upload"))
    await expect(file_field.locator(".field-error")).to_have_text("must be at most 255 characters")
    await expect(page.get_by_label("File to upload")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Upload progress")).to_be_hidden()
    assert json_of(scene.rest.get(f"{V1}/dcp_datasources/{scene.table['id']}/uploads")) == []


async def test_a_browser_upload_is_imported_live_and_its_row_errors_are_reported(
    console: Console, scenes: Scenes
) -> None:
    scene = scenes("upload-live")
    # A large file first: the table imports files in order, so the browser's file waits behind it.
    scene.put_file("big.csv", big_csv(LIVE_ROWS))
    page = await open_screen(console, scene)

    big = history_row(page, "big.csv")
    await expect(
        page.locator('tr[data-status="processing"] td.rows', has_text=EARLY_ROWS_SO_FAR), "rows so far while it runs"
    ).to_be_visible(timeout=IMPORT_WAIT_MS)
    await expect(page.get_by_text("Live: refreshed every second")).to_be_visible()

    await page.get_by_label("File to upload").set_input_files(csv_file("customers.csv", ONE_BAD_ROW))
    await page.get_by_role("button", name="Upload", exact=True).click()
    await expect(page.locator(".progress-text")).to_contain_text("100%")
    await expect(page.get_by_role("status").filter(has_text="customers.csv is in the store")).to_be_visible()
    small = history_row(page, "customers.csv")
    await expect(small.locator(".badge")).to_have_text(re.compile("^(pending|processing)$"), timeout=IMPORT_WAIT_MS)

    await expect(big.locator(".badge")).to_have_text("processed", timeout=IMPORT_WAIT_MS)
    await expect(big.locator("td.rows")).to_have_text("1,000,000 total · 1,000,000 ok · 0 failed")
    await expect(small.locator(".badge")).to_have_text("partially_processed", timeout=IMPORT_WAIT_MS)
    await expect(small.locator("td.rows")).to_have_text("3 total · 2 ok · 1 failed")
    await expect(page.get_by_text("Live: refreshed every second")).to_have_count(0)
    await console.screenshot("upload-history")

    await small.get_by_role("button", name="Row errors").click()
    errors = page.get_by_role("region", name="Row errors of customers.csv")
    await expect(errors).to_contain_text("1 failed row, all listed below.")
    await expect(errors.get_by_role("row").filter(has_text="ten").locator("td")).to_have_text(
        ["3", "Life-time value", "ten", re.compile("integer")]
    )
    await console.screenshot("upload-errors")
    async with page.expect_download() as arrival:
        await errors.get_by_role("button", name="Download error report (CSV)").click()
    report = await arrival.value
    lines = (await downloaded_text(report)).splitlines()
    assert lines[0] == "row,column,value,message"
    assert lines[1].startswith("3,Life-time value,ten,")

    # What the screen reported is what the platform stored.
    assert json_of(scene.profile("crm-42"))["data"] == {"Life-time value": 10, "Favourite category": "Height: 6'1\""}
    assert scene.profile("crm-43").status_code == 404
    assert json_of(scene.profile("big-7"))["data"] == {"Life-time value": 7}


async def test_a_running_import_is_cancelled_after_asking(console: Console, scenes: Scenes) -> None:
    scene = scenes("upload-cancel")
    scene.put_file("huge.csv", big_csv(LIVE_ROWS, prefix="huge"))
    page = await open_screen(console, scene)
    huge = history_row(page, "huge.csv")
    await expect(huge.locator(".badge")).to_have_text("processing", timeout=IMPORT_WAIT_MS)

    await huge.get_by_role("button", name="Cancel import").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Stop importing huge.csv?")
    await dialog.get_by_role("button", name="Cancel", exact=True).click()
    await expect(dialog).to_have_count(0)
    await huge.get_by_role("button", name="Cancel import").click()
    await page.get_by_role("dialog").get_by_role("button", name="Stop the import").click()

    await expect(huge.locator(".badge")).to_have_text("failed", timeout=IMPORT_WAIT_MS)
    await expect(huge.locator(".file-error")).to_contain_text("cancelled on request")
    await expect(huge.get_by_role("button", name="Cancel import")).to_have_count(0)
    uploads = json_of(scene.rest.get(f"{V1}/dcp_datasources/{scene.table['id']}/uploads"))
    assert [(u["file_name"], u["status"]) for u in uploads] == [("huge.csv", "failed")]
    assert scene.profile("huge-1").status_code == 404


async def test_the_upload_screen_fits_a_phone(phone: Console, scenes: Scenes) -> None:
    scene = scenes("upload-phone")
    scene.put_file("customers.csv", ONE_BAD_ROW)
    page = await open_screen(phone, scene)
    await expect(history_row(page, "customers.csv").locator(".badge")).to_have_text(
        "partially_processed", timeout=IMPORT_WAIT_MS
    )
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
