"""RSVP notices compiled once per session: each person still gets their own name and link,
escaped in HTML and literal in text; the event travels as text/calendar PUBLISH."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.migrate import upgrade
from newsletter.rsvp.models import NoticeKind
from newsletter.rsvp.notices import build_rsvp_notice
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tests.conftest import EXAMPLES


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_two_people_get_their_own_greeting_and_link(settings: Settings) -> None:
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions" / "028.yaml"], timezone="Asia/Shanghai")
        people = [
            Subscriber(email="a@example.org", name="Ada <b>&</b>", created_at=utcnow()),
            Subscriber(email="b@example.org", name="李雷", created_at=utcnow()),
        ]
        db.add_all(people)
        db.flush()
        salon = sessions_repo.get_by_number(db, 28)
        assert salon is not None
        mails = [
            build_rsvp_notice(db, settings, salon.id, person.id, NoticeKind.confirmed)
            for person in people
        ]
    first, second = (parse(m.data) for m in mails if m is not None)
    html_a = first.get_body(("html",))
    text_a = first.get_body(("plain",))
    html_b = second.get_body(("html",))
    assert html_a is not None and text_a is not None and html_b is not None
    assert "Ada &lt;b&gt;&amp;&lt;/b&gt;，你好！" in html_a.get_content()
    assert "Ada <b>&</b>，你好！" in text_a.get_content()
    assert "李雷，你好！" in html_b.get_content()
    link_a = text_a.get_content().split("修改答复：")[1].split()[0]
    assert link_a.startswith("https://salon.example.org/rsvp/")
    assert link_a not in html_b.get_content() and "NoticeChangeUrlSlot" not in html_a.get_content()
    calendar = first.get_body(("calendar",))
    assert calendar is not None and calendar.get_param("method") == "PUBLISH"
    assert "ORGANIZER;CN=" in calendar.get_content()
    assert "mailto:salon@example.org" in calendar.get_content()
