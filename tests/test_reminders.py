"""Reminder campaigns: who gets one, when one is refused, what it says, and how it is sent
(service, real SMTP server, CLI, HTTP API)."""

from __future__ import annotations

import email
import email.policy
import html as html_module
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from newsletter.campaigns import recipients, service
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus, Delivery
from newsletter.cli import app as cli_app
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.installation import installation_token_for
from newsletter.mail.message import format_message_id
from newsletter.migrate import upgrade
from newsletter.rendering import REMINDER, InvitationTemplate, Recipient, render_invitation
from newsletter.rsvp.checkin import make_code
from newsletter.rsvp.models import Answer
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from newsletter.tokens import Purpose, verify
from subscribers.models import Subscriber, SubscriberStatus
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_rendering import HOSTILE_NAMES, ORGANIZER, TIMEZONE, recipient, record
from tests.webapp import Live, form_token, live
from tests.worker import wait_for_worker

__all__ = ["live"]  # the fixture

# 04:30 UTC is 12:30 in Shanghai: the mail must show the session's local time.
STARTS, ENDS = "2099-12-05T04:30:00+00:00", "2099-12-05T06:30:00+00:00"
WHEN = "12月05日（周六）12:30–14:30"
SUBJECT = "提醒：第 96 期机器学习开发者沙龙 · 12月05日（周六）12:30"


def write_record(folder: Path, number: int, **changes: Any) -> Path:
    """A hybrid session (a room and a stream) on 2099-12-05, 12:30 Shanghai time."""
    data: dict[str, Any] = {
        "number": number,
        "series": "机器学习开发者沙龙",
        "theme": "提醒专题",
        "title": "联邦学习 <b>实战</b>",
        "starts_at": STARTS,
        "ends_at": ENDS,
        "timezone": "Asia/Shanghai",
        "venue": {
            "mode": "hybrid",
            "name": "蒙民伟楼348室",
            "address": "杭州",
            "streams": [{"name": "Mo平台直播", "url": f"https://momodel.cn/live/{number}"}],
        },
        "registration": {"capacity": 4},
        "talks": [{"kind": "paper", "speaker": "贾鑫康", "title": "联邦学习背景下的域适应"}],
    }
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number:03d}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def setup(url: str, folder: Path, *records: Path, people: int) -> list[int]:
    """Import ``records`` and add ``people`` subscribers p0…; returns their ids."""
    with session_scope(url) as db:
        import_records(db, list(records), timezone="Asia/Shanghai")
        added = [
            Subscriber(email=f"p{i}@example.org", name=f"订阅者{i}", created_at=utcnow())
            for i in range(people)
        ]
        db.add_all(added)
        db.flush()
        return [p.id for p in added]


def answer(url: str, number: int, person: int, reply: Answer) -> None:
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, number)
        assert salon is not None
        record_answer(db, salon.id, person, reply)


def set_status(url: str, person: int, status: SubscriberStatus) -> None:
    with session_scope(url) as db:
        db.execute(update(Subscriber).where(Subscriber.id == person).values(status=status))


def delivered_to(url: str, campaign_id: int) -> set[int]:
    with session_scope(url) as db:
        return set(
            db.scalars(select(Delivery.subscriber_id).where(Delivery.campaign_id == campaign_id))
        )


def links_of(html: str) -> dict[str, str]:
    """Anchor text → href of an HTML part (hrefs unescaped)."""
    return {
        text.strip(): html_module.unescape(href)
        for href, text in re.findall(r'<a\s[^>]*?href="([^"]*)"[^>]*>([^<]*)</a>', html)
    }


def crlf(part: str) -> str:
    """A body part as MIME carries text: CRLF line ends."""
    return part.replace("\n", "\r\n")


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


# --- who gets a reminder, and when there is none -----------------------------------------------


def test_only_confirmed_active_yes_get_a_delivery(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "records"
    ids = setup(db_url, folder, write_record(folder, 96), write_record(folder, 97), people=9)
    yes, also_yes, waiting, maybe, no, gone, bounced, silent, other = ids
    for person in (yes, also_yes, gone, bounced, waiting):  # capacity 4: the fifth waits
        answer(db_url, 96, person, Answer.yes)
    answer(db_url, 96, maybe, Answer.maybe)
    answer(db_url, 96, no, Answer.no)
    answer(db_url, 97, other, Answer.yes)  # a yes for another session does not count
    set_status(db_url, gone, SubscriberStatus.unsubscribed)
    set_status(db_url, bounced, SubscriberStatus.bounced)
    with session_scope(db_url) as db:
        first = service.create_reminder(db, 96)
        second = service.create_reminder(db, 96, subject="  明天见  ")
        summary = [(c.id, c.kind, c.status, c.subject, c.recipient_count) for c in (first, second)]
    assert summary == [
        (first.id, CampaignKind.reminder, CampaignStatus.draft, SUBJECT, 2),
        (second.id, CampaignKind.reminder, CampaignStatus.draft, "明天见", 2),
    ]
    # A second reminder is a campaign of its own, again to each confirmed person once.
    assert delivered_to(db_url, first.id) == delivered_to(db_url, second.id) == {yes, also_yes}
    assert silent not in delivered_to(db_url, first.id)
    with session_scope(db_url) as db:
        assert service.progress(db, first.id).kind == CampaignKind.reminder


def test_refusals_are_clear_and_leave_no_campaign(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "records"
    past = {"starts_at": "2019-12-05T12:30:00+08:00", "ends_at": "2019-12-05T14:30:00+08:00"}
    (person,) = setup(
        db_url,
        folder,
        write_record(folder, 96),
        write_record(folder, 97, cancelled=True),
        write_record(folder, 98, **past),
        people=1,
    )
    answer(db_url, 96, person, Answer.maybe)
    cases: list[tuple[int, type[Exception], str]] = [
        (99, NotFoundError, "session 99 is not in the database"),
        (96, InvalidStateError, "nobody has a confirmed seat for session 96"),
        (97, InvalidStateError, "session 97 is cancelled"),
        (98, InvalidStateError, r"session 98 is over \(it was held 12月05日（周四）12:30–14:30\)"),
    ]
    for number, error, message in cases:
        with session_scope(db_url) as db, pytest.raises(error, match=message):
            service.create_reminder(db, number)
    set_status(db_url, person, SubscriberStatus.active)
    answer(db_url, 96, person, Answer.yes)
    set_status(db_url, person, SubscriberStatus.unsubscribed)
    with session_scope(db_url) as db, pytest.raises(InvalidStateError, match="nobody"):
        service.create_reminder(db, 96)  # the only yes unsubscribed since
    with session_scope(db_url) as db:
        assert db.scalar(select(func.count()).select_from(Campaign)) == 0
        assert recipients.count_confirmed(db, 1) == 0


def test_an_invitation_campaign_cannot_be_made_a_reminder(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "records"
    setup(db_url, folder, write_record(folder, 96), people=1)
    with session_scope(db_url) as db, pytest.raises(ValueError, match="create_reminder"):
        service.create_campaign(db, 96, kind=CampaignKind.reminder)


# --- what the reminder says --------------------------------------------------------------------


@pytest.mark.parametrize("number", [61, 28])
def test_reminder_personalised_equals_full_render(number: int) -> None:
    session = record(number)
    template = InvitationTemplate.build(
        session, [], organizer=ORGANIZER, timezone=TIMEZONE, template=REMINDER
    )
    for i, name in enumerate(HOSTILE_NAMES):
        person = recipient(name, token=f"t{i}")
        full = render_invitation(
            session, [], person, organizer=ORGANIZER, timezone=TIMEZONE, template=REMINDER
        )
        assert template.personalise(person) == full
        assert template.personalise_utf8(person).html == full.html.encode("utf-8")


def test_reminder_shows_time_place_talks_and_links_but_no_archive() -> None:
    person = recipient("李雷")
    sent = InvitationTemplate.build(
        record(28), [], organizer=ORGANIZER, timezone=TIMEZONE, template=REMINDER
    ).personalise(person)
    assert sent.subject == "提醒：第 28 期机器学习开发者沙龙 · 12月05日（周四）12:30"
    anchors = links_of(sent.html)
    assert anchors["添加到日历"] == person.calendar_url
    assert anchors["不能来了"] == person.rsvp_no_url
    assert anchors["改为“可能”"] == person.rsvp_maybe_url
    assert anchors["退订"] == person.unsubscribe_url
    assert person.rsvp_yes_url not in sent.html + sent.text  # they said yes already
    for part in (sent.html, sent.text):
        assert "李雷，你好！" in part and "你已报名参加第 28 期机器学习开发者沙龙" in part
        assert "12月05日（周四）12:30–14:30" in part and "浙江大学紫金港校区蒙民伟楼348室" in part
        assert "联邦学习框架—fate" in part and "贾鑫康" in part
        assert "沙龙回顾" not in part and "期数" not in part
    for url in (person.calendar_url, person.rsvp_no_url, person.unsubscribe_url):
        assert url in sent.text
    online = InvitationTemplate.build(
        record(61), [], organizer=ORGANIZER, timezone=TIMEZONE, template=REMINDER
    ).personalise(person)
    assert "观看方式" in online.html and "https://momodel.cn/" in links_of(online.html).values()


# --- sent for real -----------------------------------------------------------------------------


@pytest.fixture
def smtp(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


def test_reminder_through_a_real_smtp_server_reaches_exactly_the_confirmed(
    configure: Configure, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = configure(
        mail_url=f"smtp://127.0.0.1:{smtp.port}", bounce_address="bounces@example.org"
    )
    url = settings.database_url
    upgrade(url)
    folder = tmp_path / "records"
    yes, also_yes, maybe, no = setup(url, folder, write_record(folder, 96), people=4)
    for person, reply in ((yes, "yes"), (also_yes, "yes"), (maybe, "maybe"), (no, "no")):
        answer(url, 96, person, Answer(reply))
    with session_scope(url) as db:
        campaign_id = service.create_reminder(db, 96).id
        salon = sessions_repo.get_by_number(db, 96)
        assert salon is not None
        session_id, stored = salon.id, sessions_repo.record_of(salon)
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    enqueue(start_campaign, campaign_id)  # sending again mails nobody twice
    wait_for_worker()
    received = smtp.handler.received
    assert sorted(r.rcpt_tos[0] for r in received) == ["p0@example.org", "p1@example.org"]
    with session_scope(url) as db:
        progress = service.progress(db, campaign_id)
    assert (progress.status, progress.sent, progress.total) == (CampaignStatus.finished, 2, 2)
    for item in received:
        person = {"p0@example.org": yes, "p1@example.org": also_yes}[item.rcpt_tos[0]]
        message = parse(item.data)
        # The check-in QR code rides along as an inline image (see tests/test_checkin.py).
        assert message.get_content_type() == "multipart/related"
        assert str(message["Subject"]) == SUBJECT
        delivery_id = int(item.mail_from.removeprefix("bounces+").split("@")[0])
        assert message["Message-ID"] == format_message_id(
            delivery_id, "example.org", installation_token_for(url)
        )
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        listed = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
        assert listed[1].startswith("mailto:bounces@example.org")
        text, html = parts(message)
        anchors = links_of(html)
        assert anchors["退订"] == listed[0]
        assert anchors["添加到日历"] == "https://salon.example.org/sessions/96.ics"
        change = urlsplit(anchors["不能来了"])
        assert parse_qs(change.query) == {"answer": ["no"]}
        rsvp = verify(Purpose.RSVP, change.path.removeprefix("/rsvp/"), settings.secret_keys)
        assert rsvp == {"s": session_id, "u": person}
        leave = verify(Purpose.UNSUBSCRIBE, listed[0].rsplit("/", 1)[1], settings.secret_keys)
        assert leave == {"u": person, "c": campaign_id}
        assert WHEN in text and "蒙民伟楼348室" in html and "https://momodel.cn/live/96" in text
        code = make_code(settings.secret_keys, 96, person)
        assert "联邦学习 &lt;b&gt;实战&lt;/b&gt;" in html and "沙龙回顾" not in html
        # The personalised mail is a full render with the same links (in canonical CRLF form).
        full = render_invitation(
            stored,
            [],
            Recipient(
                name=f"订阅者{person - yes}",
                rsvp_yes_url=anchors["不能来了"].replace("answer=no", "answer=yes"),
                rsvp_maybe_url=anchors["改为“可能”"],
                rsvp_no_url=anchors["不能来了"],
                calendar_url=anchors["添加到日历"],
                unsubscribe_url=anchors["退订"],
                preferences_url=anchors["订阅设置"],
            ),
            subject=SUBJECT,
            organizer=settings.organizer,
            timezone="Asia/Shanghai",
            template=REMINDER,
            extra={"checkin_code": code, "checkin_cid": f"{code}.qr@example.org"},
        )
        assert (html, text) == (crlf(full.html), crlf(full.text))


def outbox(folder: Path) -> list[EmailMessage]:
    return [parse(path.read_bytes()) for path in sorted(folder.glob("*.eml"))]


def test_cli_remind_sends_and_refuses_cleanly(configure: Configure, tmp_path: Path) -> None:
    settings = configure(database_url=f"sqlite:///{tmp_path / 'var' / 'remind.db'}")
    upgrade(settings.database_url)
    folder = tmp_path / "records"
    past = {"starts_at": "2019-12-05T12:30:00+08:00", "ends_at": "2019-12-05T14:30:00+08:00"}
    ids = setup(
        settings.database_url,
        folder,
        write_record(folder, 96),
        write_record(folder, 98, **past),
        people=3,
    )
    answer(settings.database_url, 96, ids[0], Answer.yes)
    answer(settings.database_url, 96, ids[2], Answer.maybe)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["campaign", "remind", "96", "--subject", "明天见", "--wait"])
    assert result.exit_code == 0, result.output
    assert "reminder campaign 1: 1 recipients" in result.stderr
    assert "finished; 1 sent, 0 failed" in result.stdout
    (mail,) = outbox(tmp_path / "var" / "outbox")
    assert (mail["To"].addresses[0].addr_spec, str(mail["Subject"])) == ("p0@example.org", "明天见")
    again = runner.invoke(cli_app, ["campaign", "remind", "96", "--no-wait"])
    assert again.exit_code == 0 and "campaign 2 (session 96): finished; 1 sent" in again.stdout
    for number, message in (("999", "session 999 is not in"), ("98", "session 98 is over")):
        refused = runner.invoke(cli_app, ["campaign", "remind", number])
        assert refused.exit_code == 1
        assert refused.stderr.startswith("error:") and message in refused.stderr
        assert "Traceback" not in refused.output and isinstance(refused.exception, SystemExit)
    assert len(outbox(tmp_path / "var" / "outbox")) == 2
    shown = runner.invoke(cli_app, ["campaign", "remind", "--help"])
    assert shown.exit_code == 0 and "--no-wait" in shown.stdout


# --- over HTTP ---------------------------------------------------------------------------------

ADMIN = {"Authorization": "Bearer test-admin-token"}


def test_api_reminder_is_sent_and_its_links_work(live: Live) -> None:
    api = live.client
    none_yet = api.post("/api/sessions/95/reminders", headers=ADMIN)
    assert none_yet.status_code == 409 and "nobody" in none_yet.json()["detail"]
    assert api.post("/api/sessions/999/reminders", headers=ADMIN).status_code == 404
    assert api.post("/api/sessions/95/reminders").status_code == 401
    first, _ = live.links(0)
    second, _ = live.links(1)
    for link in (first, second):  # one seat: w0 confirmed, w1 on the waitlist
        api.post(link, data={"answer": "yes", "csrf": form_token(api.get(link).text)})
    sent = api.post("/api/sessions/95/reminders", json={"subject": "明天见"}, headers=ADMIN)
    assert sent.status_code == 201
    assert (sent.json()["kind"], sent.json()["subject"]) == ("reminder", "明天见")
    wait_for_worker()  # the API hands the sending over and answers at once
    body = api.get(f"/api/campaigns/{sent.json()['id']}", headers=ADMIN).json()
    assert body["status"] == "finished"
    assert (body["total"], body["sent"]) == (1, 1)
    folder = Path(live.settings.mail_url.removeprefix("file://"))
    (mail,) = [m for m in outbox(folder) if str(m["Subject"]) == "明天见"]
    assert mail["To"].addresses[0].addr_spec == "w0@example.org"
    anchors = links_of(parts(mail)[1])
    # The change link opens the answer page; a person's POST records the "no".
    change = api.get(anchors["不能来了"])
    assert change.status_code == 200 and "第 95 期" in change.text
    api.post(anchors["不能来了"], data={"answer": "no", "csrf": form_token(change.text)})
    assert sorted(live.rsvps()) == [(live.people[0], "no", False), (live.people[1], "yes", False)]
    calendar = api.get(anchors["添加到日历"])
    assert calendar.status_code == 200
    assert calendar.headers["content-type"].startswith("text/calendar")
    assert api.get(anchors["退订"]).status_code == 200
    # A second reminder reaches whoever holds a seat now: the promoted w1.
    again = api.post("/api/sessions/95/reminders", headers=ADMIN)
    assert again.status_code == 201 and again.json()["subject"].startswith("提醒：第 95 期")
    wait_for_worker()
    (latest,) = [m for m in outbox(folder) if str(m["Subject"]).startswith("提醒：")]
    assert latest["To"].addresses[0].addr_spec == "w1@example.org"
    spec = api.get("/openapi.json").json()
    assert "post" in spec["paths"]["/api/sessions/{number}/reminders"]
