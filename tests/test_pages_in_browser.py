"""Pages a person sees, in headless Chromium at phone and desktop widths: the button is there
and works, the text is right (Chinese rendered with real fonts), screenshots are saved."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from newsletter.db import session_scope
from newsletter.sessions.service import import_records
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.webapp import Live, live, write_record

__all__ = ["live"]  # the fixture (the browser comes from conftest)

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_rsvp_button_records_the_answer(live: Live, browser: Any, width: str) -> None:
    rsvp, _ = live.links(0)
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(live.settings.base_url + rsvp)
        assert page.get_by_text("你选择了：").is_visible()
        page.screenshot(path=str(screenshot_path(f"rsvp-{width}")), full_page=True)
        assert live.rsvps() == []  # opening and rendering the page recorded nothing
        button = page.get_by_role("button", name="确认答复")
        box = button.bounding_box()
        assert box is not None and box["width"] <= WIDTHS[width]["width"]
        button.click()
        page.wait_for_load_state()
        assert page.get_by_text("已记录你的答复").is_visible()
        page.screenshot(path=str(screenshot_path(f"rsvp-done-{width}")), full_page=True)
    finally:
        page.close()
    assert live.rsvps() == [(live.people[0], "yes", False)]


def test_unsubscribe_page_and_error_page(live: Live, browser: Any) -> None:
    _, unsubscribe = live.links(1)
    page = browser.new_page(viewport=PHONE)
    try:
        page.goto(live.settings.base_url + unsubscribe)
        page.screenshot(path=str(screenshot_path("unsubscribe-phone")), full_page=True)
        page.get_by_role("button", name="确认退订").click()
        page.wait_for_load_state()
        assert page.get_by_text("你已退订").is_visible()
        page.screenshot(path=str(screenshot_path("unsubscribed-phone")), full_page=True)
        response = page.goto(live.settings.base_url + "/rsvp/tampered-token?answer=yes")
        assert response is not None and response.status == 400
        assert page.get_by_text("这个链接无效").is_visible()
        page.screenshot(path=str(screenshot_path("error-phone")), full_page=True)
    finally:
        page.close()


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_invitation_renders_in_chromium(
    browser: Any, width: str, tmp_path: Path, configure: Any
) -> None:
    """The invitation HTML itself (no. 61, 57 archive rows) at both widths: the RSVP buttons
    and the archive are visible and nothing overflows the phone's width."""
    import subprocess
    import sys

    configure()
    newsletter = str(Path(sys.executable).parent / "newsletter")
    subprocess.run(
        [
            newsletter,
            "sessions",
            "import",
            str(Path(__file__).parent.parent / "examples" / "sessions"),
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "invitation.html"
    subprocess.run(
        [newsletter, "preview", "61", "--out", str(out)], check=True, capture_output=True
    )
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(out.as_uri())
        for label in ("是", "可能", "否"):
            assert page.get_by_role("link", name=label, exact=True).is_visible()
        assert page.get_by_text("沙龙回顾").is_visible()
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= WIDTHS[width]["width"]
        page.screenshot(path=str(screenshot_path(f"invitation-61-{width}")), full_page=True)
    finally:
        page.close()


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_full_room_puts_the_second_yes_on_the_waitlist_page(
    live: Live, browser: Any, width: str
) -> None:
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        for person in (0, 1):  # session 95 has one seat
            rsvp, _ = live.links(person)
            page.goto(live.settings.base_url + rsvp)
            page.get_by_role("button", name="确认答复").click()
            page.wait_for_load_state()
        assert page.get_by_text("名额已满，你在候补名单第").is_visible()
        assert page.locator(".banner strong").inner_text() == "1"
        page.screenshot(path=str(screenshot_path(f"rsvp-waitlist-{width}")), full_page=True)
    finally:
        page.close()
    assert sorted(live.rsvps()) == [(live.people[0], "yes", False), (live.people[1], "yes", True)]


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_after_the_deadline_the_page_says_closed_and_offers_no_button(
    live: Live, browser: Any, width: str, tmp_path: Path
) -> None:
    with session_scope(live.settings.database_url) as db:
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(hours=-1))],
            timezone="Asia/Shanghai",
        )
    rsvp, _ = live.links(0)
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(live.settings.base_url + rsvp)
        assert page.get_by_text("报名已截止，答复不能再修改。").is_visible()
        assert page.get_by_role("button", name="确认答复").count() == 0
        page.screenshot(path=str(screenshot_path(f"rsvp-closed-{width}")), full_page=True)
    finally:
        page.close()
    assert live.rsvps() == []
