"""The public pages over HTTP on a live app (SQLite): the archive of the 58 sample sessions
with every link, search, the calendar and Atom feeds, cache validators and 304, no personal
data, and every page in headless Chromium at phone and desktop width."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from icalendar import Calendar

from newsletter.db import session_scope, utcnow
from newsletter.sessions.records import load_record
from newsletter.sessions.schema import SessionRecord
from newsletter.sessions.service import import_records
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.webapp import Live, live

__all__ = ["live"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sessions"
WIDTHS = {"phone": PHONE, "desktop": DESKTOP}
CANCELLED = """\
number: 96
series: 机器学习开发者沙龙
title: 取消的一期
starts_at: {starts}
ends_at: {ends}
cancelled: true
talks: [{{kind: lecture, title: 不会举行的报告}}]
"""


@pytest.fixture
def site(live: Live, tmp_path: Path) -> Live:
    """The live app (no. 95 upcoming, three subscribers) with the sample sessions and an
    upcoming cancelled one (no. 96)."""
    starts = utcnow().replace(microsecond=0)
    path = tmp_path / "096.yaml"
    path.write_text(
        CANCELLED.format(
            starts=starts.isoformat(), ends=starts.replace(year=starts.year + 1).isoformat()
        ),
        encoding="utf-8",
    )
    with session_scope(live.settings.database_url) as db:
        import_records(db, [*sorted(EXAMPLES.glob("*.yaml")), path], timezone="Asia/Shanghai")
    return live


def examples() -> list[SessionRecord]:
    return [load_record(p) for p in sorted(EXAMPLES.glob("*.yaml"))]


def test_archive_lists_every_past_sample_session_with_every_link(site: Live) -> None:
    response = site.client.get("/archive")
    assert response.status_code == 200
    page = response.text
    records = examples()
    assert len(records) == 58  # 57 before no. 61, and no. 61 itself: all held in 2019-20
    for record in records:
        assert f'id="s{record.number}"' in page, record.number
        for link in record.links:
            assert (
                html.escape(str(link.url)) in page
                or html.escape(str(link.url), quote=False) in page
            ), link.url
    assert 'id="s95"' not in page and 'id="s96"' not in page  # upcoming, not archive
    assert "论文分享" in page and "机器学习" in page


def test_search_finds_a_talk_by_speaker_and_takes_any_text(site: Live) -> None:
    found = site.client.get("/archive", params={"q": "叶寅"}).text
    assert 'id="s61"' in found and 'id="s28"' not in found
    assert 'id="s28"' in site.client.get("/archive", params={"q": "贾鑫康"}).text
    nothing = site.client.get("/archive", params={"q": "%"}).text
    assert 'id="s61"' not in nothing  # LIKE's wildcard is a plain character
    hostile = site.client.get(
        "/archive", params={"q": "<script>alert(1)</script>\x00" + "长" * 500}
    )
    assert hostile.status_code == 200
    assert "<script>alert(1)" not in hostile.text and "&lt;script&gt;" in hostile.text


def test_calendar_feed_holds_every_upcoming_session_and_the_cancelled_one(site: Live) -> None:
    response = site.client.get("/calendar.ics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/calendar")
    events = {str(e["uid"]): e for e in Calendar.from_ical(response.content).walk("VEVENT")}
    domain = site.settings.sender_domain
    assert f"salon-95@{domain}" in events and f"salon-61@{domain}" in events
    assert len(events) == 60
    assert str(events[f"salon-96@{domain}"]["status"]) == "CANCELLED"
    assert str(events[f"salon-95@{domain}"]["status"]) == "CONFIRMED"
    single = Calendar.from_ical(site.client.get("/sessions/95.ics").content)
    (event,) = single.walk("VEVENT")
    assert str(event["uid"]) == f"salon-95@{domain}"
    assert str(event["sequence"]) == str(events[f"salon-95@{domain}"]["sequence"])


def test_feed_xml_is_atom(site: Live) -> None:
    response = site.client.get("/feed.xml")
    assert response.status_code == 200
    atom = "{http://www.w3.org/2005/Atom}"
    root = ElementTree.fromstring(response.content)
    assert root.tag == f"{atom}feed"
    for field in ("id", "updated", "title"):
        assert root.find(f"{atom}{field}") is not None
    entries = root.findall(f"{atom}entry")
    assert len(entries) == 60
    for entry in entries:
        assert entry.findtext(f"{atom}id") and entry.findtext(f"{atom}updated")
        link = entry.find(f"{atom}link")
        assert link is not None and link.get("href", "").startswith(site.settings.base_url)
    assert any("测试专题 <script>" in (e.findtext(f"{atom}title") or "") for e in entries)


@pytest.mark.parametrize("path", ["/", "/sessions/61", "/archive", "/calendar.ics", "/feed.xml"])
def test_cache_headers_and_304(site: Live, path: str) -> None:
    first = site.client.get(path)
    assert first.status_code == 200
    assert "max-age=" in first.headers["cache-control"]
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = site.client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert site.client.get(path, headers={"If-Modified-Since": modified}).status_code == 304
    assert site.client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert site.client.get(path, headers={"If-Modified-Since": old}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/", "/sessions/61", "/archive", "/calendar.ics", "/feed.xml", "/sessions/61.ics"]
)
def test_head_answers_like_get_without_a_body(site: Live, path: str) -> None:
    """Link checkers, feed readers and calendar apps ask with HEAD first."""
    got = site.client.get(path)
    head = site.client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers.get("etag") == got.headers.get("etag")
    assert site.client.head("/sessions/999").status_code == 404


def test_public_pages_may_be_indexed_and_personal_pages_not(site: Live) -> None:
    for path in ("/", "/sessions/61", "/archive"):
        assert '<meta name="robots" content="index, follow">' in site.client.get(path).text
    rsvp, _ = site.links(0)
    assert '<meta name="robots" content="noindex">' in site.client.get(rsvp).text


def test_a_reimport_changes_the_validator(site: Live, tmp_path: Path) -> None:
    before = site.client.get("/archive").headers["etag"]
    from datetime import timedelta

    from tests.webapp import write_record

    with session_scope(site.settings.database_url) as db:
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(days=5), theme="新专题")],
            timezone="Asia/Shanghai",
        )
    after = site.client.get("/archive", headers={"If-None-Match": before})
    assert after.status_code == 200 and after.headers["etag"] != before


def test_unknown_session_is_a_clear_404(site: Live) -> None:
    for path in ("/sessions/999", "/sessions/abc", "/sessions/" + "9" * 40, "/sessions/-1"):
        response = site.client.get(path)
        assert response.status_code == 404, path
        assert "没有这一期活动" in response.text


def test_no_subscriber_data_on_any_public_page(site: Live) -> None:
    rsvp, _ = site.links(0)
    page = site.client.get(rsvp).text
    from tests.webapp import form_token

    site.client.post(rsvp.split("?")[0], data={"answer": "yes", "csrf": form_token(page)})
    assert site.rsvps(), "the seeded answer was recorded"
    for path in ("/", "/sessions/95", "/archive", "/archive?q=w0", "/calendar.ics", "/feed.xml"):
        text = site.client.get(path).text
        for i in range(3):
            assert f"w{i}@example.org" not in text and f"访客{i}" not in text, path


@pytest.mark.parametrize("width", ["phone", "desktop"])
@pytest.mark.parametrize(
    ("name", "path", "expect"),
    [
        ("home", "/", "近期活动"),
        ("session-12", "/sessions/12", "回放与资料"),
        ("session-96", "/sessions/96", "本期活动已取消"),
        ("archive", "/archive", "沙龙回顾"),
        ("archive-search", "/archive?q=叶寅", "找到 1 期"),
        ("session-404", "/sessions/999", "没有这一期活动"),
    ],
)
def test_public_pages_in_chromium(
    site: Live, browser: Any, width: str, name: str, path: str, expect: str
) -> None:
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(site.settings.base_url + path)
        assert page.get_by_text(expect).first.is_visible()
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= WIDTHS[width]["width"], (path, scroll_width)
        page.screenshot(path=str(screenshot_path(f"public-{name}-{width}")), full_page=True)
    finally:
        page.close()


def test_archive_search_works_without_javascript(site: Live, browser: Any) -> None:
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(site.settings.base_url + "/archive")
        page.get_by_role("searchbox").fill("叶寅")
        page.get_by_role("button", name="搜索").click()
        page.wait_for_load_state()
        assert page.get_by_text("找到 1 期").is_visible()
        assert page.locator("#s61").count() == 1
    finally:
        context.close()
