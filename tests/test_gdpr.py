"""GDPR: the export holds what the person has; erasure leaves nothing personal, keeps the
figures, and a later import does not bring the person back. SQLite and PostgreSQL, a real
SMTP relay for the campaign and the export mail, the inbound path for a returned message.

The helpers :func:`prepare` and :func:`sent_campaign` are shared with the preference tests.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Campaign, Delivery
from newsletter.campaigns.sending import send_batch
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import NotFoundError
from newsletter.inbound.models import InboundEvent
from newsletter.inbound.service import process_message
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.models import Answer, RsvpEvent
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers import gdpr, mail_outbox, service
from subscribers.erased import is_erased
from subscribers.models import Subscriber, SubscriberMail, SubscriberMailKind, SubscriberStatus
from tests.conftest import EXAMPLES, Configure
from tests.smtp import SmtpServer
from tests.webapp import write_record

NAMES = ["张三", "李四", "王五"]
TAGS = ["读书会", "编程马拉松"]


def prepare(settings: Settings, people: int = 3) -> list[int]:
    """The example sessions and ``people`` active subscribers p0… (named, tagged); their ids."""
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
    ids = []
    with session_scope(settings.database_url) as db:
        for i in range(people):
            added = service.add_subscriber(
                db, f"p{i}@example.org", name=NAMES[i % len(NAMES)], tags=TAGS[: i % 2 + 1]
            )
            ids.append(added.subscriber.id)
    return ids


def sent_campaign(settings: Settings, number: int = 61, **options: Any) -> int:
    """Create a campaign of session ``number`` and send it to the end; its id."""
    with session_scope(settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, number, past=True, **options).id
        campaigns.start_campaign(db, campaign_id)
    while send_batch(settings, campaign_id).more:
        pass
    return campaign_id


def mailed(relay: SmtpServer) -> list[str]:
    """Every recipient the relay accepted a message for, sorted."""
    return sorted(address for r in relay.handler.received for address in r.rcpt_tos)


@pytest.fixture
def relay(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


@pytest.fixture
def live_settings(configure: Configure, db_url: str, relay: SmtpServer) -> Settings:
    """Settings on ``db_url`` (SQLite and PostgreSQL) sending through the real relay."""
    return configure(
        database_url=db_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        bounce_address="bounces@example.org",
        batch_size="50",
    )


def delay_notice(address: str) -> bytes:
    """A temporary-failure DSN (RFC 3464) about ``address``: counted, suppresses nobody."""
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        "To: bounces@example.org\r\n"
        "Subject: Delivery Status Notification (Delay)\r\n"
        "Message-ID: <dsn-delay-1@mx.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
        f"Delivery to {address} is delayed: mailbox full.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\n"
        "Action: delayed\r\nStatus: 4.2.2\r\n"
        f"Diagnostic-Code: smtp; 452 4.2.2 <{address}> mailbox full\r\n"
        "--b1--\r\n"
    ).encode()


def history(settings: Settings, person: int) -> dict[str, Any]:
    """Give ``person`` a full history: a campaign mail, two answers for session 95 (ahead) and
    one for session 61 (past, written as it was), a returned message, an export mail."""
    sent_campaign(settings)
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_number(db, 61)
        assert salon is not None
        # Session 61 is over: its answers are written as the service records them, with
        # the time checks of a session still open lifted by recording "now" in its past.
        record_answer(db, salon.id, person, Answer.maybe, now=salon.starts_at - timedelta(days=3))
        record_answer(db, salon.id, person, Answer.yes, now=salon.starts_at - timedelta(days=2))
    with session_scope(settings.database_url) as db:
        process_message(db, settings, delay_notice("p0@example.org"), source="file")
    with session_scope(settings.database_url) as db:
        mail_outbox.queue(db, person, SubscriberMailKind.export)
    return {"session_61": salon.id}


def export_of(settings: Settings, person: int) -> dict[str, Any]:
    with session_scope(settings.database_url) as db:
        subscriber = db.get(Subscriber, person)
        assert subscriber is not None
        data = gdpr.export_subscriber(db, subscriber, settings=settings)
    json.dumps(data)  # JSON-ready as it is
    return data


@pytest.mark.smtp
def test_export_holds_deliveries_answers_history_mails_and_returned_mail(
    live_settings: Settings,
) -> None:
    people = prepare(live_settings)
    history(live_settings, people[0])
    data = export_of(live_settings, people[0])
    assert data["subscriber"]["email"] == "p0@example.org"
    assert data["subscriber"]["name"] == "张三" and data["subscriber"]["status"] == "active"
    assert data["tags"] == ["读书会"] and data["topics"] == ["读书会"]
    [delivery] = data["deliveries"]
    assert (delivery["session_number"], delivery["status"]) == (61, "sent")
    assert delivery["sent_at"] and delivery["message_id"].endswith("@example.org>")
    assert delivery["message_id"].startswith(f"<d{delivery['delivery_id']}.")
    assert [(r["session_number"], r["answer"]) for r in data["rsvps"]] == [(61, "yes")]
    assert [(h["session_number"], h["answer"]) for h in data["rsvp_history"]] == [
        (61, "maybe"),
        (61, "yes"),
    ]
    assert [m["kind"] for m in data["subscription_mails"]] == ["export"]
    [event] = data["inbound_events"]
    assert event["raw"] and "Delivery to p0@example.org is delayed" in event["raw"]
    # Nobody else's data: the others' deliveries and answers are not in it.
    assert "p1@example.org" not in json.dumps(data, ensure_ascii=False)


@pytest.mark.smtp
def test_erase_leaves_nothing_personal_and_keeps_the_figures(
    live_settings: Settings, tmp_path: Path
) -> None:
    people = prepare(live_settings)
    ids = history(live_settings, people[0])
    with session_scope(live_settings.database_url) as db:
        before = _figures(db, ids["session_61"])
    with session_scope(live_settings.database_url) as db:
        subscriber = gdpr.find_by_email(db, "P0@Example.org")
        gdpr.erase_subscriber(db, live_settings, subscriber)
    with session_scope(live_settings.database_url) as db:
        assert _figures(db, ids["session_61"]) == before  # campaign, answers, chart history
        person = db.get(Subscriber, people[0])
        assert person is not None and person.status == SubscriberStatus.erased
        assert person.erased_at is not None and person.tags == []
        assert is_erased(db, "p0@example.org", live_settings.secret_keys)
        assert db.scalar(select(func.count()).select_from(SubscriberMail)) == 0
        event = db.scalars(select(InboundEvent)).one()
        assert (event.raw, event.address, event.diagnostic) == (None, None, None)
        assert event.kind and event.fingerprint  # still counted once if fed again
        with pytest.raises(NotFoundError):
            gdpr.find_by_email(db, "p0@example.org")
    text = json.dumps(export_of(live_settings, people[0]), ensure_ascii=False)
    for personal in ("p0@example.org", "张三", "读书会", "mailbox full", "mx.example.net"):
        assert personal not in text
    # The same bounce fed again is recognised, not stored or counted a second time.
    with session_scope(live_settings.database_url) as db:
        process_message(db, live_settings, delay_notice("p0@example.org"), source="file")
    with session_scope(live_settings.database_url) as db:
        assert db.scalar(select(func.count()).select_from(InboundEvent)) == 1
    # A late hard bounce of an old delivery does not turn the row back into someone.
    with session_scope(live_settings.database_url) as db:
        late = service.suppress(
            db, subscriber_id=people[0], status=SubscriberStatus.bounced, reason="550 5.1.1"
        )
        assert late is False
    with session_scope(live_settings.database_url) as db:
        assert db.get(Subscriber, people[0]).status == SubscriberStatus.erased  # type: ignore[union-attr]
    # An organizer's old spreadsheet does not bring the person back.
    sheet = tmp_path / "old.csv"
    sheet.write_text("email,name\nP0@example.org,张三\np9@example.org,新人\n", encoding="utf-8")
    with session_scope(live_settings.database_url) as db:
        report = service.import_csv(db, sheet, keys=live_settings.secret_keys)
    assert report.added == 1 and len(report.erased_lines) == 1
    with session_scope(live_settings.database_url) as db:
        assert (
            db.scalars(select(Subscriber).where(Subscriber.email == "p0@example.org")).all() == []
        )


def _figures(db: Any, session_61: int) -> tuple[Any, ...]:
    """What the dashboard and `campaign status` show: campaign counts, answer counts, the
    number of history events (the chart)."""
    campaign = db.scalars(select(Campaign)).one()
    return (
        (campaign.recipient_count, campaign.sent_count, campaign.skipped_count),
        rsvp_repo.counts(db, session_61),
        db.scalar(select(func.count()).select_from(RsvpEvent)),
        db.scalar(select(func.count()).select_from(Delivery)),
    )


@pytest.mark.smtp
def test_erase_gives_up_a_seat_ahead_to_the_waitlist(
    live_settings: Settings, tmp_path: Path
) -> None:
    people = prepare(live_settings)
    with session_scope(live_settings.database_url) as db:
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(days=6), capacity=1)],
            timezone="Asia/Shanghai",
        )
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        session_95 = salon.id
    with session_scope(live_settings.database_url) as db:
        record_answer(db, session_95, people[0], Answer.yes)
        record_answer(db, session_95, people[1], Answer.yes)  # waitlisted: one seat
    with session_scope(live_settings.database_url) as db:
        erased = gdpr.erase_subscriber(db, live_settings, gdpr.find_by_email(db, "p0@example.org"))
    assert erased.answers_given_up == 1
    with session_scope(live_settings.database_url) as db:
        counts = rsvp_repo.counts(db, session_95)
        assert (counts.yes, counts.waitlisted) == (1, 0)  # the seat went to p1


@pytest.mark.smtp
def test_the_export_mail_carries_the_json_to_the_address_on_file(
    live_settings: Settings, relay: SmtpServer
) -> None:
    from tasks.subscribers import send_subscriber_mails

    people = prepare(live_settings)
    sent_campaign(live_settings)
    with session_scope(live_settings.database_url) as db:
        mail_outbox.queue(db, people[1], SubscriberMailKind.export)
    relay.handler.received.clear()
    send_subscriber_mails()
    assert mailed(relay) == ["p1@example.org"]
    message = email.message_from_bytes(relay.handler.received[0].data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/mixed" and message.defects == []
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "my-data.json"
    data = json.loads(attachment.get_content())
    assert data["subscriber"]["email"] == "p1@example.org"
    assert [d["session_number"] for d in data["deliveries"]] == [61]
    body = message.get_body(("plain",))
    assert body is not None and "my-data.json" in body.get_content()
    assert "/preferences/" in body.get_content()
