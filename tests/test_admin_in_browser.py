"""The dashboard in headless Chromium at phone and desktop widths: log in through the form,
see sessions, a chart and attendees, press the reminder button; nothing overflows a phone's
width, Chinese text renders, screenshots go to test-artifacts/screenshots/ for review."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from newsletter.campaigns import service as campaigns
from newsletter.db import session_scope, utcnow
from newsletter.rsvp.models import Answer
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.test_admin import TOKEN, answer
from tests.webapp import Live, live

__all__ = ["live"]  # the fixture (the browser comes from conftest)

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}

BUSY_RECORD = """\
number: 96
series: 机器学习开发者沙龙
theme: 大模型推理优化专题
title: 从量化到投机解码：大模型推理加速实践
starts_at: {starts}
ends_at: {ends}
venue: {{mode: hybrid, name: 浙江大学紫金港校区蒙民伟楼348室, streams: [{{name: Mo平台直播, url: "https://example.org/live"}}]}}
registration: {{capacity: 20}}
talks:
  - {{kind: lecture, speaker: 王一, title: 低比特量化的误差从哪里来}}
  - {{kind: practice, speaker: 李二, title: 在一张显卡上跑投机解码}}
"""


def seed_busy_session(live: Live, tmp_path: Path) -> None:
    """Session no. 96 (20 seats) with 45 people answering, and changing their minds, over
    the last three days: the chart then has something to show in the screenshots."""
    now = utcnow()
    starts = now + timedelta(days=4)
    path = tmp_path / "096.yaml"
    path.write_text(
        BUSY_RECORD.format(
            starts=starts.isoformat(), ends=(starts + timedelta(hours=2)).isoformat()
        ),
        encoding="utf-8",
    )
    rng = random.Random(96)
    with session_scope(live.settings.database_url) as db:
        import_records(db, [path], timezone="Asia/Shanghai")
        salon = sessions_repo.get_by_number(db, 96)
        assert salon is not None
        people = [
            Subscriber(email=f"busy{i}@example.org", name=f"参会者{i:02d}", created_at=now)
            for i in range(45)
        ]
        db.add_all(people)
        db.flush()
        moments = sorted(now - timedelta(minutes=rng.randrange(3 * 24 * 60)) for _ in range(60))
        for i, at in enumerate(moments):
            who = people[i % len(people)]
            choice = rng.choices(list(Answer), weights=[6, 2, 2])[0]
            record_answer(db, salon.id, who.id, choice, now=at)
        campaigns.create_campaign(db, 96)  # a draft invitation: its buttons show


def no_horizontal_overflow(page: Any, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"page is {scroll_width}px wide at {width}px"


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_dashboard_login_chart_attendees_and_reminder(
    live: Live, browser: Any, width: str, tmp_path: Path
) -> None:
    seed_busy_session(live, tmp_path)
    answer(live, 0, "yes")
    answer(live, 1, "yes")  # waitlisted: one seat
    answer(live, 2, "maybe")
    viewport = WIDTHS[width]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(live.settings.base_url + "/admin")
        assert page.url.endswith("/admin/login")
        assert page.get_by_role("heading", name="组织者登录").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-login-{width}")), full_page=True)

        page.get_by_label("管理令牌").fill(TOKEN)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/admin")
        (cookie,) = [c for c in context.cookies() if c["name"] == "newsletter_admin"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
        assert TOKEN not in page.url
        assert page.get_by_role("heading", name="活动").is_visible()
        assert page.get_by_role("link", name="从量化到投机解码：大模型推理加速实践").is_visible()
        assert page.get_by_text("最近的发送任务").is_visible()
        assert page.get_by_role("button", name="开始发送").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-index-{width}")), full_page=True)

        page.get_by_role("link", name="从量化到投机解码：大模型推理加速实践").click()
        page.wait_for_url("**/admin/sessions/96")
        chart = page.locator(f"svg.plot.{'narrow' if width == 'phone' else 'wide'}")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] <= viewport["width"] and box["height"] > 150
        assert page.locator("svg.plot:visible").count() == 1  # one drawing per width
        assert page.get_by_text("参会者00").first.is_visible()
        assert page.get_by_role("link", name="导出 CSV").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-session-{width}")), full_page=True)

        page.goto(live.settings.base_url + "/admin/sessions/95")
        assert (
            page.get_by_text("访客1").is_visible() and page.get_by_text("候补").first.is_visible()
        )
        page.get_by_role("button", name="发送提醒").click()
        page.wait_for_url("**/admin/campaigns/*")
        assert page.get_by_text("提醒", exact=True).is_visible()
        assert page.get_by_text("第 95 期").is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-reminder-{width}")), full_page=True)

        page.get_by_role("button", name="退出登录").click()
        page.wait_for_url("**/admin/login")
        page.goto(live.settings.base_url + "/admin")
        assert page.url.endswith("/admin/login")
    finally:
        context.close()
