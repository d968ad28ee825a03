"""Change notices from the dashboard: the session page's card and button over HTTP (login,
form token, stale and told pages) and in headless Chromium at phone and desktop widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from newsletter.campaigns.models import Campaign, CampaignKind
from newsletter.db import session_scope
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.test_admin import log_in
from tests.webapp import Live, live

__all__ = ["live"]  # the fixture

# --- the dashboard ------------------------------------------------------------------------------


def announce_and_move(live: Live, tmp_path: Path) -> None:
    """Session no. 95 announced (an invitation started), answered yes by w0 and maybe by w1,
    then re-imported in another room."""
    from newsletter.campaigns import service

    url = live.settings.database_url
    with session_scope(url) as db:
        service.start_campaign(db, service.create_campaign(db, 95).id)
    answer_live(live, 0, "yes")
    answer_live(live, 1, "maybe")
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        data = sessions_repo.record_of(salon).model_dump(mode="json", exclude_none=True)
    data["venue"] = {"mode": "offline", "name": "紫金港校区东四教学楼"}
    path = tmp_path / "095-moved.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with session_scope(url) as db:
        report = import_records(db, [path], timezone="Asia/Shanghai")
        from newsletter.cli.sessions_notify import report_changes

        report_changes(db, report, timezone="Asia/Shanghai")


def test_dashboard_button_sends_the_notice_once(live: Live, tmp_path: Path) -> None:
    csrf = log_in(live)
    assert "change-notice" not in live.client.get("/admin/sessions/95").text  # not announced
    announce_and_move(live, tmp_path)
    page = live.client.get("/admin/sessions/95").text
    assert "变更通知" in page and "紫金港校区东四教学楼" in page and "蒙民伟楼348室" in page
    assert "发送变更通知给答复参加、可能或候补的 2 人" in page
    action = "/admin/sessions/95/change-notice"
    assert live.client.post(action, data={"csrf": "forged", "revision": "1"}).status_code == 403
    stale = live.client.post(action, data={"csrf": csrf, "revision": "0"})
    assert stale.status_code == 409 and "又更新了" in stale.text
    assert live.client.post(action, data={"csrf": csrf}).status_code in (400, 422)
    assert (
        live.client.post(
            "/admin/sessions/999/change-notice", data={"csrf": csrf, "revision": "1"}
        ).status_code
        == 404
    )
    with session_scope(live.settings.database_url) as db:
        draft = db.scalars(select(Campaign.id).where(Campaign.kind == CampaignKind.change)).one()
    # The generic send is refused: a pending notice's audience is chosen by its button.
    api = live.client.post(
        f"/api/campaigns/{draft}/send", headers={"Authorization": "Bearer test-admin-token"}
    )
    assert api.status_code == 409 and "pending change notice" in api.text
    done = live.client.post(action, data={"csrf": csrf, "revision": "1"})
    assert done.status_code == 303 and done.headers["location"].startswith("/admin/campaigns/")
    campaign_id = int(done.headers["location"].rsplit("/", 1)[1])
    with session_scope(live.settings.database_url) as db:
        campaign = db.get(Campaign, campaign_id)
        assert campaign is not None
        assert (campaign.kind, campaign.occasion, campaign.recipient_count) == (
            CampaignKind.change,
            "revision-1",
            2,
        )
    again = live.client.post(action, data={"csrf": csrf, "revision": "1"})
    assert again.status_code == 409 and "不会重复发送" in again.text
    after = live.client.get("/admin/sessions/95").text
    assert "变更通知已发送" in after and f"#{campaign_id}" in after


def answer_live(live: Live, person: int, choice: str) -> None:
    from tests.test_admin import answer as through_the_page

    through_the_page(live, person, choice)


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_dashboard_button_in_chromium(live: Live, browser: Any, width: str, tmp_path: Path) -> None:
    from tests.test_admin import TOKEN
    from tests.test_admin_in_browser import no_horizontal_overflow

    announce_and_move(live, tmp_path)
    viewport = PHONE if width == "phone" else DESKTOP
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(live.settings.base_url + "/admin/login")
        page.get_by_label("管理令牌").fill(TOKEN)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/admin")
        page.goto(live.settings.base_url + "/admin/sessions/95")
        card = page.locator("#change-notice")
        assert card.get_by_text("紫金港校区东四教学楼").is_visible()
        button = page.get_by_role("button", name="发送变更通知给答复参加、可能或候补的 2 人")
        assert button.is_visible()
        no_horizontal_overflow(page, viewport["width"])
        card.screenshot(path=str(screenshot_path(f"admin-change-notice-{width}")))
        button.click()
        page.wait_for_url("**/admin/campaigns/*")
        assert page.get_by_text("变更通知", exact=True).first.is_visible()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-change-notice-sent-{width}")))
        page.goto(live.settings.base_url + "/admin/sessions/95")
        assert page.locator("#change-notice").get_by_text("变更通知已发送").is_visible()
    finally:
        context.close()
