"""The mail an answer triggers waits in the outbox with the answer: sent once through a real
SMTP server, retried after a temporary refusal, never sent when the answer changed first, and
sent by the sweep when nobody asked for it (the broker was down)."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select, update

from newsletter.db import session_scope, utcnow
from newsletter.metrics.repo import pending_notices
from newsletter.rsvp.models import Answer, RsvpEvent
from subscribers.models import Subscriber
from tasks.rsvp import send_rsvp_notices
from tests.conftest import Configure
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_rsvp_service import answer, setup_session
from tests.webapp import serve_live

StartSmtp = Callable[..., SmtpServer]


def recipients(server: SmtpServer) -> list[str]:
    return sorted(rcpt for received in server.handler.received for rcpt in received.rcpt_tos)


def address(url: str, subscriber_id: int) -> str:
    with session_scope(url) as db:
        person = db.get(Subscriber, subscriber_id)
        assert person is not None
        return person.email


def pending(url: str) -> int:
    with session_scope(url) as db:
        return pending_notices(db)


def test_each_notice_is_sent_once_through_smtp(
    db_url: str, tmp_path: Path, configure: Configure, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    sid, people = setup_session(db_url, tmp_path, capacity=1, people=3)
    answer(db_url, sid, people[0], Answer.yes)  # the seat: a confirmation
    answer(db_url, sid, people[1], Answer.yes)  # the waitlist: their place in line
    answer(db_url, sid, people[2], Answer.maybe)  # no mail
    assert pending(db_url) == 2
    send_rsvp_notices(sid)
    first, second = address(db_url, people[0]), address(db_url, people[1])
    assert recipients(relay) == sorted([first, second])
    answer(db_url, sid, people[0], Answer.no)  # frees the seat: people[1] is promoted
    send_rsvp_notices(sid)
    send_rsvp_notices(None)  # a second sender finds nothing left to send
    assert recipients(relay) == sorted([first, second, second])
    promoted = email.message_from_bytes(relay.handler.received[2].data, policy=email.policy.default)
    assert isinstance(promoted, EmailMessage)
    text = promoted.get_body(("plain",))
    assert text is not None and "候补名单递补" in text.get_content()  # not a confirmation
    assert pending(db_url) == 0


def test_an_answer_changed_before_the_mail_went_out_gets_none(
    db_url: str, tmp_path: Path, configure: Configure, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    sid, people = setup_session(db_url, tmp_path, capacity=None, people=2)
    answer(db_url, sid, people[0], Answer.yes)
    answer(db_url, sid, people[0], Answer.no)  # changed their mind before any sender ran
    answer(db_url, sid, people[1], Answer.yes)
    answer(db_url, sid, people[1], Answer.maybe)
    answer(db_url, sid, people[1], Answer.yes)  # two confirmations due: one mail
    send_rsvp_notices(None)
    assert recipients(relay) == [address(db_url, people[1])]
    with session_scope(db_url) as db:
        errors = db.scalars(
            select(RsvpEvent.notice_error).where(RsvpEvent.subscriber_id == people[0])
        ).all()
    assert any(error and "answer changed" in error for error in errors)


def test_a_refused_notice_waits_and_goes_out_on_the_retry(
    db_url: str, tmp_path: Path, configure: Configure, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    relay.handler.refuse_first = 1  # "421 4.7.0 Try again later"
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    sid, people = setup_session(db_url, tmp_path, capacity=None, people=1)
    answer(db_url, sid, people[0], Answer.yes)
    send_rsvp_notices(sid)
    assert recipients(relay) == []
    with session_scope(db_url) as db:
        event = db.scalars(select(RsvpEvent).where(RsvpEvent.notice.is_not(None))).one()
        assert event.notice_attempts == 1 and "421" in (event.notice_error or "")
        assert event.notice_due_at is not None and event.notice_due_at > utcnow()
    send_rsvp_notices(sid)  # not due yet: nothing happens
    assert recipients(relay) == []
    with session_scope(db_url) as db:  # the back-off has passed
        db.execute(update(RsvpEvent).values(notice_due_at=utcnow() - timedelta(seconds=1)))
    send_rsvp_notices(sid)
    assert recipients(relay) == [address(db_url, people[0])]
    assert pending(db_url) == 0


def test_a_dead_relay_loses_no_notice_and_the_sweep_sends_it(
    db_url: str, tmp_path: Path, configure: Configure, start_smtp: StartSmtp
) -> None:
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{free_port()}")  # nobody there
    sid, people = setup_session(db_url, tmp_path, capacity=None, people=2)
    for person in people:
        answer(db_url, sid, person, Answer.yes)
    send_rsvp_notices(sid)
    assert pending(db_url) == 2
    relay = start_smtp()
    configure(mail_url=f"smtp://127.0.0.1:{relay.port}")
    with session_scope(db_url) as db:
        db.execute(update(RsvpEvent).values(notice_due_at=utcnow() - timedelta(seconds=1)))
    send_rsvp_notices(None)  # what beat's sweep runs: every session's due notices
    assert recipients(relay) == sorted(address(db_url, person) for person in people)
    assert pending(db_url) == 0


def test_without_a_broker_the_web_process_sends_due_notices_itself(
    configure: Configure, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"file://{outbox}",
        sweep_interval="0.2",
    )
    with serve_live(settings, tmp_path, people=1) as live:
        # Recorded with no request for a sender (as after a crash, or a relay that refused).
        answer(settings.database_url, live.session_id, live.people[0], Answer.yes)
        assert pending(settings.database_url) == 1
        deadline = time.monotonic() + 10
        while pending(settings.database_url) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert pending(settings.database_url) == 0
    assert len(list(outbox.glob("*.eml"))) == 1
