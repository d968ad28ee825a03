"""Mail coming back, applied: matching (VERP, then Message-ID, then address), idempotence,
the soft-bounce limit, mailto unsubscribes and auto-replies, against a campaign really sent
(the embedded worker into the file outbox), on SQLite and PostgreSQL.

The helpers here (:func:`sent_campaign`, :func:`dsn`) also serve the CLI, receiver and corpus
tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Campaign, Delivery
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.inbound.models import InboundEvent, InboundKind
from newsletter.inbound.service import MAX_STORED_RAW, InboundOutcome, process_message
from newsletter.installation import installation_token_for
from newsletter.links import unsubscribe_payload
from newsletter.mail.message import format_message_id
from newsletter.tokens import Purpose, sign
from subscribers.models import Subscriber
from subscribers.validation import normalise_email
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import Configure
from tests.webapp import seed
from tests.worker import wait_for_worker

BOUNCES = "bounces@example.org"


@dataclass
class Sent:
    """A campaign sent to some addresses: its id and each address's delivery id."""

    settings: Settings
    campaign_id: int
    deliveries: dict[str, int]  # normalised address -> delivery id
    subscribers: dict[str, int]  # normalised address -> subscriber id

    def message_id(self, address: str) -> str:
        """The Message-ID the delivery to ``address`` went out with."""
        return format_message_id(
            self.deliveries[normalise_email(address)],
            self.settings.sender_domain,
            installation_token_for(self.settings.database_url),
        )

    def verp(self, address: str) -> str:
        """The envelope sender (VERP) of the delivery to ``address``."""
        return f"bounces+{self.deliveries[normalise_email(address)]}@example.org"


def inbound_settings(configure: Configure, db_url: str, **more: str) -> Settings:
    """Settings with a bounce address (so VERP and the mailto are on) on ``db_url``."""
    return configure(database_url=db_url, bounce_address=BOUNCES, **more)


def sent_campaign(settings: Settings, tmp_path: Path, addresses: list[str]) -> Sent:
    """Session 95, one subscriber per address, a campaign to them all, sent for real."""
    seed(settings, tmp_path, people=0, capacity=None)
    return send_to(settings, addresses)


def send_to(settings: Settings, addresses: list[str]) -> Sent:
    """Add these subscribers to a database with session 95 and send it to everyone."""
    normal = sorted({normalise_email(a) for a in addresses})
    with session_scope(settings.database_url) as db:
        db.add_all([Subscriber(email=a, name="", created_at=utcnow()) for a in normal])
        db.flush()
        campaign_id = campaigns.create_campaign(db, 95).id
        normal = list(db.scalars(select(Subscriber.email)))
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        rows = db.execute(
            select(Subscriber.email, Delivery.id, Subscriber.id)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.campaign_id == campaign_id)
        ).all()
        sent = db.scalar(select(Campaign.sent_count).where(Campaign.id == campaign_id))
    assert sent == len(normal), "the campaign was not sent to everyone"
    return Sent(
        settings,
        campaign_id,
        {email: delivery for email, delivery, _ in rows},
        {email: subscriber for email, _, subscriber in rows},
    )


def dsn(
    *,
    to: str = BOUNCES,
    recipient: str,
    status: str = "5.1.1",
    action: str = "failed",
    original_id: str | None = None,
    note: str = "",
    auto_submitted: str = "auto-replied",
) -> bytes:
    """An RFC 3464 report as Postfix writes one (``note`` makes otherwise equal reports
    distinct messages)."""
    original = f"Message-ID: {original_id}\r\n" if original_id else ""
    unique = hashlib.sha256(repr((to, recipient, status, note, original_id)).encode()).hexdigest()
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Auto-Submitted: {auto_submitted}\r\n"
        f"Message-ID: <bounce.{unique[:20]}@mx.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        f"This is the mail system at host mx.example.net. {note}\r\n"
        "--B\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem\r\n"
        "\r\n"
        "--B\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"{original}To: {recipient}\r\n"
        "Subject: =?utf-8?b?56ysOTXmnJ8=?=\r\n"
        "\r\n"
        "--B--\r\n"
    ).encode()


def feed(settings: Settings, raw: bytes, *recipients: str) -> InboundOutcome:
    """One message through the service, committed, as the CLI does."""
    with session_scope(settings.database_url) as db:
        return process_message(db, settings, raw, source="file", envelope_recipients=recipients)


def status_of(settings: Settings, address: str) -> str:
    with session_scope(settings.database_url) as db:
        status = db.scalar(
            select(Subscriber.status).where(Subscriber.email == normalise_email(address))
        )
    assert status is not None
    return status


def campaign_counts(settings: Settings, campaign_id: int) -> tuple[int, int]:
    with session_scope(settings.database_url) as db:
        row = db.execute(
            select(Campaign.bounce_count, Campaign.complaint_count).where(
                Campaign.id == campaign_id
            )
        ).one()
    return row[0], row[1]


def events(settings: Settings) -> int:
    with session_scope(settings.database_url) as db:
        return int(db.scalar(select(func.count()).select_from(InboundEvent)) or 0)


PEOPLE = ["ann@example.com", "bo@example.com", "cy@example.com"]


@pytest.fixture
def sent(configure: Configure, db_url: str, tmp_path: Path) -> Sent:
    """A campaign really sent to three people, with a bounce address configured."""
    return sent_campaign(inbound_settings(configure, db_url), tmp_path, PEOPLE)


def test_verp_wins_over_message_id_which_wins_over_the_address(sent: Sent) -> None:
    ann, bo, cy = PEOPLE
    # All three clues, each naming someone else: the VERP return path decides.
    first = feed(
        sent.settings,
        dsn(to=sent.verp(ann), recipient=cy, original_id=sent.message_id(bo)),
    )
    assert (first.kind, first.matched_by) == (InboundKind.hard_bounce, "verp")
    assert first.delivery_id == sent.deliveries[ann]
    assert [status_of(sent.settings, a) for a in PEOPLE] == ["bounced", "active", "active"]
    # No VERP (the bounce went to the bare address): the original's Message-ID decides.
    second = feed(sent.settings, dsn(recipient=cy, original_id=sent.message_id(bo)))
    assert (second.matched_by, second.delivery_id) == ("message_id", sent.deliveries[bo])
    assert status_of(sent.settings, bo) == "bounced" and status_of(sent.settings, cy) == "active"
    # Neither: the failed recipient's address, matched to their delivery.
    third = feed(sent.settings, dsn(recipient=cy.upper(), note="third"))
    assert (third.matched_by, third.delivery_id) == ("address", sent.deliveries[cy])
    assert status_of(sent.settings, cy) == "bounced"
    assert campaign_counts(sent.settings, sent.campaign_id) == (3, 0)


def test_a_message_id_of_another_installation_is_not_ours(sent: Sent) -> None:
    foreign = format_message_id(sent.deliveries[PEOPLE[0]], "example.org", "ffffffffffffffff")
    outcome = feed(sent.settings, dsn(recipient="nobody@example.net", original_id=foreign))
    assert outcome.matched_by is None and outcome.changes == ()
    assert status_of(sent.settings, PEOPLE[0]) == "active"


def test_the_same_message_twice_counts_once(sent: Sent) -> None:
    raw = dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0])
    first, again = feed(sent.settings, raw), feed(sent.settings, raw)
    assert first.new and not again.new and again.event_id == first.event_id
    assert again.changes == ()
    # A second, different report about the same delivery is stored, not counted again.
    other = feed(sent.settings, dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0], note="2nd"))
    assert other.new and other.event_id != first.event_id
    assert events(sent.settings) == 2
    assert campaign_counts(sent.settings, sent.campaign_id) == (1, 0)


def test_a_copy_with_other_trace_headers_is_the_same_message(sent: Sent) -> None:
    raw = dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0])
    relayed = b"Received: from mx2.example.org by mx.example.org; today\r\n" + raw
    assert feed(sent.settings, raw).new and not feed(sent.settings, relayed).new


def test_soft_bounces_suppress_at_the_limit_within_thirty_days(sent: Sent) -> None:
    ann, bo, _ = PEOPLE
    for n in range(2):
        outcome = feed(
            sent.settings, dsn(to=sent.verp(ann), recipient=ann, status="4.2.2", note=f"{n}")
        )
        assert outcome.kind is InboundKind.soft_bounce
    assert status_of(sent.settings, ann) == "active"
    third = feed(sent.settings, dsn(to=sent.verp(ann), recipient=ann, status="4.2.2", note="3"))
    assert status_of(sent.settings, ann) == "bounced", third.changes
    # Two old ones (31 days) do not count: bo's third soft bounce leaves bo active.
    for n in range(2):
        feed(sent.settings, dsn(to=sent.verp(bo), recipient=bo, status="4.4.1", note=f"o{n}"))
    with session_scope(sent.settings.database_url) as db:
        db.execute(
            update(InboundEvent)
            .where(InboundEvent.subscriber_id == sent.subscribers[bo])
            .values(received_at=utcnow() - timedelta(days=31))
        )
    feed(sent.settings, dsn(to=sent.verp(bo), recipient=bo, status="4.4.1", note="new"))
    assert status_of(sent.settings, bo) == "active"
    assert campaign_counts(sent.settings, sent.campaign_id) == (0, 0)


def _mailto(sender: str, token: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {BOUNCES}\r\nSubject: unsubscribe {token}\r\n"
        "Message-ID: <u1@mail.example.com>\r\n\r\n"
    ).encode()


def test_mailto_unsubscribe_needs_a_valid_token(sent: Sent) -> None:
    ann, bo, _ = PEOPLE
    keys = sent.settings.secret_keys
    token = sign(
        Purpose.UNSUBSCRIBE,
        unsubscribe_payload(subscriber_id=sent.subscribers[ann], campaign_id=sent.campaign_id),
        keys,
    )
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    refused = feed(sent.settings, _mailto(bo, tampered))
    assert refused.kind is InboundKind.unknown and refused.changes == ()
    assert status_of(sent.settings, ann) == "active"
    # Another person's valid token in their own words does not unsubscribe the sender: the
    # token names who leaves (an address proves nothing).
    done = feed(sent.settings, _mailto(bo, token))
    assert (done.kind, done.matched_by) == (InboundKind.unsubscribe, "token")
    assert status_of(sent.settings, ann) == "unsubscribed"
    assert status_of(sent.settings, bo) == "active"


def test_an_auto_reply_that_looks_like_a_bounce_changes_nothing(sent: Sent) -> None:
    ann = PEOPLE[0]
    raw = (
        f"From: Ann <{ann}>\r\nTo: {sent.verp(ann)}\r\n"
        "Subject: =?utf-8?b?6Ieq5Yqo5Zue5aSNOiDnrKw5Neacnw==?=\r\n"  # 自动回复: 第95期
        "Auto-Submitted: auto-replied\r\n\r\n"
        "I am away. Delivery failed? 550 5.1.1 user unknown\r\n"
    ).encode()
    outcome = feed(sent.settings, raw)
    assert outcome.kind is InboundKind.auto_reply and outcome.changes == ()
    assert status_of(sent.settings, ann) == "active"
    chinese = feed(
        sent.settings,
        f"From: {ann}\r\nTo: {sent.verp(ann)}\r\nSubject: 自动回复：我在休假\r\n\r\n不在\r\n".encode(),  # noqa: E501
    )
    assert chinese.kind is InboundKind.auto_reply and status_of(sent.settings, ann) == "active"


def test_the_report_type_decides_before_auto_submitted(sent: Sent) -> None:
    raw = dsn(to=sent.verp(PEOPLE[1]), recipient=PEOPLE[1], auto_submitted="auto-replied")
    assert feed(sent.settings, raw).kind is InboundKind.hard_bounce
    assert status_of(sent.settings, PEOPLE[1]) == "bounced"


def test_a_pruned_delivery_still_names_its_delivery_and_the_address_the_person(
    sent: Sent,
) -> None:
    ann = PEOPLE[0]
    with session_scope(sent.settings.database_url) as db:
        db.execute(delete(Delivery).where(Delivery.campaign_id == sent.campaign_id))
    outcome = feed(sent.settings, dsn(to=sent.verp(ann), recipient=ann))
    assert (outcome.matched_by, outcome.delivery_id) == ("verp", sent.deliveries[ann])
    assert outcome.subscriber_id == sent.subscribers[ann]
    assert status_of(sent.settings, ann) == "bounced"


def test_the_raw_message_is_stored_bounded(sent: Sent) -> None:
    raw = dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0], note="x" * (MAX_STORED_RAW * 2))
    outcome = feed(sent.settings, raw)
    with session_scope(sent.settings.database_url) as db:
        event = db.get(InboundEvent, outcome.event_id)
        assert event is not None
        assert event.raw == raw[:MAX_STORED_RAW] and event.raw_truncated
        assert event.status_code == "5.1.1" and event.kind == "hard_bounce"


def test_a_complaint_unsubscribes_and_counts(sent: Sent) -> None:
    bo = PEOPLE[1]
    raw = (
        "From: feedbackloop@fbl.example.net\r\nTo: fbl@example.org\r\nSubject: Abuse\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nVersion: 1\r\nOriginal-Rcpt-To: {bo}\r\n\r\n"
        f"--F\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {sent.message_id(bo)}\r\n"
        "\r\n--F--\r\n"
    ).encode()
    outcome = feed(sent.settings, raw)
    assert (outcome.kind, outcome.matched_by) == (InboundKind.complaint, "message_id")
    assert status_of(sent.settings, bo) == "unsubscribed"
    assert not feed(sent.settings, raw).new
    assert campaign_counts(sent.settings, sent.campaign_id) == (0, 1)


@pytest.mark.parametrize("status", ["5.7.26", "5.7.1", "5.2.2", "5.2.3"])
def test_a_refusal_about_the_sender_or_the_mailbox_state_is_soft(sent: Sent, status: str) -> None:
    # DMARC, spam filters and blocklists (5.7.x), a full mailbox, a message too big: the
    # address is fine, so one such report must not suppress it.
    ann = PEOPLE[0]
    outcome = feed(sent.settings, dsn(to=sent.verp(ann), recipient=ann, status=status))
    assert outcome.kind is InboundKind.soft_bounce
    assert status_of(sent.settings, ann) == "active"
    assert campaign_counts(sent.settings, sent.campaign_id) == (0, 0)


def test_an_auto_reply_is_matched_by_the_message_it_replies_to(sent: Sent) -> None:
    bo = PEOPLE[1]
    raw = (
        f"From: Bo <bo.private@example.net>\r\nTo: {BOUNCES}\r\n"
        "Subject: Automatic reply: invitation\r\n"
        f"In-Reply-To: {sent.message_id(bo)}\r\nReferences: {sent.message_id(bo)}\r\n\r\n"
        "Away until Monday.\r\n"
    ).encode()
    outcome = feed(sent.settings, raw)
    assert (outcome.kind, outcome.matched_by) == (InboundKind.auto_reply, "message_id")
    assert outcome.delivery_id == sent.deliveries[bo] and outcome.changes == ()
    assert status_of(sent.settings, bo) == "active"
