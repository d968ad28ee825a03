"""The follow-up and its feedback form: who gets the follow-up (those checked in, or with
--all everyone who answered yes or maybe), once per session and only after it ended; what
the mail carries (the record's recordings and slides, a signed feedback link with no
address); the feedback page over HTTP (a GET records nothing, a POST records, a second
answer replaces the first, tampered, early and closed links are clear 4xx pages, posts are
limited per client); the dashboard's button and figures."""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from newsletter.campaigns.followup import FollowupExists, create_followup
from newsletter.campaigns.models import Campaign, CampaignKind, Delivery
from newsletter.cli import app as cli_app
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.migrate import upgrade
from newsletter.rsvp import checkin_repo
from newsletter.rsvp.feedback import feedback_link
from newsletter.rsvp.models import Answer, Feedback
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.tokens import Purpose, verify
from newsletter.web import feedback as feedback_web
from newsletter.web.login_throttle import LoginThrottle
from tests.conftest import Configure
from tests.test_admin import log_in
from tests.test_reminders import answer, links_of, outbox, setup, write_record
from tests.webapp import Live, form_token, live

__all__ = ["live"]  # the fixture

LINKS = [
    {"title": "活动回放（B站）", "url": "https://www.bilibili.com/video/BV1followup"},
    {"title": "讲义 PDF", "url": "https://example.org/slides/96.pdf"},
]


def end_session(url: str, number: int, *, ago: timedelta = timedelta(hours=1)) -> None:
    """Move the session's times so that it ended ``ago`` (answers were given before)."""
    with session_scope(url) as db:
        db.execute(
            update(SalonSession)
            .where(SalonSession.number == number)
            .values(starts_at=utcnow() - ago - timedelta(hours=2), ends_at=utcnow() - ago)
        )


def session_id(url: str, number: int) -> int:
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, number)
        assert salon is not None
        return salon.id


def check_in(url: str, number: int, *people: int) -> None:
    sid = session_id(url, number)
    with session_scope(url) as db:
        for person in people:
            assert checkin_repo.mark_present(db, sid, person, utcnow())


def delivered_to(url: str, campaign_id: int) -> set[int]:
    with session_scope(url) as db:
        return set(
            db.scalars(select(Delivery.subscriber_id).where(Delivery.campaign_id == campaign_id))
        )


# --- who gets it, once, and when ---------------------------------------------------------------


def test_followup_goes_to_those_checked_in_or_with_all_to_yes_and_maybe(
    db_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "records"
    records = [write_record(folder, n, links=LINKS) for n in (96, 97)]
    ids = setup(db_url, folder, *records, people=5)
    came, stayed_away, maybe, no, silent = ids
    for number in (96, 97):
        answer(db_url, number, came, Answer.yes)
        answer(db_url, number, stayed_away, Answer.yes)
        answer(db_url, number, maybe, Answer.maybe)
        answer(db_url, number, no, Answer.no)
        check_in(db_url, number, came)
        end_session(db_url, number)
    with session_scope(db_url) as db:
        present = create_followup(db, 96)
        everyone = create_followup(db, 97, everyone=True)
        made = [(c.kind, c.occasion, c.recipient_count) for c in (present, everyone)]
    assert made == [(CampaignKind.followup, "followup", 1), (CampaignKind.followup, "followup", 3)]
    assert delivered_to(db_url, present.id) == {came}
    assert delivered_to(db_url, everyone.id) == {came, stayed_away, maybe}
    assert silent not in delivered_to(db_url, everyone.id)
    # One per session: a second one, with or without --all, is refused and makes nothing.
    for again in (False, True):
        with session_scope(db_url) as db, pytest.raises(FollowupExists) as refused:
            create_followup(db, 96, everyone=again)
        assert f"session 96 already has its follow-up (campaign {present.id}" in str(refused.value)
    with session_scope(db_url) as db:
        assert db.scalar(select(func.count()).select_from(Campaign)) == 2


def test_followup_refusals_are_clear_and_leave_no_campaign(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "records"
    records = [write_record(folder, n) for n in (96, 97, 98)]
    records.append(write_record(folder, 99, cancelled=True))
    (person,) = setup(db_url, folder, *records, people=1)
    answer(db_url, 96, person, Answer.yes)  # not over yet
    answer(db_url, 97, person, Answer.yes)  # over, nobody checked in
    end_session(db_url, 97)
    end_session(db_url, 98)  # over, nobody answered
    end_session(db_url, 99)
    cases: list[tuple[int, bool, type[Exception], str]] = [
        (90, False, NotFoundError, "session 90 is not in the database"),
        (96, False, InvalidStateError, "session 96 has not ended yet"),
        (96, True, InvalidStateError, "session 96 has not ended yet"),
        (97, False, InvalidStateError, "nobody was checked in at session 97.*--all"),
        (98, True, InvalidStateError, "nobody answered yes or maybe for session 98"),
        (99, True, InvalidStateError, "session 99 was cancelled"),
    ]
    for number, everyone, error, message in cases:
        with session_scope(db_url) as db, pytest.raises(error, match=message):
            create_followup(db, number, everyone=everyone)
    with session_scope(db_url) as db:
        assert db.scalar(select(func.count()).select_from(Campaign)) == 0
        assert create_followup(db, 97, everyone=True).recipient_count == 1  # the hint works


# --- the mail, sent by the CLI -----------------------------------------------------------------


def test_cli_followup_mails_the_links_and_a_signed_feedback_link(
    configure: Configure, tmp_path: Path
) -> None:
    settings = configure(database_url=f"sqlite:///{tmp_path / 'var' / 'followup.db'}")
    url = settings.database_url
    upgrade(url)
    folder = tmp_path / "records"
    came, maybe = setup(url, folder, write_record(folder, 96, links=LINKS), people=2)
    answer(url, 96, came, Answer.yes)
    answer(url, 96, maybe, Answer.maybe)
    runner = CliRunner()
    early = runner.invoke(cli_app, ["campaign", "followup", "96"])
    assert early.exit_code == 1 and "session 96 has not ended yet" in early.stderr
    end_session(url, 96)
    nobody = runner.invoke(cli_app, ["campaign", "followup", "96"])
    assert nobody.exit_code == 1, nobody.output
    assert "nobody was checked in at session 96" in nobody.stderr
    assert "newsletter campaign followup 96 --all" in nobody.stderr
    check_in(url, 96, came)

    result = runner.invoke(cli_app, ["campaign", "followup", "96", "--wait"])
    assert result.exit_code == 0, result.output
    assert "follow-up campaign 1: 1 recipients" in result.stderr
    assert "finished; 1 sent, 0 failed" in result.stdout
    (mail,) = outbox(tmp_path / "var" / "outbox")
    assert isinstance(mail, EmailMessage)
    assert mail["To"].addresses[0].addr_spec == "p0@example.org"
    assert str(mail["Subject"]) == "感谢参加第 96 期机器学习开发者沙龙：提醒专题 · 回放、资料与反馈"
    text_part, html_part = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, html = str(text_part.get_content()), str(html_part.get_content())
    anchors = links_of(html)
    for link in LINKS:
        assert anchors[link["title"]] == link["url"]
        assert f"{link['title']}：{link['url']}" in text
    feedback_url = anchors["给本期打分"]
    assert feedback_url in text
    assert "example.org" not in urlsplit(feedback_url).path  # no address in the link
    token = urlsplit(feedback_url).path.removeprefix("/feedback/")
    assert verify(Purpose.FEEDBACK, token, settings.secret_keys) == {
        "s": session_id(url, 96),
        "u": came,
    }
    assert "订阅者0，你好！" in text and "退订" in anchors
    assert "添加到日历" not in anchors and "/rsvp/" not in html + text  # the session is over

    again = runner.invoke(cli_app, ["campaign", "followup", "96", "--all"])
    assert again.exit_code == 1 and "session 96 already has its follow-up" in again.stderr
    assert "Traceback" not in again.output
    assert len(outbox(tmp_path / "var" / "outbox")) == 1
    shown = runner.invoke(cli_app, ["campaign", "followup", "--help"])
    assert shown.exit_code == 0 and "--all" in shown.stdout


# --- the feedback page over HTTP ---------------------------------------------------------------


def _link(live: Live, person: int) -> str:
    made = feedback_link(
        live.settings.base_url,
        live.settings.secret_keys,
        session_id=live.session_id,
        subscriber_id=live.people[person],
    )
    return made.removeprefix(live.settings.base_url)


def _answers(live: Live) -> list[tuple[int, int, str | None]]:
    with session_scope(live.settings.database_url) as db:
        rows = db.execute(select(Feedback.subscriber_id, Feedback.rating, Feedback.comment))
        return sorted((r[0], r[1], r[2]) for r in rows)


def test_feedback_page_records_on_post_only_and_replaces(live: Live) -> None:
    url = live.settings.database_url
    link = _link(live, 0)
    early = live.client.get(link)
    assert early.status_code == 409 and "还没有结束" in early.text
    end_session(url, 95)
    for _ in range(3):  # link scanners open it, again and again
        shown = live.client.get(link)
        assert shown.status_code == 200 and "你给本期活动打几分" in shown.text
        assert live.client.head(link).status_code in (200, 405)
    assert _answers(live) == []
    assert shown.headers["Cache-Control"] == "no-store"
    csrf = form_token(shown.text)
    missing = live.client.post(link, data={"rating": "4", "comment": "x"})
    assert missing.status_code == 400 and _answers(live) == []
    forged = live.client.post(link, data={"rating": "4", "csrf": "forged"})
    assert forged.status_code == 403 and _answers(live) == []
    for bad in ("0", "6", "four", ""):
        refused = live.client.post(link, data={"rating": bad, "csrf": csrf})
        assert refused.status_code == 400, bad
    done = live.client.post(
        link, data={"rating": "4", "comment": "  讲得很好 <b>赞</b> ", "csrf": csrf}
    )
    assert done.status_code == 200 and "已记录你的反馈" in done.text
    assert "&lt;b&gt;赞&lt;/b&gt;" in done.text  # shown again, escaped
    assert _answers(live) == [(live.people[0], 4, "讲得很好 <b>赞</b>")]
    again = live.client.post(link, data={"rating": "2", "comment": "", "csrf": csrf})
    assert again.status_code == 200
    assert _answers(live) == [(live.people[0], 2, None)]  # replaced, not added
    shown = live.client.get(link)
    assert re.search(r'value="2"[^>]*checked', shown.text)  # the form shows the answer so far
    # Someone else's form token does not pass on this link.
    other = live.client.post(_link(live, 1), data={"rating": "5", "csrf": csrf})
    assert other.status_code == 403 and len(_answers(live)) == 1


def test_feedback_links_tampered_of_another_purpose_or_closed_are_clear_4xx(live: Live) -> None:
    url = live.settings.database_url
    end_session(url, 95)
    link = _link(live, 0)
    rsvp, _ = live.links(0)
    token = rsvp.removeprefix("/rsvp/").split("?")[0]
    for path, status in (
        (link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB"), 400),
        (f"/feedback/{token}", 400),  # an RSVP token is not a feedback token
        ("/feedback/" + "x" * 1000, 400),
        ("/feedback/", 404),
    ):
        for method in ("GET", "POST"):
            response = live.client.request(method, path, data={"rating": "3", "csrf": "x"})
            assert response.status_code == status, (method, path, response.text[:200])
            assert "Traceback" not in response.text
    end_session(url, 95, ago=timedelta(days=61))
    closed = live.client.get(link)
    assert closed.status_code == 410 and "反馈已经截止" in closed.text
    assert _answers(live) == []


def test_feedback_posts_are_limited_per_client(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback_web, "throttle", LoginThrottle(max_failures=2, window_s=3600))
    end_session(live.settings.database_url, 95)
    link = _link(live, 0)
    csrf = form_token(live.client.get(link).text)
    statuses = [
        live.client.post(link, data={"rating": "5", "csrf": csrf}).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    limited = live.client.post(link, data={"rating": "1", "csrf": csrf})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert _answers(live) == [(live.people[0], 5, None)]


# --- the dashboard -----------------------------------------------------------------------------


def test_dashboard_sends_the_followup_once_and_shows_the_feedback(live: Live) -> None:
    url = live.settings.database_url
    csrf = log_in(live)
    page = live.client.get("/admin/sessions/95")
    assert "活动结束后可以在这里发送回顾邮件" in page.text and "反馈 <b>0</b> 份" in page.text
    with session_scope(url) as db:
        record_answer(db, live.session_id, live.people[0], Answer.yes)
        record_answer(db, live.session_id, live.people[1], Answer.maybe)
    early = live.client.post("/admin/sessions/95/followup", data={"csrf": csrf})
    assert early.status_code == 409 and "has not ended yet" in early.text
    end_session(url, 95)
    refused = live.client.post("/admin/sessions/95/followup", data={"csrf": "forged"})
    assert refused.status_code == 403
    nobody = live.client.post("/admin/sessions/95/followup", data={"csrf": csrf})
    assert nobody.status_code == 409 and "第 95 期没有人签到" in nobody.text
    assert "发给所有答复参加或可能的人" in nobody.text and "--all" in nobody.text
    page = live.client.get("/admin/sessions/95")
    assert "发给已签到的 0 人" in page.text and "发给所有答复参加或可能的人（2）" in page.text
    sent = live.client.post("/admin/sessions/95/followup", data={"csrf": csrf, "everyone": "1"})
    assert sent.status_code == 303 and sent.headers["location"].startswith("/admin/campaigns/")
    campaign_id = int(sent.headers["location"].rsplit("/", 1)[1])
    assert delivered_to(url, campaign_id) == {live.people[0], live.people[1]}
    twice = live.client.post("/admin/sessions/95/followup", data={"csrf": csrf, "everyone": "1"})
    assert twice.status_code == 409 and "already has its follow-up" in twice.text

    for person, rating, comment in ((0, 4, "<script>alert(1)</script>很好"), (1, 5, "")):
        link = _link(live, person)
        token = form_token(live.client.get(link).text)
        data = {"rating": str(rating), "comment": comment, "csrf": token}
        assert live.client.post(link, data=data).status_code == 200
    page = live.client.get("/admin/sessions/95")
    assert f'<a href="/admin/campaigns/{campaign_id}">#{campaign_id}</a>' in page.text
    assert "反馈 <b>2</b> 份 · 平均 <b>4.5</b> 分" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;很好" in page.text
    assert "<script>alert(1)" not in page.text
    bars = re.findall(r"<th scope=\"row\">(\d) 分</th>.*?<td class=\"num\">(\d+)</td>", page.text)
    assert bars == [("1", "0"), ("2", "0"), ("3", "0"), ("4", "1"), ("5", "1")]


def test_followup_personalised_equals_full_render() -> None:
    """The compiled follow-up fills the feedback link per person byte for byte as a full
    render does, hostile names included."""
    import dataclasses

    from newsletter.rendering import FOLLOWUP, InvitationTemplate, render_invitation
    from tests.test_rendering import HOSTILE_NAMES, ORGANIZER, TIMEZONE, recipient, record

    session = record(61)
    template = InvitationTemplate.build(
        session, [], organizer=ORGANIZER, timezone=TIMEZONE, template=FOLLOWUP, rsvp=False
    )
    for i, name in enumerate(HOSTILE_NAMES):
        person = dataclasses.replace(
            recipient(name, token=f"t{i}"), feedback_url=f"https://salon.example.org/feedback/f{i}"
        )
        full = render_invitation(
            session,
            [],
            person,
            organizer=ORGANIZER,
            timezone=TIMEZONE,
            template=FOLLOWUP,
            rsvp=False,
        )
        assert template.personalise(person) == full
        assert links_of(full.html)["给本期打分"] == person.feedback_url
        assert person.feedback_url in full.text
