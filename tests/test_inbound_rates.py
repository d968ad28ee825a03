"""Bounce and complaint rates per campaign (per sent delivery) with their warnings, where an
organizer reads them: ``newsletter campaign status``, the API's campaign JSON, and the
dashboard's campaign page in headless Chromium at phone and desktop widths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from newsletter.cli import app as cli
from newsletter.inbound.rates import ReturnedRates, percent
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.servers import free_port
from tests.test_admin import TOKEN
from tests.test_admin_in_browser import no_horizontal_overflow
from tests.test_inbound_service import BOUNCES, Sent, dsn, feed, send_to
from tests.webapp import Live, serve_live

PEOPLE = ["w0@example.org", "w1@example.org", "w2@example.org"]  # who serve_live seeds


def test_the_thresholds_are_strictly_above_two_and_a_tenth_percent() -> None:
    assert not ReturnedRates(sent=100, bounces=2, complaints=0).bounce_warning
    assert ReturnedRates(sent=100, bounces=3, complaints=0).bounce_warning
    assert not ReturnedRates(sent=1000, bounces=0, complaints=1).complaint_warning
    assert ReturnedRates(sent=1000, bounces=0, complaints=2).complaint_warning
    nothing = ReturnedRates(sent=0, bounces=0, complaints=0)
    assert nothing.bounce_rate is None and not nothing.bounce_warning
    assert (percent(None), percent(0.0008), percent(1 / 3)) == ("-", "0.08 %", "33.3 %")


@pytest.fixture
def returned(configure: Configure, db_url: str, tmp_path: Path) -> Iterator[tuple[Live, Sent]]:
    """The web app on ``db_url``, a campaign sent to three people, one of whom bounced."""
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", database_url=db_url, bounce_address=BOUNCES
    )
    with serve_live(settings, tmp_path, people=3, capacity=None) as live:
        sent = send_to(settings, [])
        assert set(sent.deliveries) == set(PEOPLE)
        feed(settings, dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0]))
        yield live, sent


def test_campaign_status_prints_the_rates_and_warns(returned: tuple[Live, Sent]) -> None:
    _, sent = returned
    result = CliRunner().invoke(cli, ["campaign", "status", str(sent.campaign_id)])
    assert result.exit_code == 0, result.output
    assert "returned: 1 bounced (33.3 % of 3 sent), 0 complaints (0.00 %)" in result.stdout
    assert "more than 2 % of the mail sent bounced" in result.stderr
    assert "spam" not in result.stderr


def test_the_api_campaign_json_has_the_rates(returned: tuple[Live, Sent]) -> None:
    live, sent = returned
    answer = httpx.get(
        f"{live.settings.base_url}/api/campaigns/{sent.campaign_id}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["sent"], body["bounces"], body["complaints"]) == (3, 1, 0)
    assert body["bounce_rate"] == pytest.approx(1 / 3) and body["complaint_rate"] == 0
    assert body["bounce_warning"] is True and body["complaint_warning"] is False


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_the_campaign_page_shows_rates_and_the_warning(
    returned: tuple[Live, Sent], browser: Any, width: str
) -> None:
    live, sent = returned
    viewport = {"phone": PHONE, "desktop": DESKTOP}[width]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(live.settings.base_url + "/admin/login")
        page.get_by_label("管理令牌").fill(TOKEN)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/admin")
        page.goto(f"{live.settings.base_url}/admin/campaigns/{sent.campaign_id}")
        assert page.get_by_text("退信 1（33.3 %）").is_visible()
        assert page.get_by_text("投诉 0（0.00 %）").is_visible()
        warning = page.get_by_role("alert")
        assert warning.is_visible() and "退信率超过 2%" in warning.inner_text()
        assert "投诉率" not in warning.inner_text()
        no_horizontal_overflow(page, viewport["width"])
        page.screenshot(path=str(screenshot_path(f"admin-campaign-rates-{width}")), full_page=True)
    finally:
        context.close()
