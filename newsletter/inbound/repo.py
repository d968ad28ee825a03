"""The SQL of mail coming back, each query with the reason it is shaped as it is."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.inbound.models import InboundEvent, InboundKind


def event_by_fingerprint(db: Session, fingerprint: str) -> InboundEvent | None:
    """The event already stored for this fingerprint (the unique index answers)."""
    return db.scalar(select(InboundEvent).where(InboundEvent.fingerprint == fingerprint))


def delivery_row(db: Session, delivery_id: int) -> tuple[int, int] | None:
    """(campaign id, subscriber id) of a delivery, or None once pruned (primary key)."""
    row = db.execute(
        select(Delivery.campaign_id, Delivery.subscriber_id).where(Delivery.id == delivery_id)
    ).first()
    return (row[0], row[1]) if row else None


def latest_delivery_of(db: Session, subscriber_id: int) -> tuple[int, int] | None:
    """(delivery id, campaign id) of the subscriber's newest delivery that was handed over.

    Matching by address alone: the mail that came back is most likely the last one sent.
    The subscriber_id index finds the person's few rows; sent and unconfirmed rows only,
    since a queued or skipped delivery never left.
    """
    row = db.execute(
        select(Delivery.id, Delivery.campaign_id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_([DeliveryStatus.sent, DeliveryStatus.unconfirmed]),
        )
        .order_by(Delivery.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def campaign_exists(db: Session, campaign_id: int) -> bool:
    """Whether the campaign row is there (a token names one that may have been deleted)."""
    return db.scalar(select(Campaign.id).where(Campaign.id == campaign_id)) is not None


def count_kind_since(db: Session, subscriber_id: int, kind: InboundKind, since: datetime) -> int:
    """This subscriber's events of ``kind`` since ``since``: the soft-bounce window, read
    from ix_inbound_events_subscriber_kind_at alone."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(
                InboundEvent.subscriber_id == subscriber_id,
                InboundEvent.kind == kind.value,
                InboundEvent.received_at >= since,
            )
        )
        or 0
    )


def counted_before(db: Session, delivery_id: int, kind: InboundKind, event_id: int) -> bool:
    """Whether another event of ``kind`` for this delivery exists: a campaign counts a
    delivery's bounce (or complaint) once, whatever the number of reports about it."""
    return (
        db.scalar(
            select(InboundEvent.id)
            .where(
                InboundEvent.delivery_id == delivery_id,
                InboundEvent.kind == kind.value,
                InboundEvent.id != event_id,
            )
            .limit(1)
        )
        is not None
    )


def add_to_campaign(
    db: Session, campaign_id: int, *, bounces: int = 0, complaints: int = 0
) -> None:
    """Add to a campaign's bounce/complaint counts in one statement (no read-modify-write,
    so two receivers at once both count)."""
    db.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(
            bounce_count=Campaign.bounce_count + bounces,
            complaint_count=Campaign.complaint_count + complaints,
        )
    )
