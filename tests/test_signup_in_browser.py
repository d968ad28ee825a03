"""Signing up in headless Chromium at phone and desktop width, against the live app and a real
SMTP relay: one confirmation mail, the button, the welcome naming the next session, the next
campaign; a pending person skipped; a second sign-up sends no second welcome; the README's
snippet on another page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.sending import send_batch
from newsletter.db import session_scope
from newsletter.web import subscribe
from subscribers import repo
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import ROOT, Configure
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_signup import confirm_path, kinds_of, messages, person, text_of
from tests.webapp import Live, serve_live
from tests.worker import wait_for_worker

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


@pytest.fixture
def relayed(
    configure: Configure, tmp_path: Path, start_smtp: Callable[..., SmtpServer]
) -> Iterator[tuple[Live, SmtpServer]]:
    """The live app (session no. 95 ahead, one subscriber) mailing through a real relay."""
    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", mail_url=f"smtp://127.0.0.1:{relay.port}"
    )
    subscribe.throttle.clear()
    with serve_live(settings, tmp_path, people=1) as built:
        with session_scope(settings.database_url) as db:
            repo.ensure_tags(db, ["机器学习", "nlp"])
        yield built, relay
    subscribe.throttle.clear()


def fits(page: Any, width: str) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]["width"]


def sign_up_in(page: Any, live: Live, name: str, address: str) -> None:
    page.goto(live.settings.base_url + "/subscribe")
    page.get_by_label("称呼（可选）").fill(name)
    page.get_by_label("邮箱地址").fill(address)
    page.get_by_label("nlp").check()
    page.get_by_role("button", name="订阅").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="请查收确认邮件").is_visible()


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_sign_up_confirm_welcome_and_the_next_campaign(
    relayed: tuple[Live, SmtpServer], browser: Any, width: str
) -> None:
    live, relay = relayed
    url = live.settings.database_url
    address, waiting = f"join-{width}@example.org", f"never-{width}@example.org"
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(live.settings.base_url + "/subscribe")
        assert page.get_by_role("button", name="订阅").is_visible()
        fits(page, width)
        page.screenshot(path=str(screenshot_path(f"subscribe-{width}")), full_page=True)
        sign_up_in(page, live, "新朋友", address)
        fits(page, width)
        page.screenshot(path=str(screenshot_path(f"subscribe-sent-{width}")), full_page=True)
        sign_up_in(page, live, "", waiting)  # never confirms
        wait_for_worker()
        confirmations = messages(relay, address)
        assert len(confirmations) == 1
        path = confirm_path(confirmations[0])

        page.goto(live.settings.base_url + path)
        button = page.get_by_role("button", name="确认订阅")
        assert button.is_visible()
        fits(page, width)
        page.screenshot(path=str(screenshot_path(f"subscribe-confirm-{width}")), full_page=True)
        joined = person(url, address)
        assert joined is not None and joined.status == "pending"  # opening changed nothing
        button.click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", name="订阅成功").is_visible()
        page.screenshot(path=str(screenshot_path(f"subscribe-done-{width}")), full_page=True)
        wait_for_worker()
        joined = person(url, address)
        assert joined is not None and joined.status == "active"
        assert [tag.name for tag in joined.tags] == ["nlp"]
        mails = messages(relay, address)
        assert len(mails) == 2 and "欢迎订阅" in str(mails[1]["Subject"])
        assert "第 95 期" in text_of(mails[1])

        sign_up_in(page, live, "新朋友", address)  # again, while active
        page.goto(live.settings.base_url + path)  # and the old link again
        assert page.get_by_text("你已经确认过订阅").is_visible()
        wait_for_worker()
        assert len(messages(relay, address)) == 2
        assert kinds_of(url, joined.id) == ["confirm", "welcome"]
    finally:
        page.close()

    with session_scope(url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
        campaigns.start_campaign(db, campaign_id)
    send_batch(live.settings, campaign_id)
    invited = messages(relay, address)[2:]
    assert len(invited) == 1 and "第 95 期" in str(invited[0]["Subject"])
    assert len(messages(relay, waiting)) == 1  # its confirmation only: pending is skipped


def readme_snippet() -> str:
    """The sign-up form for other sites, as the README documents it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"```html\n(<form method=\"post\" action=\"\{BASE_URL\}/subscribe\">.*?</form>)\n```",
        readme,
        re.S,
    )
    assert found, "the README's sign-up snippet is missing"
    return found.group(1)


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_the_readme_snippet_on_another_page_signs_up_after_one_more_press(
    relayed: tuple[Live, SmtpServer], browser: Any, width: str, tmp_path: Path
) -> None:
    live, relay = relayed
    other_site = tmp_path / "club-site.html"
    other_site.write_text(
        "<!doctype html><meta charset=utf-8><title>俱乐部</title>"
        + readme_snippet().replace("{BASE_URL}", live.settings.base_url),
        encoding="utf-8",
    )
    address = f"snippet-{width}@example.org"
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(other_site.as_uri())
        page.locator("input[name=email]").fill(address)
        page.locator("input[name=name]").fill("外站访客")
        page.locator("button[type=submit]").click()
        page.wait_for_load_state()
        assert page.get_by_text("请核对下面的信息").is_visible()
        assert person(live.settings.database_url, address) is None
        fits(page, width)
        page.screenshot(path=str(screenshot_path(f"subscribe-check-{width}")), full_page=True)
        page.get_by_role("button", name="订阅").click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", name="请查收确认邮件").is_visible()
    finally:
        page.close()
    wait_for_worker()
    assert len(messages(relay, address)) == 1


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_a_bad_or_expired_confirm_link_shows_a_clear_page(
    relayed: tuple[Live, SmtpServer], browser: Any, width: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from itsdangerous.timed import TimestampSigner

    from newsletter.tokens import Purpose, sign

    live, _ = relayed
    signed_at = int(time.time()) - (live.settings.pending_days + 1) * 24 * 3600
    with monkeypatch.context() as patched:
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: signed_at)
        old = sign(Purpose.CONFIRM, {"u": live.people[0], "m": 1}, live.settings.secret_keys)
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        response = page.goto(f"{live.settings.base_url}/subscribe/confirm/{old}")
        assert response is not None and response.status == 410
        assert page.get_by_text("这个确认链接已过期").is_visible()
        assert page.get_by_role("button").count() == 0
        page.screenshot(path=str(screenshot_path(f"subscribe-expired-{width}")), full_page=True)
        response = page.goto(f"{live.settings.base_url}/subscribe/confirm/{old[:-3]}")
        assert response is not None and response.status == 400
        assert page.get_by_text("这个确认链接无效").is_visible()
        fits(page, width)
    finally:
        page.close()
