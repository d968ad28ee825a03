"""The preference page in headless Chromium, at phone and desktop widths, opened from the
link of an invitation really sent through an SMTP relay: name, topics and pause saved,
unsubscribe, resubscribe, "send me my data"; opening it records nothing; a tampered link
is a clear 400 page."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.sending import send_batch
from newsletter.db import session_scope, utcnow
from subscribers import repo
from subscribers.models import Subscriber, SubscriberMail
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.webapp import Live, serve_live

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


@pytest.fixture
def sent(
    configure: Configure, tmp_path: Path, start_smtp: Callable[..., SmtpServer]
) -> Iterator[tuple[Live, dict[str, str]]]:
    """The live app (SQLite) after an invitation to session 95 went out through a real relay;
    each person's preference link, as found in the mail they received."""
    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", mail_url=f"smtp://127.0.0.1:{relay.port}"
    )
    with serve_live(settings, tmp_path) as live:
        with session_scope(settings.database_url) as db:
            ids = repo.ensure_tags(db, ["读书会", "编程马拉松"])
            repo.link_tags(db, [(person, ids["读书会"]) for person in live.people])
            campaign_id = campaigns.create_campaign(db, 95).id
            campaigns.start_campaign(db, campaign_id)
        while send_batch(settings, campaign_id).more:
            pass
        links = {}
        for received in relay.handler.received:
            message = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            html = message.get_body(("html",))
            assert html is not None
            found = re.search(
                r'href="([^"]+/preferences/[^"]+)"[^>]*>订阅设置<', html.get_content()
            )
            assert found, "the invitation's footer links to the preference page"
            links[received.rcpt_tos[0]] = found.group(1)
        yield live, links


def _person(live: Live, index: int) -> Subscriber:
    with session_scope(live.settings.database_url) as db:
        person = db.get(Subscriber, live.people[index])
        assert person is not None
        db.expunge(person)
        return person


def _tags(live: Live, index: int) -> list[str]:
    with session_scope(live.settings.database_url) as db:
        person = db.get(Subscriber, live.people[index])
        assert person is not None
        return sorted(t.name for t in person.tags)


@pytest.mark.smtp
@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_a_person_changes_everything_from_the_link_in_their_invitation(
    sent: tuple[Live, dict[str, str]], browser: Any, width: str
) -> None:
    live, links = sent
    index = 0 if width == "phone" else 1
    link = links[f"w{index}@example.org"]
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(link)
        assert page.get_by_role("heading", name=f"访客{index}，在这里管理你的订阅").is_visible()
        assert page.get_by_text("你正在接收沙龙的邀请邮件").is_visible()
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= WIDTHS[width]["width"]
        page.screenshot(path=str(screenshot_path(f"preferences-{width}")), full_page=True)
        before = _person(live, index)
        assert (before.name, before.paused_until) == (f"访客{index}", None)  # GET changed nothing

        zone = ZoneInfo(live.settings.timezone)
        resume = (utcnow().astimezone(zone) + timedelta(days=14)).date()
        page.get_by_label("称呼").fill("小明")
        page.get_by_label("编程马拉松").check()
        page.get_by_label("读书会").uncheck()
        page.get_by_label("暂停接收").fill(resume.isoformat())
        page.get_by_role("button", name="保存设置").click()
        page.wait_for_load_state()
        assert page.get_by_text("已保存你的设置").is_visible()
        assert page.get_by_text(f"已暂停：{resume.isoformat()} 起恢复接收").is_visible()
        page.screenshot(path=str(screenshot_path(f"preferences-saved-{width}")), full_page=True)
        saved = _person(live, index)
        assert saved.name == "小明" and saved.paused_until is not None
        assert saved.paused_until.astimezone(zone).date() == resume
        assert _tags(live, index) == ["编程马拉松"]

        page.get_by_role("button", name="退订所有邀请").click()
        page.wait_for_load_state()
        assert page.get_by_text("你已退订，不会再收到").is_visible()
        assert _person(live, index).status == "unsubscribed"
        page.screenshot(path=str(screenshot_path(f"preferences-left-{width}")), full_page=True)

        page.get_by_role("button", name="重新订阅").click()
        page.wait_for_load_state()
        assert page.get_by_text("欢迎回来").is_visible()
        assert _person(live, index).status == "active"

        page.get_by_role("button", name="把我的数据发给我").click()
        page.wait_for_load_state()
        assert page.get_by_text("我们会把你的全部数据作为附件发送到你的邮箱").is_visible()
        page.get_by_role("button", name="把我的数据发给我").click()
        page.wait_for_load_state()
        assert page.get_by_text("每人每天最多请求一次").is_visible()
        assert "p0@example.org" not in page.content() and "@example.org" not in page.content()
    finally:
        page.close()
    with session_scope(live.settings.database_url) as db:
        kinds = db.scalars(
            select(SubscriberMail.kind).where(SubscriberMail.subscriber_id == live.people[index])
        )
        assert list(kinds) == ["export"]


@pytest.mark.smtp
def test_a_refused_date_and_a_tampered_link_are_clear_pages(
    sent: tuple[Live, dict[str, str]], browser: Any
) -> None:
    live, links = sent
    page = browser.new_page(viewport=PHONE)
    try:
        page.goto(links["w2@example.org"])
        yesterday = (utcnow() - timedelta(days=2)).date().isoformat()
        page.get_by_label("暂停接收").fill(yesterday)
        page.get_by_role("button", name="保存设置").click()
        page.wait_for_load_state()
        assert page.get_by_text("暂停的日期必须晚于今天").is_visible()
        assert _person(live, 2).paused_until is None
        response = page.goto(links["w2@example.org"][:-3] + "xyz")
        assert response is not None and response.status == 400
        assert page.get_by_text("这个链接无效").is_visible()
        page.screenshot(path=str(screenshot_path("preferences-tampered-phone")), full_page=True)
    finally:
        page.close()
