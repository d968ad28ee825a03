"""The follow-up's feedback form in headless Chromium: a person who was at the session opens
the feedback link of the follow-up really sent through an SMTP relay, at phone width (and at
desktop width), gives 4 and a comment, and the organizer's dashboard shows it; opening the
link alone records nothing. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import email
import email.policy
import html as html_module
import re
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.followup import create_followup
from newsletter.campaigns.sending import send_batch
from newsletter.db import session_scope, utcnow
from newsletter.rsvp import checkin_repo
from newsletter.rsvp.models import Answer, Feedback
from newsletter.rsvp.service import record_answer
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_admin import TOKEN
from tests.test_admin_in_browser import no_horizontal_overflow
from tests.test_followup import end_session
from tests.webapp import Live, live, serve_live

__all__ = ["live"]  # the fixture

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


@pytest.fixture
def followed_up(
    configure: Configure, tmp_path: Path, start_smtp: Callable[..., SmtpServer]
) -> Iterator[tuple[Live, dict[str, str]]]:
    """The live app after session 95 ended with two people checked in and its follow-up went
    out through a real relay; each person's feedback link, as found in their mail."""
    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", mail_url=f"smtp://127.0.0.1:{relay.port}"
    )
    with serve_live(settings, tmp_path, capacity=None) as live:
        url = settings.database_url
        with session_scope(url) as db:
            for person in live.people[:2]:
                record_answer(db, live.session_id, person, Answer.yes)
                assert checkin_repo.mark_present(db, live.session_id, person, utcnow())
        end_session(url, 95)
        with session_scope(url) as db:
            campaign_id = create_followup(db, 95).id
            campaigns.start_campaign(db, campaign_id)
        while send_batch(settings, campaign_id).more:
            pass
        links = {}
        for received in relay.handler.received:
            message = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            body = message.get_body(("html",))
            assert body is not None
            found = re.search(r'href="([^"]+/feedback/[^"]+)"[^>]*>给本期打分<', body.get_content())
            assert found, "the follow-up links to the feedback form"
            links[received.rcpt_tos[0]] = html_module.unescape(found.group(1))
        assert sorted(links) == ["w0@example.org", "w1@example.org"]  # those checked in only
        yield live, links


def _answers(live: Live) -> list[tuple[int, str | None]]:
    with session_scope(live.settings.database_url) as db:
        return [(r[0], r[1]) for r in db.execute(select(Feedback.rating, Feedback.comment))]


@pytest.mark.smtp
@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_a_person_gives_feedback_and_the_dashboard_shows_it(
    followed_up: tuple[Live, dict[str, str]], browser: Any, width: str
) -> None:
    live, links = followed_up
    index = 0 if width == "phone" else 1
    viewport = WIDTHS[width]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(links[f"w{index}@example.org"])
        assert page.get_by_text(f"访客{index}，你给本期活动打几分？").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"feedback-{width}")), full_page=True)
        page.reload()
        assert _answers(live) == []  # opening the link (twice) recorded nothing

        option = page.get_by_label("4 分 · 不错")
        box = option.bounding_box()
        assert box is not None and box["x"] + box["width"] <= viewport["width"]
        option.check()
        page.get_by_label("想对我们说的话（可不填）").fill("讲得很清楚，<希望>多些代码演示")
        page.get_by_role("button", name="提交反馈").click()
        page.wait_for_load_state()
        assert page.get_by_text("已记录你的反馈").is_visible()
        assert page.get_by_label("4 分 · 不错").is_checked()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"feedback-done-{width}")), full_page=True)
        assert _answers(live) == [(4, "讲得很清楚，<希望>多些代码演示")]

        page.goto(live.settings.base_url + "/admin/sessions/95")
        page.get_by_label("管理令牌").fill(TOKEN)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/admin")
        page.goto(live.settings.base_url + "/admin/sessions/95")
        card = page.locator("#followup")
        assert card.get_by_text("回顾邮件已发送").is_visible()
        assert card.get_by_text("反馈 1 份 · 平均 4.0 分").is_visible()
        assert card.get_by_text("讲得很清楚，<希望>多些代码演示").is_visible()
        assert card.locator("ul.comments script").count() == 0
        no_horizontal_overflow(page, viewport["width"])
        card.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot_path(f"admin-feedback-{width}")), full_page=True)
        with session_scope(live.settings.database_url) as db:
            assert db.scalar(select(func.count()).select_from(Feedback)) == 1
    finally:
        context.close()


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_the_organizer_sends_the_followup_from_the_session_page(
    live: Live, browser: Any, width: str
) -> None:
    url = live.settings.database_url
    with session_scope(url) as db:
        record_answer(db, live.session_id, live.people[0], Answer.yes)
        record_answer(db, live.session_id, live.people[1], Answer.maybe)
        assert checkin_repo.mark_present(db, live.session_id, live.people[0], utcnow())
    end_session(url, 95)
    viewport = WIDTHS[width]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(live.settings.base_url + "/admin/sessions/95")
        page.get_by_label("管理令牌").fill(TOKEN)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/admin")
        page.goto(live.settings.base_url + "/admin/sessions/95")
        card = page.locator("#followup")
        assert card.get_by_role("button", name="发给已签到的 1 人").is_visible()
        assert card.get_by_role("button", name="发给所有答复参加或可能的人（2）").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        card.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot_path(f"admin-followup-{width}")), full_page=True)
        card.get_by_role("button", name="发给已签到的 1 人").click()
        page.wait_for_url("**/admin/campaigns/*")
        assert page.get_by_text("活动回顾", exact=True).is_visible()
        page.goto(live.settings.base_url + "/admin/sessions/95")
        assert page.locator("#followup").get_by_text("回顾邮件已发送").is_visible()
        assert page.locator("#followup button").count() == 0  # once per session
    finally:
        context.close()
