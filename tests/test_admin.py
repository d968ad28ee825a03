"""The organizer dashboard under /admin over real HTTP (uvicorn on loopback): login by form
and signed cookie, CSRF on every POST, counts, chart, attendees and CSV from answers recorded
through the real RSVP pages, reminders and campaign buttons."""

from __future__ import annotations

import csv
import io
import re
import time
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Campaign, Delivery
from newsletter.db import session_scope, utcnow
from newsletter.rsvp import history
from newsletter.rsvp.models import Answer
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from newsletter.tokens import Purpose, sign
from newsletter.web import admin_session
from newsletter.web.dashboard_chart import NARROW, WIDE, build_chart
from newsletter.web.login_throttle import LoginThrottle
from subscribers.models import Subscriber
from tests.conftest import Configure
from tests.webapp import Live, form_token, live, write_record

__all__ = ["live"]  # the fixture

TOKEN = "test-admin-token"
ADMIN_PAGES = [
    "/admin",
    "/admin/sessions/95",
    "/admin/sessions/95/rsvps.csv",
    "/admin/sessions/999",
    "/admin/sessions/not-a-number",
    "/admin/campaigns/1",
    "/admin/no-such-page",
]
ADMIN_POSTS = [
    "/admin/sessions/95/remind",
    "/admin/campaigns/1/pause",
    "/admin/campaigns/1/explode",
    "/admin/logout",
]


def log_in(live: Live) -> str:
    """Log the test client in through the form; the dashboard's form token."""
    response = live.client.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/admin"
    page = live.client.get("/admin")
    assert page.status_code == 200
    return form_token(page.text)


def answer(live: Live, person: int, choice: str) -> None:
    """Answer through the real RSVP page and its confirm button, as a person does."""
    rsvp, _ = live.links(person)
    token = form_token(live.client.get(rsvp).text)
    done = live.client.post(rsvp, data={"answer": choice, "csrf": token})
    assert done.status_code == 200, done.text


def is_login_redirect(response: object) -> bool:
    status = getattr(response, "status_code", None)
    headers = getattr(response, "headers", {})
    return status == 303 and headers.get("location") == "/admin/login"


def test_logged_out_every_admin_page_and_action_redirects_to_the_login(live: Live) -> None:
    for path in ADMIN_PAGES:
        assert is_login_redirect(live.client.get(path)), path
    for path in ADMIN_POSTS:
        response = live.client.post(path, data={"csrf": "x"})
        assert is_login_redirect(response), path
    login = live.client.get("/admin/login")
    assert login.status_code == 200
    assert 'type="password"' in login.text and 'method="post"' in login.text
    assert login.headers["cache-control"] == "no-store"


def test_the_token_in_a_url_or_a_bearer_header_does_not_log_in(live: Live) -> None:
    for path in ("/admin", f"/admin?token={TOKEN}", f"/admin/sessions/95?admin_token={TOKEN}"):
        assert is_login_redirect(live.client.get(path)), path
    # A query string on the form's POST is not the form: still refused.
    response = live.client.post(f"/admin/login?token={TOKEN}")
    assert response.status_code == 401 and "set-cookie" not in response.headers
    bearer = live.client.get("/admin", headers={"Authorization": f"Bearer {TOKEN}"})
    assert is_login_redirect(bearer)
    # The login form itself never sends the token in a URL.
    form = live.client.get("/admin/login").text
    assert re.search(r'<form method="post" action="/admin/login">', form)


@pytest.mark.parametrize("given", ["wrong", "", TOKEN + "x", TOKEN[:-1], "x" * 5000, "猜的令牌𠜎"])
def test_a_wrong_token_gets_the_form_again_with_401(live: Live, given: str) -> None:
    response = live.client.post("/admin/login", data={"token": given})
    assert response.status_code == 401
    assert "管理令牌不正确" in response.text and 'type="password"' in response.text
    assert "set-cookie" not in response.headers
    assert given not in response.text or given == ""  # the guess is not echoed back
    assert is_login_redirect(live.client.get("/admin"))


def test_login_sets_an_http_only_same_site_strict_cookie(live: Live) -> None:
    response = live.client.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/admin"
    cookie = response.headers["set-cookie"]
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert cookie.startswith(f"{admin_session.COOKIE}=")
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/admin" in attributes
    assert f"max-age={12 * 3600}" in attributes
    assert "secure" not in attributes  # served over http in this test (https: see below)
    assert TOKEN not in cookie
    index = live.client.get("/admin")
    assert index.status_code == 200 and "容量为一的沙龙" in index.text
    assert index.headers["cache-control"] == "no-store"
    # Logged in, the login form sends you on to the dashboard.
    assert live.client.get("/admin/login").headers["location"] == "/admin"


def test_the_cookie_is_secure_when_the_app_is_served_over_https(configure: Configure) -> None:
    from fastapi.responses import Response

    configure(base_url="https://salon.example.org")
    response = Response()
    admin_session.set_login_cookie(response, admin_session.new_login_cookie())
    assert "secure" in [p.strip().lower() for p in response.headers["set-cookie"].split(";")]


def test_counts_attendees_and_the_chart_follow_the_answers(live: Live) -> None:
    answer(live, 0, "yes")  # the one seat
    time.sleep(0.01)
    answer(live, 1, "yes")  # waitlisted
    time.sleep(0.01)
    answer(live, 2, "maybe")
    time.sleep(0.01)
    answer(live, 0, "no")  # frees the seat: person 1 is promoted at the same instant
    log_in(live)

    index = live.client.get("/admin").text
    row = re.search(r"<tr>\s*<td[^>]*>95</td>(.*?)</tr>", index, re.S)
    assert row, index
    numbers = re.findall(r'class="num">(\d+)</td>', row.group(1))
    assert numbers == ["1", "1", "1", "1", "0"]  # capacity, yes, maybe, no, waitlisted

    page = live.client.get("/admin/sessions/95")
    assert page.status_code == 200
    text = page.text
    assert "测试专题 &lt;script&gt;x&lt;/script&gt;" in text and "<script" not in text.lower()
    attendees = re.findall(
        r'<td data-label="姓名"[^>]*>(.*?)</td>\s*<td data-label="邮箱"[^>]*>(.*?)</td>\s*'
        r'<td data-label="答复"[^>]*><span class="tag \w+">(.*?)</span>',
        text,
    )
    assert attendees == [
        ("访客1", "w1@example.org", "参加"),
        ("访客2", "w2@example.org", "可能"),
        ("访客0", "w0@example.org", "不参加"),
    ]

    # The data table replays the four answers; the last two share one instant.
    table = re.search(r"<details class=\"data\">(.*?)</details>", text, re.S)
    assert table
    rows = re.findall(
        r'<tr><td>[\d\- :]+</td><td class="num">(\d+)</td><td class="num">(\d+)</td>'
        r'<td class="num">(\d+)</td><td class="num">(\d+)</td></tr>',
        table.group(1),
    )
    # columns: yes, waitlisted, maybe, no
    assert rows == [("1", "0", "0", "0"), ("1", "1", "0", "0"), ("1", "1", "1", "0"),
                    ("1", "0", "1", "1")]  # fmt: skip

    # Both drawings of the chart have a marker where each count changed, at the right height.
    svgs = re.findall(r'(<svg class="plot (?:narrow|wide)".*?</svg>)', text, re.S)
    assert len(svgs) == 2
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.get("role") == "img" and root.find("title") is not None
        desc = root.find("desc")
        assert desc is not None and "参加 1 人" in (desc.text or "")
        markers: dict[str, list[tuple[float, str]]] = {}
        for group in root.findall("g"):
            state = (group.get("class") or "").removeprefix("series ")
            if not (group.get("class") or "").startswith("series"):
                continue
            markers[state] = [
                (float(c.get("cy", "nan")), (c.findtext("title") or "").split(" ", 2)[2])
                for c in group.findall("circle")
            ]
        labels = {state: [title for _, title in points] for state, points in markers.items()}
        assert labels == {
            "yes": ["参加 1"],
            "waitlisted": ["候补 1", "候补 0"],
            "maybe": ["可能 1"],
            "no": ["不参加 1"],
        }
        heights = {title: cy for points in markers.values() for cy, title in points}
        one = heights["参加 1"]
        assert heights["候补 1"] == heights["可能 1"] == heights["不参加 1"] == one
        assert heights["候补 0"] > one  # zero is lower on the screen


def test_csv_export_with_the_cookie(live: Live) -> None:
    answer(live, 0, "yes")
    answer(live, 2, "no")
    log_in(live)
    response = live.client.get("/admin/sessions/95/rsvps.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="rsvps-95.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["name"], r["email"], r["answer"], r["waitlisted"]) for r in rows] == [
        ("访客0", "w0@example.org", "yes", "no"),
        ("访客2", "w2@example.org", "no", "no"),
    ]
    assert live.client.get("/admin/sessions/999/rsvps.csv").status_code == 404


def reminder_deliveries(live: Live) -> list[tuple[str, list[int]]]:
    with session_scope(live.settings.database_url) as db:
        out = []
        for campaign in db.scalars(select(Campaign).order_by(Campaign.id)):
            people = db.scalars(
                select(Delivery.subscriber_id).where(Delivery.campaign_id == campaign.id)
            )
            out.append((campaign.kind, sorted(people)))
        return out


def test_remind_needs_the_form_token_of_this_login(live: Live) -> None:
    answer(live, 0, "yes")
    rsvp, _ = live.links(0)
    rsvp_form_token = form_token(live.client.get(rsvp).text)
    mine = log_in(live)
    other = sign(Purpose.CSRF, {"admin": 12345}, live.settings.secret_keys)  # another login's
    for csrf in (None, "", "forged", rsvp_form_token, other, mine[:-2]):
        data = {} if csrf is None else {"csrf": csrf}
        response = live.client.post("/admin/sessions/95/remind", data=data)
        assert response.status_code == 403, csrf
        assert "控制台" in response.text
    assert reminder_deliveries(live) == []


def test_remind_creates_a_reminder_for_exactly_the_confirmed(live: Live) -> None:
    answer(live, 0, "yes")  # confirmed
    answer(live, 1, "yes")  # waitlisted: no reminder
    answer(live, 2, "maybe")
    csrf = log_in(live)
    page = live.client.get("/admin/sessions/95").text
    assert 'action="/admin/sessions/95/remind"' in page and "发送提醒" in page
    response = live.client.post("/admin/sessions/95/remind", data={"csrf": csrf})
    assert response.status_code == 303
    location = response.headers["location"]
    assert re.fullmatch(r"/admin/campaigns/\d+", location)
    assert reminder_deliveries(live) == [("reminder", [live.people[0]])]
    campaign = live.client.get(location)
    assert campaign.status_code == 200 and "提醒" in campaign.text
    assert "第 95 期" in campaign.text


def test_remind_with_nobody_confirmed_says_why_with_409(live: Live) -> None:
    answer(live, 2, "maybe")
    csrf = log_in(live)
    response = live.client.post("/admin/sessions/95/remind", data={"csrf": csrf})
    assert response.status_code == 409
    assert "无法发送提醒" in response.text and "容量为一的沙龙" in response.text
    assert reminder_deliveries(live) == []
    missing = live.client.post("/admin/sessions/999/remind", data={"csrf": csrf})
    assert missing.status_code == 404


def test_campaign_buttons_pause_resume_and_cancel(live: Live) -> None:
    with session_scope(live.settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id  # a draft invitation
    csrf = log_in(live)
    index = live.client.get("/admin").text
    assert f'action="/admin/campaigns/{campaign_id}/send"' in index
    assert f'action="/admin/campaigns/{campaign_id}/cancel"' in index
    assert "草稿" in index and "已发送 0 / 3" in index

    refused = live.client.post(f"/admin/campaigns/{campaign_id}/pause", data={"csrf": "no"})
    assert refused.status_code == 403
    conflict = live.client.post(f"/admin/campaigns/{campaign_id}/pause", data={"csrf": csrf})
    assert conflict.status_code == 409 and "无法执行" in conflict.text  # a draft is not sending
    bad = live.client.post(f"/admin/campaigns/{campaign_id}/explode", data={"csrf": csrf})
    assert bad.status_code == 400
    gone = live.client.post("/admin/campaigns/99999/cancel", data={"csrf": csrf})
    assert gone.status_code == 404

    cancelled = live.client.post(f"/admin/campaigns/{campaign_id}/cancel", data={"csrf": csrf})
    assert cancelled.status_code == 303
    page = live.client.get(cancelled.headers["location"]).text
    assert "已取消" in page and "action=" not in page.split("发送任务 #")[-1].split("</div>")[0]
    with session_scope(live.settings.database_url) as db:
        assert campaigns.require_campaign(db, campaign_id).status == "cancelled"


def test_logout_clears_the_cookie(live: Live) -> None:
    csrf = log_in(live)
    assert live.client.post("/admin/logout", data={"csrf": "forged"}).status_code == 403
    response = live.client.post("/admin/logout", data={"csrf": csrf})
    assert is_login_redirect(response)
    cleared = response.headers["set-cookie"].lower()
    assert cleared.startswith(f"{admin_session.COOKIE}=") and "max-age=0" in cleared
    assert is_login_redirect(live.client.get("/admin"))


def test_a_forged_tampered_or_foreign_cookie_leads_to_the_login(live: Live) -> None:
    log_in(live)
    good = live.client.cookies[admin_session.COOKIE]
    payload = {"f": 1, "n": 2}
    forged = [
        # A middle character of the signature: the last one has bits base64 ignores.
        good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:],  # signature changed
        good[: len(good) // 2],  # cut short
        sign(Purpose.ADMIN_SESSION, payload, ["someone-elses-key"]),  # foreign key
        sign(Purpose.ADMIN_SESSION, payload, live.settings.secret_keys),  # wrong fingerprint
        sign(Purpose.RSVP, {"s": 1, "u": 1}, live.settings.secret_keys),  # another purpose
        "x" * 5000,
        "",
    ]
    for value in forged:
        live.client.cookies.clear()
        live.client.cookies.set(admin_session.COOKIE, value, domain="127.0.0.1", path="/admin")
        for path in ("/admin", "/admin/sessions/95"):
            assert is_login_redirect(live.client.get(path)), value[:40]


def test_changing_the_admin_token_ends_every_login(live: Live, configure: Configure) -> None:
    log_in(live)
    configure(secret_key="a-newer-secret-key,test-secret-key")  # secret rotation: still in
    assert live.client.get("/admin").status_code == 200
    configure(admin_token="a-brand-new-admin-token")
    assert is_login_redirect(live.client.get("/admin"))
    assert live.client.post("/admin/login", data={"token": TOKEN}).status_code == 401
    new = live.client.post("/admin/login", data={"token": "a-brand-new-admin-token"})
    assert new.status_code == 303
    assert live.client.get("/admin").status_code == 200


def test_the_login_expires_after_twelve_hours(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure()
    cookie = admin_session.new_login_cookie()
    assert admin_session.read_login(cookie) is not None
    later = time.time() + 12 * 3600 + 60
    monkeypatch.setattr("newsletter.tokens.time.time", lambda: later)
    assert admin_session.read_login(cookie) is None


def test_logged_in_errors_are_friendly_4xx_pages(live: Live) -> None:
    log_in(live)
    for path, status in [
        ("/admin/sessions/999", 404),
        ("/admin/sessions/0", 400),
        ("/admin/sessions/abc", 400),
        ("/admin/campaigns/99999", 404),
        ("/admin/nothing", 404),
    ]:
        response = live.client.get(path)
        assert response.status_code == status, path
        assert "text/html" in response.headers["content-type"] and "返回控制台" in response.text


def test_history_replays_the_events_on_both_databases(db_url: str, tmp_path: Path) -> None:
    start = utcnow() - timedelta(days=1)
    with session_scope(db_url) as db:
        import_records(db, [write_record(tmp_path, deadline_in=timedelta(days=6))], timezone="UTC")
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        people = [
            Subscriber(email=f"h{i}@example.org", name="", created_at=start) for i in range(3)
        ]
        db.add_all(people)
        db.flush()
        a, b, c = (p.id for p in people)
        steps = [(a, Answer.yes), (b, Answer.yes), (c, Answer.no), (a, Answer.maybe)]
        for minutes, (who, choice) in enumerate(steps):
            record_answer(db, salon.id, who, choice, now=start + timedelta(minutes=minutes))
        salon_id = salon.id
    with session_scope(db_url) as db:
        points = history.history(db, salon_id)
    assert [(p.at - start, p.yes, p.waitlisted, p.maybe, p.no) for p in points] == [
        (timedelta(0), 1, 0, 0, 0),
        (timedelta(minutes=1), 1, 1, 0, 0),
        (timedelta(minutes=2), 1, 1, 0, 1),
        (timedelta(minutes=3), 1, 0, 1, 1),  # a's seat went to b at the same instant
    ]


def test_thinning_keeps_the_ends_and_the_values_each_slice_settled_on() -> None:
    start = utcnow()
    points = [
        history.Point(start + timedelta(seconds=i), yes=i, waitlisted=0, maybe=0, no=0)
        for i in range(1000)
    ]
    thinned = history.thin(points, 100)
    assert len(thinned) <= 100
    assert thinned[0] == points[0] and thinned[-1] == points[-1]
    assert [p.at for p in thinned] == sorted(p.at for p in thinned)
    assert history.thin(points[:50], 100) == points[:50]


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (timedelta(hours=2), re.compile(r"\d\d:\d\d")),  # times of day
        (timedelta(days=40), re.compile(r"(\d{4}-)?\d\d-\d\d")),  # dates (a year if crossed)
    ],
)
def test_chart_axes_pick_round_ticks(span: timedelta, expected: re.Pattern[str]) -> None:
    start = utcnow()
    points = [
        history.Point(start, yes=1, waitlisted=0, maybe=0, no=0),
        history.Point(start + span, yes=7, waitlisted=2, maybe=1, no=3),
    ]
    zone = ZoneInfo("Asia/Shanghai")
    for geometry in (NARROW, WIDE):
        chart = build_chart(points, end=start + span, zone=zone, geometry=geometry)
        assert chart is not None
        assert 2 <= len(chart.x_ticks) <= geometry.max_x_ticks + 1
        assert all(expected.fullmatch(t.label) for t in chart.x_ticks)
        xs = [t.pos for t in chart.x_ticks]
        assert xs == sorted(xs) and chart.plot_left <= xs[0] and xs[-1] <= chart.plot_right
        assert chart.y_ticks[0].label == "0" and int(chart.y_ticks[-1].label) >= 7
    assert build_chart([], end=start, zone=zone, geometry=WIDE) is None


def test_ten_wrong_tokens_pause_that_address_even_for_the_right_one(live: Live) -> None:
    for _ in range(10):
        assert live.client.post("/admin/login", data={"token": "guess"}).status_code == 401
    paused = live.client.post("/admin/login", data={"token": TOKEN})
    assert paused.status_code == 429 and "错误次数过多" in paused.text
    assert 0 < int(paused.headers["retry-after"]) <= 15 * 60
    assert "set-cookie" not in paused.headers


def test_the_pause_ends_with_the_window_and_a_right_token_clears_the_count() -> None:
    throttle = LoginThrottle(max_failures=3, window_s=60)
    for second in range(3):
        throttle.failed("198.51.100.7", now=1000.0 + second)
    assert throttle.retry_after("198.51.100.7", now=1010.0) == 51
    assert throttle.retry_after("203.0.113.9", now=1010.0) == 0  # another address
    assert throttle.retry_after("198.51.100.7", now=1061.0) == 0  # the first failure expired
    throttle.failed("198.51.100.7", now=1062.0)
    throttle.succeeded("198.51.100.7")
    assert throttle.retry_after("198.51.100.7", now=1062.0) == 0
