"""The waitlist's mails and timing rules on SQLite and PostgreSQL: the waitlisted learn their
place, the promotion's subject leads with the news, inside the promotion cutoff nobody moves
up on their own and the organizer is told once, a promoted seat is confirmed in time or
passes to the next in line, and no seat is ever given twice."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.rsvp import promotion
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.models import Answer, Rsvp
from newsletter.rsvp.service import Recorded, record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tasks import waitlist as waitlist_task
from tasks.rsvp import send_rsvp_notices
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.webapp import Live, form_token, live

__all__ = ["live"]  # the fixture of the browser tests (the browser comes from conftest)

RECORD = """\
number: 91
series: 机器学习开发者沙龙
title: 候补测试
starts_at: {starts}
ends_at: {ends}
venue: {{mode: offline, name: 蒙民伟楼348室}}
registration: {{capacity: {capacity}{extra}}}
talks: [{{kind: paper, title: A}}]
"""

START = utcnow().replace(microsecond=0) + timedelta(days=3)


def setup(
    url: str, tmp_path: Path, *, capacity: int, people: int, extra: str = ""
) -> tuple[int, list[int]]:
    path = tmp_path / "091.yaml"
    path.write_text(
        RECORD.format(
            starts=START.isoformat(),
            ends=(START + timedelta(hours=2)).isoformat(),
            capacity=capacity,
            extra=extra,
        ),
        encoding="utf-8",
    )
    with session_scope(url) as db:
        import_records(db, [path], timezone="Asia/Shanghai")
        subscribers = [
            Subscriber(email=f"w{i}@example.org", name=f"W{i}", created_at=utcnow())
            for i in range(people)
        ]
        db.add_all(subscribers)
        db.flush()
        salon = sessions_repo.get_by_number(db, 91)
        assert salon is not None
        return salon.id, [s.id for s in subscribers]


def answer(url: str, sid: int, person: int, value: Answer, now: datetime) -> Recorded:
    with session_scope(url) as db:
        return record_answer(db, sid, person, value, now=now)


def mails(tmp_path: Path, clock: pytest.MonkeyPatch | None = None) -> list[EmailMessage]:
    """Every mail sent so far (the file outbox), after the notice outbox is sent; with
    ``clock``, the sender runs a week from now (the tests' answers are given on a clock ahead
    of the wall's, and their mails are due then)."""
    if clock is not None:
        week = utcnow() + timedelta(days=7)
        clock.setattr("newsletter.rsvp.outbox.utcnow", lambda: week)
    send_rsvp_notices(None)
    found = []
    for path in sorted((tmp_path / "var" / "outbox").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def to(messages: list[EmailMessage], address: str) -> list[EmailMessage]:
    return [m for m in messages if m["To"].addresses[0].addr_spec == address]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def seats(url: str, sid: int) -> tuple[int, int, int]:
    """(seats taken by confirmed "yes", capacity, people waiting), from the answers."""
    with session_scope(url) as db:
        salon = sessions_repo.get_by_id(db, sid)
        assert salon is not None and salon.capacity is not None
        rows = db.scalars(select(Rsvp).where(Rsvp.session_id == sid)).all()
        taken = sum(1 + r.guests for r in rows if r.answer == Answer.yes and not r.waitlisted)
        waiting = sum(1 for r in rows if r.answer == Answer.yes and r.waitlisted)
        assert (salon.seats_taken, salon.waiting) == (taken, waiting)  # counters agree
        return taken, salon.capacity, waiting


@pytest.fixture
def mailed(db_url: str, configure: Configure) -> Settings:
    return configure(database_url=db_url)


def test_the_waitlisted_learn_their_place_and_a_promotion_leads_with_the_news(
    db_url: str, tmp_path: Path, mailed: Settings
) -> None:
    sid, people = setup(db_url, tmp_path, capacity=1, people=3)
    now = utcnow()
    answer(db_url, sid, people[0], Answer.yes, now)
    answer(db_url, sid, people[1], Answer.yes, now)
    answer(db_url, sid, people[2], Answer.yes, now)
    sent = mails(tmp_path)
    second, third = to(sent, "w1@example.org"), to(sent, "w2@example.org")
    assert [m["Subject"] for m in second] == ["你在候补名单第 1 位：第 91 期机器学习开发者沙龙"]
    assert [m["Subject"] for m in third] == ["你在候补名单第 2 位：第 91 期机器学习开发者沙龙"]
    body = text_of(third[0])
    assert "你在候补名单第 2 位" in body
    assert "https://salon.example.org/rsvp/" in body  # their RSVP page
    assert "w2@example.org" not in body.split("/rsvp/")[1]
    answer(db_url, sid, people[0], Answer.no, now)
    after = to(mails(tmp_path), "w1@example.org")
    assert len(after) == 2
    promoted = [m for m in after if m["Subject"].startswith("你获得了名额：第 91 期")]
    assert len(promoted) == 1
    assert promoted[0].get_body(("calendar",)) is not None
    assert seats(db_url, sid) == (1, 1, 1)


def test_inside_the_cutoff_nobody_is_promoted_and_the_organizer_is_told_once(
    db_url: str, tmp_path: Path, mailed: Settings
) -> None:
    sid, people = setup(db_url, tmp_path, capacity=1, people=3, extra=", promotion_cutoff: PT24H")
    early = START - timedelta(days=2)
    answer(db_url, sid, people[0], Answer.yes, early)
    answer(db_url, sid, people[1], Answer.yes, early)
    inside = START - timedelta(hours=12)
    freed = answer(db_url, sid, people[0], Answer.no, inside)
    assert freed.promoted == []
    assert seats(db_url, sid) == (0, 1, 1)
    with session_scope(db_url) as db:
        salon = sessions_repo.get_by_id(db, sid)
        assert salon is not None
        line = promotion.held_line(salon, inside)
        assert line is not None and "不会自动递补" in line
        assert promotion.held_line(salon, early) is None  # outside the cutoff: nothing to say
    told = []
    for tick in (inside, inside + timedelta(minutes=1), inside + timedelta(minutes=2)):
        with session_scope(db_url) as db:
            told += promotion.organizer_notices(db, mailed, tick)
    assert len(told) == 1  # once for the freed seat, however many ticks
    organizer = email.message_from_bytes(told[0].mail.data, policy=email.policy.default)
    assert organizer["To"].addresses[0].addr_spec == "salon@example.org"
    assert "第 91 期" in organizer["Subject"]
    # Another seat freed later: told again, once.
    answer(db_url, sid, people[2], Answer.yes, inside + timedelta(minutes=3))  # takes the seat
    answer(db_url, sid, people[2], Answer.no, inside + timedelta(minutes=4))
    with session_scope(db_url) as db:
        again = promotion.organizer_notices(db, mailed, inside + timedelta(minutes=5))
    with session_scope(db_url) as db:
        again += promotion.organizer_notices(db, mailed, inside + timedelta(minutes=6))
    assert len(again) == 1


def test_a_promoted_person_who_confirms_keeps_the_seat(
    db_url: str, tmp_path: Path, mailed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, people = setup(db_url, tmp_path, capacity=1, people=2, extra=", confirm_within: PT12H")
    now = START - timedelta(days=2)
    answer(db_url, sid, people[0], Answer.yes, now)
    answer(db_url, sid, people[1], Answer.yes, now)
    moved = answer(db_url, sid, people[0], Answer.no, now + timedelta(minutes=1))
    assert moved.promoted == [people[1]]
    with session_scope(db_url) as db:
        held = rsvp_repo.get(db, sid, people[1])
        assert held is not None and held.confirm_by == now + timedelta(minutes=1, hours=12)
        assert promotion.seat_deadline(held, "Asia/Shanghai", now) is not None
        late = now + timedelta(hours=13)
        assert promotion.seat_deadline(held, "Asia/Shanghai", late) is None  # past: no button
    promoted = [
        m
        for m in to(mails(tmp_path, monkeypatch), "w1@example.org")
        if "你获得了名额" in m["Subject"]
    ]
    assert len(promoted) == 1 and "前打开答复页面确认" in text_of(promoted[0])
    with session_scope(db_url) as db:
        assert promotion.confirm_seat(db, sid, people[1], now + timedelta(hours=2))
    with session_scope(db_url) as db:
        assert not promotion.confirm_seat(db, sid, people[1], now + timedelta(hours=3))  # once
        assert promotion.lapse_due(db, now + timedelta(days=1)) == []  # confirmed: kept
        kept = rsvp_repo.get(db, sid, people[1])
        assert kept is not None and (kept.answer, kept.waitlisted) == (Answer.yes, False)
        assert promotion.seat_deadline(kept, "Asia/Shanghai", now) is None
    assert seats(db_url, sid) == (1, 1, 0)


def test_a_seat_not_confirmed_in_time_passes_to_the_next_in_line(
    db_url: str, tmp_path: Path, mailed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, people = setup(db_url, tmp_path, capacity=1, people=4, extra=", confirm_within: PT12H")
    now = START - timedelta(days=2)
    for person in people:
        answer(db_url, sid, person, Answer.yes, now)
    answer(db_url, sid, people[0], Answer.no, now + timedelta(minutes=1))
    assert seats(db_url, sid) == (1, 1, 2)
    before = to(mails(tmp_path, monkeypatch), "w1@example.org")
    assert [m["Subject"].split("：")[0] for m in before] == ["你获得了名额"]
    with session_scope(db_url) as db:
        assert promotion.lapse_due(db, now + timedelta(hours=11)) == []  # not yet
        assert not promotion.confirm_seat(db, sid, people[2], now)  # not theirs to confirm
    late = now + timedelta(hours=13)
    monkeypatch.setattr(waitlist_task, "utcnow", lambda: late)
    waitlist_task.waitlist_tick()  # beat's entry, on the controlled clock
    waitlist_task.waitlist_tick()  # again: nothing more passes on
    with session_scope(db_url) as db:
        lapsed = rsvp_repo.get(db, sid, people[1])
        nxt = rsvp_repo.get(db, sid, people[2])
        assert lapsed is not None and lapsed.answer == Answer.no
        assert nxt is not None and (nxt.answer, nxt.waitlisted) == (Answer.yes, False)
        assert nxt.confirm_by == late + timedelta(hours=12)
        assert not promotion.confirm_seat(db, sid, people[1], late)  # too late for them
    assert seats(db_url, sid) == (1, 1, 1)
    sent = mails(tmp_path, monkeypatch)
    subjects = {m["Subject"].split("：")[0] for m in to(sent, "w1@example.org")}
    assert subjects == {"你获得了名额", "名额已顺延"}
    assert any("你获得了名额" in m["Subject"] for m in to(sent, "w2@example.org"))
    assert "顺延" in text_of(next(m for m in sent if m["Subject"].startswith("名额已顺延")))


def test_a_seat_lapsing_inside_the_cutoff_waits_for_the_organizer(
    db_url: str, tmp_path: Path, mailed: Settings
) -> None:
    extra = ", promotion_cutoff: PT24H, confirm_within: PT12H"
    sid, people = setup(db_url, tmp_path, capacity=1, people=3, extra=extra)
    before = START - timedelta(hours=30)  # outside the cutoff: a promotion, due in 12 h
    for person in people:
        answer(db_url, sid, person, Answer.yes, START - timedelta(days=2))
    assert answer(db_url, sid, people[0], Answer.no, before).promoted == [people[1]]
    inside = START - timedelta(hours=17)  # its time ran out inside the cutoff
    with session_scope(db_url) as db:
        assert [lapsed.subscriber_id for lapsed in promotion.lapse_due(db, inside)] == [people[1]]
    assert seats(db_url, sid) == (0, 1, 1)  # nobody moved up: the organizer decides
    with session_scope(db_url) as db:
        told = promotion.organizer_notices(db, mailed, inside + timedelta(minutes=1))
    with session_scope(db_url) as db:
        told += promotion.organizer_notices(db, mailed, inside + timedelta(minutes=2))
    assert len(told) == 1


def test_without_the_settings_a_promotion_is_the_seat_at_once(
    db_url: str, tmp_path: Path, mailed: Settings
) -> None:
    sid, people = setup(db_url, tmp_path, capacity=2, people=5)
    now = START - timedelta(hours=1)  # inside any cutoff there could be: none is set
    for person in people:
        answer(db_url, sid, person, Answer.yes, now)
    answer(db_url, sid, people[0], Answer.no, now)
    answer(db_url, sid, people[1], Answer.maybe, now)
    with session_scope(db_url) as db:
        for person in people[2:4]:
            row = rsvp_repo.get(db, sid, person)
            assert row is not None and not row.waitlisted and row.confirm_by is None
        assert promotion.lapse_due(db, now + timedelta(days=1)) == []
    assert seats(db_url, sid) == (2, 2, 1)


def promote_with_a_seat_to_confirm(live: Live) -> str:
    """No. 95 (one seat) asks for a confirmation within 12 hours; person 1 waits, person 0
    says no, and person 1 holds the seat: their RSVP page."""
    url = live.settings.database_url
    with session_scope(url) as db:
        db.execute(
            update(SalonSession)
            .where(SalonSession.id == live.session_id)
            .values(confirm_within_s=43_200)
        )
    now = utcnow()
    answer(url, live.session_id, live.people[0], Answer.yes, now)
    answer(url, live.session_id, live.people[1], Answer.yes, now)
    assert answer(url, live.session_id, live.people[0], Answer.no, now).promoted
    return live.links(1)[0].split("?")[0]


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_a_promoted_person_confirms_the_seat_in_chromium(
    live: Live, browser: Any, width: str
) -> None:
    page_url = promote_with_a_seat_to_confirm(live)
    viewport = {"phone": PHONE, "desktop": DESKTOP}[width]
    page = browser.new_page(viewport=viewport)
    try:
        page.goto(live.settings.base_url + page_url)
        assert page.get_by_text("你已从候补名单递补获得名额").is_visible()
        page.screenshot(path=str(screenshot_path(f"rsvp-seat-{width}")), full_page=True)
        with session_scope(live.settings.database_url) as db:  # the GET confirmed nothing
            row = rsvp_repo.get(db, live.session_id, live.people[1])
            assert row is not None and row.confirm_by is not None
        button = page.get_by_role("button", name="确认我的名额")
        box = button.bounding_box()
        assert box is not None and box["width"] <= viewport["width"]
        button.click()
        page.wait_for_load_state()
        assert page.get_by_text("名额已确认").is_visible()
        page.screenshot(path=str(screenshot_path(f"rsvp-seat-done-{width}")), full_page=True)
    finally:
        page.close()
    with session_scope(live.settings.database_url) as db:
        row = rsvp_repo.get(db, live.session_id, live.people[1])
        assert row is not None and row.confirm_by is None and not row.waitlisted


def test_the_seat_confirmation_refuses_bad_requests(live: Live) -> None:
    page_url = promote_with_a_seat_to_confirm(live)
    seat = page_url + "/seat"
    assert live.client.post(seat, data={"csrf": "forged"}).status_code == 403
    assert live.client.post(seat, data={}).status_code in (400, 422)
    other = live.links(2)[0].split("?")[0]
    token = form_token(live.client.get(other).text)
    refused = live.client.post(other + "/seat", data={"csrf": token})
    assert refused.status_code == 409  # nothing of theirs to confirm
    token = form_token(live.client.get(page_url).text)
    assert live.client.post(seat, data={"csrf": token}).status_code == 200
    assert live.client.post(seat, data={"csrf": token}).status_code == 409  # once
    assert live.client.get(seat).status_code in (404, 405)  # a GET never confirms


def test_the_dashboard_says_when_a_freed_seat_waits_for_the_organizer(live: Live) -> None:
    url = live.settings.database_url
    with session_scope(url) as db:  # no. 95 starts within a month: inside this cutoff now
        db.execute(
            update(SalonSession)
            .where(SalonSession.id == live.session_id)
            .values(promotion_cutoff_s=30 * 86_400)
        )
    now = utcnow()
    answer(url, live.session_id, live.people[0], Answer.yes, now)
    answer(url, live.session_id, live.people[1], Answer.yes, now)
    assert answer(url, live.session_id, live.people[0], Answer.no, now).promoted == []
    response = live.client.post("/admin/login", data={"token": "test-admin-token"})
    assert response.status_code == 303
    page = live.client.get("/admin/sessions/95")
    assert page.status_code == 200
    assert "空出的 1 个名额不会自动递补" in page.text and "候补名单上有 1 人" in page.text
    waitlist_task.waitlist_tick()
    waitlist_task.waitlist_tick()  # told once
    folder = Path(live.settings.mail_url.removeprefix("file://"))
    told = [_parse(p) for p in folder.glob("*.eml")]
    told = [m for m in told if str(m["Subject"]).startswith("候补未自动递补")]
    assert [m["To"].addresses[0].addr_spec for m in told] == ["salon@example.org"]
    with session_scope(url) as db:
        salon = sessions_repo.get_by_id(db, live.session_id)
        assert salon is not None and salon.promotion_held_at is not None


def _parse(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_over_http_on_postgresql_a_no_holds_the_seat_for_the_next_to_confirm(
    configure: Configure, postgres_url: str, tmp_path: Path
) -> None:
    """The web app's own path on PostgreSQL (the answer statement on the driver pool): the
    promotion it makes holds the seat until confirm_by, and the button confirms it."""
    from tests.test_web_postgres import serve_on_postgres

    with serve_on_postgres(configure, postgres_url, tmp_path, 1) as live:
        with session_scope(live.settings.database_url) as db:
            db.execute(
                update(SalonSession)
                .where(SalonSession.id == live.session_id)
                .values(confirm_within_s=3_600)
            )
        pages = [live.links(person)[0] for person in range(3)]
        for rsvp in pages:
            token = form_token(live.client.get(rsvp).text)
            assert live.client.post(rsvp, data={"answer": "yes", "csrf": token}).status_code == 200
        token = form_token(live.client.get(pages[0]).text)
        assert live.client.post(pages[0], data={"answer": "no", "csrf": token}).status_code == 200
        with session_scope(live.settings.database_url) as db:
            held = rsvp_repo.get(db, live.session_id, live.people[1])
            assert held is not None and not held.waitlisted and held.promoted_at is not None
            assert held.confirm_by == held.promoted_at + timedelta(hours=1)
        seat_page = pages[1].split("?")[0]
        shown = live.client.get(seat_page).text
        assert "确认我的名额" in shown
        confirmed = live.client.post(seat_page + "/seat", data={"csrf": form_token(shown)})
        assert confirmed.status_code == 200 and "名额已确认" in confirmed.text
        assert seats(live.settings.database_url, live.session_id) == (1, 1, 1)


def test_beat_and_the_embedded_worker_run_the_waitlist(settings: Settings) -> None:
    from tasks.celery_app import app, beat_schedule

    entry = beat_schedule(settings)["waitlist"]
    assert entry == {"task": "waitlist.tick", "schedule": settings.sweep_interval}
    app.loader.import_default_modules()  # what the embedded worker does before it starts
    assert "waitlist.tick" in app.tasks


def test_a_relay_that_is_down_keeps_the_organizers_mail_for_the_next_beat(
    db_url: str,
    tmp_path: Path,
    configure: Configure,
    start_smtp: Callable[..., SmtpServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Told" is claimed before the mail goes; a mail the relay did not take gives the claim
    back, so the next beat tells the organizer instead of nobody ever doing so."""
    relay = start_smtp()
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    sid, people = setup(db_url, tmp_path, capacity=1, people=2, extra=", promotion_cutoff: PT24H")
    early = START - timedelta(days=2)
    answer(db_url, sid, people[0], Answer.yes, early)
    answer(db_url, sid, people[1], Answer.yes, early)
    inside = START - timedelta(hours=12)
    answer(db_url, sid, people[0], Answer.no, inside)
    monkeypatch.setattr(waitlist_task, "utcnow", lambda: inside)
    relay.stop()
    waitlist_task.waitlist_tick()  # the relay is down: nothing told, nothing recorded as told
    with session_scope(db_url) as db:
        salon = sessions_repo.get_by_id(db, sid)
        assert salon is not None and salon.promotion_held_at is None
    relay.restart()
    monkeypatch.setattr(waitlist_task, "utcnow", lambda: inside + timedelta(minutes=1))
    waitlist_task.waitlist_tick()
    waitlist_task.waitlist_tick()  # told once, not again
    told = [r for r in relay.handler.received if r.rcpt_tos == ["salon@example.org"]]
    assert len(told) == 1
    subject = email.message_from_bytes(told[0].data, policy=email.policy.default)["Subject"]
    assert str(subject).startswith("候补未自动递补")
