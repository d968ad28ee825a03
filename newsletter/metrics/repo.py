"""The queries behind /metrics and /readyz: one statement per metric family, whatever the
number of campaigns or sessions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Delivery, DeliveryStatus
from newsletter.rsvp.models import Rsvp, RsvpEvent
from subscribers.models import Subscriber, SubscriberStatus


@dataclass(frozen=True, slots=True)
class CampaignCounts:
    """Messages of one campaign by outcome."""

    campaign_id: int
    sent: int
    failed: int
    bounced: int  # failed, and the address is now marked bounced (a permanent refusal)


@dataclass(frozen=True, slots=True)
class AnswerCount:
    """Current answers of one kind across every session."""

    answer: str
    waitlisted: bool
    count: int


def ping(db: Session) -> None:
    """One round trip to the database (raises when it does not answer)."""
    db.execute(select(literal(1))).scalar_one()


def campaign_counts(db: Session) -> list[CampaignCounts]:
    """Sent, failed and bounced messages of every campaign that has deliveries."""
    failed = Delivery.status == DeliveryStatus.failed
    # The bounced addresses are few: a set looked up per failed row, no join with everyone.
    bounced = select(Subscriber.id).where(Subscriber.status == SubscriberStatus.bounced)
    rows = db.execute(
        select(
            Delivery.campaign_id,
            func.count().filter(Delivery.status == DeliveryStatus.sent),
            func.count().filter(failed),
            func.count().filter(and_(failed, Delivery.subscriber_id.in_(bounced))),
        )
        .group_by(Delivery.campaign_id)
        .order_by(Delivery.campaign_id)
    )
    return [CampaignCounts(row[0], row[1], row[2], row[3]) for row in rows]


def answer_counts(db: Session) -> list[AnswerCount]:
    """Current RSVP answers by kind (yes, maybe, no) and waitlist state."""
    rows = db.execute(
        select(Rsvp.answer, Rsvp.waitlisted, func.count())
        .group_by(Rsvp.answer, Rsvp.waitlisted)
        .order_by(Rsvp.answer, Rsvp.waitlisted)
    )
    return [AnswerCount(row[0], bool(row[1]), row[2]) for row in rows]


def queued_deliveries(db: Session) -> tuple[int, int]:
    """Deliveries waiting to be sent, and those claimed by a worker right now."""
    row = db.execute(
        select(
            func.coalesce(func.sum(case((Delivery.status == DeliveryStatus.queued, 1))), 0),
            func.coalesce(func.sum(case((Delivery.status == DeliveryStatus.inflight, 1))), 0),
        ).where(Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.inflight]))
    ).one()
    return int(row[0]), int(row[1])


def pending_notices(db: Session) -> int:
    """RSVP notice mails in the outbox, not yet sent nor given up: a number that keeps
    growing means no worker is sending them (the ``notice_due_at`` index serves it)."""
    return int(db.scalar(select(func.count()).where(RsvpEvent.notice_due_at.is_not(None))) or 0)
