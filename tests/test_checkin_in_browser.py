"""The door page in headless Chromium: an organizer on a phone checks in one person by code
and one by name, adds a walk-in, and the counts change without a reload; a check-in from
another door (the CLI) shows up by the poll; the camera button appears only where the browser
has BarcodeDetector, and a scanned code checks the person in. Screenshots at phone and
desktop widths go to test-artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from newsletter.cli import app as cli_app
from newsletter.rsvp.checkin import make_code
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.servers import free_port
from tests.test_admin import TOKEN
from tests.test_checkin import answer
from tests.webapp import Live, serve_live

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}

# A stand-in camera and QR reader: a canvas stream for getUserMedia, and a BarcodeDetector
# that "reads" the code the test puts in window.__qr.
FAKE_CAMERA = """
window.BarcodeDetector = class {
  constructor(options) { this.options = options; }
  detect() { return Promise.resolve(window.__qr ? [{rawValue: window.__qr}] : []); }
};
navigator.mediaDevices.getUserMedia = function () {
  var canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 64;
  canvas.getContext("2d").fillRect(0, 0, 64, 64);
  return Promise.resolve(canvas.captureStream(5));
};
"""


@pytest.fixture
def door_app(configure: Configure, tmp_path: Path) -> Iterator[Live]:
    """The app with session no. 95 (no seat limit), four people, three of them coming."""
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}")
    with serve_live(settings, tmp_path, people=4, capacity=None) as built:
        for person in range(3):
            answer(built, person, "yes")
        yield built


def counts(page: Any) -> dict[str, str]:
    names = ("confirmed", "present", "walk_ins", "not_yet")
    return {name: page.locator(f'[data-count="{name}"]').inner_text() for name in names}


def wait_for_count(page: Any, name: str, value: int) -> None:
    from playwright.sync_api import expect

    # The page's policy forbids eval: wait on the element, not with wait_for_function.
    expect(page.locator(f'[data-count="{name}"]')).to_have_text(str(value), timeout=10_000)


def open_door(browser: Any, live: Live, viewport: dict[str, int], init: str = "") -> Any:
    context = browser.new_context(viewport=viewport)
    if init:
        context.add_init_script(init)
    page = context.new_page()
    page.goto(live.settings.base_url + "/admin/sessions/95/checkin")
    assert page.url.endswith("/admin/login")
    page.get_by_label("管理令牌").fill(TOKEN)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url("**/admin")
    page.goto(live.settings.base_url + "/admin/sessions/95/checkin")
    assert page.get_by_role("heading", name="签到 · 第 95 期").is_visible()
    return page


def no_horizontal_overflow(page: Any, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"page is {scroll_width}px wide at {width}px"


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_check_in_by_code_and_by_name_and_a_walk_in(
    door_app: Live, browser: Any, width: str
) -> None:
    viewport = WIDTHS[width]
    page = open_door(browser, door_app, viewport)
    try:
        assert counts(page) == {"confirmed": "3", "present": "0", "walk_ins": "0", "not_yet": "3"}
        # No camera reader in this browser: no scan button, the code is typed.
        has_detector = page.evaluate("'BarcodeDetector' in window")
        assert page.get_by_role("button", name="扫描二维码").is_visible() == has_detector
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"checkin-{width}")), full_page=True)
        page.evaluate("window.__same_page = true")  # gone if the page reloads

        code = make_code(door_app.settings.secret_keys, 95, door_app.people[0])
        page.get_by_label("签到码").fill(code.lower())  # typed as it comes
        page.get_by_role("button", name="签到", exact=True).click()
        page.get_by_text("已签到：访客0").wait_for()
        wait_for_count(page, "present", 1)
        assert counts(page)["not_yet"] == "2"
        assert page.get_by_label("签到码").input_value() == ""

        page.get_by_label("签到码").fill(code[:-1] + ("A" if code[-1] != "A" else "B"))
        page.get_by_role("button", name="签到", exact=True).click()
        page.get_by_text("签到码无效").wait_for()
        assert counts(page)["present"] == "1"

        page.get_by_role("button", name="签到 访客1").click()
        page.get_by_text("已签到：访客1").wait_for()
        wait_for_count(page, "present", 2)
        assert page.locator(f'li[data-id="{door_app.people[1]}"]').get_attribute("class") == "in"

        page.get_by_label("姓名", exact=True).fill("路过的朋友")
        page.get_by_role("button", name="添加").click()
        page.get_by_text("已添加一位现场报名。").wait_for()
        wait_for_count(page, "walk_ins", 1)
        assert page.evaluate("window.__same_page") is True
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"checkin-after-{width}")), full_page=True)

        # Another door checks someone in: this page learns it from its poll.
        third = make_code(door_app.settings.secret_keys, 95, door_app.people[2])
        assert CliRunner().invoke(cli_app, ["rsvp", "checkin", "95", third]).exit_code == 0
        wait_for_count(page, "present", 3)
        assert counts(page)["not_yet"] == "0"

        # The search by name (a plain GET): one person, with their state.
        page.get_by_label("按姓名搜索").fill("访客1")
        page.get_by_role("button", name="搜索").click()
        page.get_by_role("heading", name="“访客1”的搜索结果（1）").wait_for()
        assert page.get_by_role("button", name="撤销 访客1").is_visible()
    finally:
        page.context.close()


def test_the_camera_scans_a_code_where_the_browser_can(door_app: Live, browser: Any) -> None:
    page = open_door(browser, door_app, PHONE, init=FAKE_CAMERA)
    try:
        scan = page.get_by_role("button", name="扫描二维码")
        assert scan.is_visible()
        page.evaluate(
            f"window.__qr = {make_code(door_app.settings.secret_keys, 95, door_app.people[2])!r}"
        )
        scan.click()
        page.get_by_text("已签到：访客2").wait_for()
        wait_for_count(page, "present", 1)
        page.screenshot(path=str(screenshot_path("checkin-scanned-phone")), full_page=True)
    finally:
        page.context.close()


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_the_rsvp_page_shows_the_qr_code(door_app: Live, browser: Any, width: str) -> None:
    viewport = WIDTHS[width]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        rsvp, _ = door_app.links(0)
        page.goto(door_app.settings.base_url + rsvp.split("?")[0])
        code = make_code(door_app.settings.secret_keys, 95, door_app.people[0])
        image = page.get_by_role("img", name=f"签到二维码 {code}")
        assert image.is_visible()
        assert page.evaluate("document.querySelector('.checkin img').naturalWidth") > 100
        box = image.bounding_box()
        assert box is not None and 150 <= box["width"] <= viewport["width"]
        assert page.get_by_text(code, exact=True).is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"rsvp-checkin-code-{width}")), full_page=True)
    finally:
        context.close()
