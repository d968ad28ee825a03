"""The RSVP web contract over real HTTP (uvicorn on loopback): GET never records, a person's
POST does, tampered links get a 4xx page, one-click unsubscribe answers without a redirect."""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter.db import session_scope
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus
from tests.webapp import Live, form_token, live, write_record
from tests.worker import wait_for_worker

__all__ = ["live"]  # the fixture


def test_get_shows_the_choice_and_records_nothing(live: Live) -> None:
    rsvp, _ = live.links(0)
    for _ in range(3):  # a link scanner opening the link again and again
        page = live.client.get(rsvp)
        assert page.status_code == 200
    assert "你选择了：<strong>是，我会参加</strong>" in page.text
    assert "测试专题 &lt;script&gt;x&lt;/script&gt;" in page.text
    assert "贾鑫康" in page.text and "蒙民伟楼348室" in page.text
    assert "<form" in page.text and "确认答复" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text.lower()  # no page submits itself
    assert live.rsvps() == []


def test_post_with_the_form_token_records_and_says_what(live: Live) -> None:
    rsvp, _ = live.links(0)
    token = form_token(live.client.get(rsvp).text)
    done = live.client.post(rsvp, data={"answer": "yes", "csrf": token})
    assert done.status_code == 200
    assert "已记录你的答复：<strong>是，我会参加</strong>" in done.text
    assert "/sessions/95.ics" in done.text
    again = live.client.post(rsvp, data={"answer": "yes", "csrf": token})  # idempotent
    assert again.status_code == 200
    assert live.rsvps() == [(live.people[0], "yes", False)]


def test_past_capacity_joins_the_waitlist_and_a_no_promotes(live: Live) -> None:
    first, _ = live.links(0)
    second, _ = live.links(1)
    live.client.post(first, data={"answer": "yes", "csrf": form_token(live.client.get(first).text)})
    waiting = live.client.post(
        second, data={"answer": "yes", "csrf": form_token(live.client.get(second).text)}
    )
    assert "候补名单第 <strong>1</strong> 位" in waiting.text
    live.client.post(first, data={"answer": "no", "csrf": form_token(live.client.get(first).text)})
    assert sorted(live.rsvps()) == sorted(
        [(live.people[0], "no", False), (live.people[1], "yes", False)]
    )


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda t: t[:-3] + ("aaa" if not t.endswith("aaa") else "bbb"), 400),  # tampered
        (lambda t: t[: len(t) // 2], 400),  # cut short
        (lambda t: "x" * 2000, 400),  # absurd
        (lambda t: "", 404),  # nothing
    ],
)
def test_bad_tokens_get_a_friendly_4xx_page(
    live: Live, change: Callable[[str], str], status: int
) -> None:
    rsvp, _ = live.links(0)
    token = rsvp.removeprefix("/rsvp/").split("?")[0]
    response = live.client.get(f"/rsvp/{change(token)}?answer=yes")
    assert response.status_code == status
    assert "text/html" in response.headers["content-type"]
    assert "请" in response.text


def test_wrong_purpose_missing_form_token_and_bad_answer_are_refused(live: Live) -> None:
    rsvp, unsubscribe = live.links(0)
    unsub_token = unsubscribe.removeprefix("/unsubscribe/")
    assert live.client.get(f"/rsvp/{unsub_token}?answer=yes").status_code == 400
    assert live.client.post(rsvp, data={"answer": "yes", "csrf": "forged"}).status_code == 403
    other, _ = live.links(1)
    stolen = form_token(live.client.get(other).text)  # a form token for someone else's link
    assert live.client.post(rsvp, data={"answer": "yes", "csrf": stolen}).status_code == 403
    assert live.client.get(rsvp.replace("answer=yes", "answer=perhaps")).status_code == 400
    assert live.rsvps() == []


def test_after_the_deadline_answers_are_closed(live: Live, tmp_path: Path) -> None:
    rsvp, _ = live.links(0)
    token = form_token(live.client.get(rsvp).text)
    with session_scope(live.settings.database_url) as db:
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(hours=-1))],
            timezone="Asia/Shanghai",
        )
    page = live.client.get(rsvp)
    assert "报名已截止" in page.text and "<form" not in page.text
    closed = live.client.post(rsvp, data={"answer": "yes", "csrf": token})
    assert closed.status_code == 409 and "报名已截止" in closed.text
    assert live.rsvps() == []


def test_one_click_unsubscribe_is_a_post_without_cookies_or_redirect(live: Live) -> None:
    _, unsubscribe = live.links(2)
    page = live.client.get(unsubscribe)
    assert page.status_code == 200 and "确认退订" in page.text
    response = live.client.post(
        unsubscribe,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers and "location" not in response.headers
    with session_scope(live.settings.database_url) as db:
        status = db.scalar(select(Subscriber.status).where(Subscriber.id == live.people[2]))
    assert status == SubscriberStatus.unsubscribed


def test_unsubscribe_button_needs_the_form_token(live: Live) -> None:
    _, unsubscribe = live.links(1)
    assert live.client.post(unsubscribe, data={"csrf": "nope"}).status_code == 403
    token = form_token(live.client.get(unsubscribe).text)
    done = live.client.post(unsubscribe, data={"csrf": token})
    assert done.status_code == 200 and "已退订" in done.text


def test_calendar_file_and_unknown_pages(live: Live) -> None:
    ics = live.client.get("/sessions/95.ics")
    assert ics.status_code == 200 and ics.headers["content-type"].startswith("text/calendar")
    assert "UID:salon-95@example.org" in ics.text
    assert live.client.get("/sessions/999.ics").status_code == 404
    assert live.client.get("/nothing-here").status_code == 404
    assert live.client.delete("/sessions/95.ics").status_code == 405
    assert live.client.get("/healthz").text == "ok"


def outbox(live: Live) -> list[email.message.EmailMessage]:
    """The mails in the outbox once the senders the answers asked for have run."""
    wait_for_worker()
    folder = Path(live.settings.mail_url.removeprefix("file://"))
    messages = []
    for path in sorted(folder.glob("*.eml")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        messages.append(parsed)
    return messages


def test_a_yes_is_confirmed_by_mail_with_the_event_as_publish(live: Live) -> None:
    rsvp, _ = live.links(0)
    live.client.post(rsvp, data={"answer": "yes", "csrf": form_token(live.client.get(rsvp).text)})
    (mail,) = outbox(live)
    assert mail["To"].addresses[0].addr_spec == "w0@example.org"
    assert "List-Unsubscribe" not in mail and "Precedence" not in mail
    calendar = mail.get_body(("calendar",))
    assert calendar is not None
    assert calendar.get_content_type() == "text/calendar"
    assert calendar.get_param("method") == "PUBLISH"
    ics = calendar.get_content()
    assert "METHOD:PUBLISH" in ics and "UID:salon-95@example.org" in ics
    text = mail.get_body(("plain",))
    assert text is not None and "报名已确认" in text.get_content()


def test_a_no_frees_the_seat_and_the_first_waiting_is_told_by_mail(live: Live) -> None:
    first, _ = live.links(0)
    second, _ = live.links(1)
    live.client.post(first, data={"answer": "yes", "csrf": form_token(live.client.get(first).text)})
    live.client.post(
        second, data={"answer": "yes", "csrf": form_token(live.client.get(second).text)}
    )
    # The waitlisted "yes" gets no confirmation, only its place in line.
    waiting = [m for m in outbox(live) if m["To"].addresses[0].addr_spec == "w1@example.org"]
    assert [m["Subject"].split("：")[0] for m in waiting] == ["你在候补名单第 1 位"]
    live.client.post(first, data={"answer": "no", "csrf": form_token(live.client.get(first).text)})
    mails = outbox(live)
    promoted = [
        m
        for m in mails
        if m["To"].addresses[0].addr_spec == "w1@example.org"
        and m["Subject"].startswith("你获得了名额：")
    ]
    assert len(promoted) == 1
    body = promoted[0].get_body(("plain",))
    assert body is not None and "递补" in body.get_content()


def test_rsvp_list_shows_what_the_pages_recorded(live: Live) -> None:
    import subprocess
    import sys

    first, _ = live.links(0)
    second, _ = live.links(1)
    live.client.post(first, data={"answer": "yes", "csrf": form_token(live.client.get(first).text)})
    live.client.post(
        second, data={"answer": "yes", "csrf": form_token(live.client.get(second).text)}
    )
    command = [str(Path(sys.executable).parent / "newsletter"), "rsvp", "list", "95"]
    env = {
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
        "NEWSLETTER_DATABASE_URL": live.settings.database_url,
    }
    shown = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "w0@example.org" in shown.stdout and "候补 1" in shown.stdout
    assert "是 1（座位 1/1），可能 0，否 0，候补 1" in shown.stdout
    exported = subprocess.run(
        [*command, "--csv"], capture_output=True, text=True, env=env, check=True
    )
    lines = exported.stdout.splitlines()
    assert lines[0] == "name,email,answer,guests,waitlisted,answered_at,updated_at,checked_in_at"
    assert lines[1].startswith("访客0,w0@example.org,yes,0,no,")
    assert lines[2].startswith("访客1,w1@example.org,yes,0,yes,")


ADMIN = {"Authorization": "Bearer test-admin-token"}


def test_the_api_needs_the_admin_token_in_the_header(live: Live) -> None:
    assert live.client.get("/api/sessions").status_code == 401
    wrong = live.client.get("/api/sessions", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert live.client.get("/api/sessions?token=test-admin-token").status_code == 401
    ok = live.client.get("/api/sessions", headers=ADMIN)
    assert ok.status_code == 200 and ok.json()[0]["number"] == 95


def test_the_api_runs_a_campaign_and_reports_answers(live: Live) -> None:
    created = live.client.post("/api/campaigns", json={"number": 95}, headers=ADMIN)
    assert created.status_code == 201
    campaign = created.json()
    assert (campaign["status"], campaign["total"]) == ("draft", 3)
    sent = live.client.post(f"/api/campaigns/{campaign['id']}/send", headers=ADMIN)
    assert sent.status_code == 200
    wait_for_worker()  # the API handed the sending over and answered at once
    status = live.client.get(f"/api/campaigns/{campaign['id']}", headers=ADMIN).json()
    assert (status["status"], status["sent"]) == ("finished", 3)
    again = live.client.post(f"/api/campaigns/{campaign['id']}/pause", headers=ADMIN)
    assert again.status_code == 409
    rsvp, _ = live.links(0)
    live.client.post(rsvp, data={"answer": "yes", "csrf": form_token(live.client.get(rsvp).text)})
    answers = live.client.get("/api/sessions/95/rsvps", headers=ADMIN).json()
    assert (answers["yes"], answers["seats"], answers["capacity"]) == (1, 1, 1)
    assert answers["attendees"][0]["email"] == "w0@example.org"
    exported = live.client.get("/api/sessions/95/rsvps.csv", headers=ADMIN)
    assert exported.headers["content-type"].startswith("text/csv")
    assert "w0@example.org,yes" in exported.text


def test_the_api_answers_bad_requests_with_4xx_json(live: Live) -> None:
    assert live.client.get("/api/sessions/999/rsvps", headers=ADMIN).status_code == 404
    assert live.client.get("/api/campaigns/77", headers=ADMIN).status_code == 404
    assert (
        live.client.post("/api/campaigns", json={"number": 999}, headers=ADMIN).status_code == 404
    )
    bad = live.client.post("/api/campaigns", json={"number": "x"}, headers=ADMIN)
    assert bad.status_code == 422 and "detail" in bad.json()
    assert live.client.post("/api/campaigns/1/explode", headers=ADMIN).status_code == 422
    assert live.client.get("/api/campaigns/99999999999999", headers=ADMIN).status_code == 422
    spec = live.client.get("/openapi.json").json()
    assert "/api/campaigns/{campaign_id}/{action}" in spec["paths"]
