"""The queries behind /metrics and /readyz: one statement per metric family, whatever the
number of campaigns or sessions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.rsvp.models import Rsvp, RsvpEvent
from subscribers.models import Subscriber, SubscriberStatus


@dataclass(frozen=True, slots=True)
class CampaignCounts:
    """Messages of one campaign by outcome."""

    campaign_id: int
    sent: int
    failed: int
    # Failed, and the address is now marked bounced (a permanent refusal); None once the
    # campaign's delivery rows are pruned.
    bounced: int | None


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
    """Sent, failed and bounced messages of every campaign that has deliveries.

    Sent and failed are the counts the campaign row keeps (campaigns.counts_repo), so a
    scrape reads one row per campaign, not millions of deliveries. Bounced is counted over
    the campaign's failed rows only, through the (campaign, status) index: failures are few,
    and the address's state is what says whether one was a bounce. A campaign whose delivery
    rows were pruned has no bounced figure (None) rather than a counter dropping to zero.
    """
    bounced = (
        select(func.count())
        .select_from(Delivery)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(
            Delivery.campaign_id == Campaign.id,
            Delivery.status == DeliveryStatus.failed,
            Subscriber.status == SubscriberStatus.bounced,
        )
        .scalar_subquery()
    )
    rows = db.execute(
        select(
            Campaign.id,
            Campaign.sent_count,
            Campaign.failed_count,
            case(
                (Campaign.pruned_at.is_not(None), None),
                (Campaign.failed_count > 0, bounced),
                else_=0,
            ),
        )
        .where(Campaign.recipient_count > 0)
        .order_by(Campaign.id)
    )
    return [
        CampaignCounts(row[0], row[1], row[2], None if row[3] is None else int(row[3]))
        for row in rows
    ]


def answer_counts(db: Session) -> list[AnswerCount]:
    """Current RSVP answers by kind (yes, maybe, no) and waitlist state."""
    rows = db.execute(
        select(Rsvp.answer, Rsvp.waitlisted, func.count())
        .group_by(Rsvp.answer, Rsvp.waitlisted)
        .order_by(Rsvp.answer, Rsvp.waitlisted)
    )
    return [AnswerCount(row[0], bool(row[1]), row[2]) for row in rows]


def queued_deliveries(db: Session) -> tuple[int, int]:
    """Deliveries waiting to be sent, and those claimed by a worker right now (the counts
    the campaign rows keep)."""
    row = db.execute(
        select(
            func.coalesce(func.sum(Campaign.queued_count), 0),
            func.coalesce(func.sum(Campaign.inflight_count), 0),
        )
    ).one()
    return int(row[0]), int(row[1])


def pending_notices(db: Session) -> int:
    """RSVP notice mails in the outbox, not yet sent nor given up: a number that keeps
    growing means no worker is sending them (the ``notice_due_at`` index serves it)."""
    return int(db.scalar(select(func.count()).where(RsvpEvent.notice_due_at.is_not(None))) or 0)
