"""All SQL about campaigns and deliveries. Each query says why it looks the way it does.

Progress lives in ``deliveries`` rows: a worker claims a batch by flipping rows from
``queued`` to ``inflight`` in one statement, sends, then marks them ``sent``. Nothing about
who has been mailed is kept only in the broker or in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Result, and_, func, insert, literal, select, update
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from newsletter.db import is_postgresql, utcnow
from subscribers.models import Subscriber, SubscriberStatus, Tag, subscriber_tags


def _affected(result: Result[Any]) -> int:
    """Rows an UPDATE changed (session.execute types its result as the generic Result)."""
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def snapshot_recipients(session: Session, campaign: Campaign) -> int:
    """Create one queued delivery per active subscriber (optionally with the campaign's tag).

    A single INSERT … SELECT: the recipient list never passes through Python, so a campaign
    of a million subscribers is created in one statement inside the caller's transaction.
    """
    audience = select(
        literal(campaign.id), Subscriber.id, literal(DeliveryStatus.queued.value), literal(0)
    ).where(Subscriber.status == SubscriberStatus.active)
    if campaign.tag:
        audience = audience.where(
            Subscriber.id.in_(
                select(subscriber_tags.c.subscriber_id)
                .join(Tag, Tag.id == subscriber_tags.c.tag_id)
                .where(Tag.name == campaign.tag)
            )
        )
    session.execute(
        insert(Delivery).from_select(
            ["campaign_id", "subscriber_id", "status", "attempts"], audience
        )
    )
    # Counted afterwards (an index-only scan): psycopg reports no rowcount for INSERT … SELECT.
    return int(
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.campaign_id == campaign.id)
        )
        or 0
    )


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery a worker now owns, with what it needs to address the mail."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    subscriber_status: str


def claim_batch(
    session: Session, campaign_id: int, *, worker: str, limit: int
) -> list[ClaimedDelivery]:
    """Atomically move up to ``limit`` queued deliveries to ``inflight`` for ``worker``.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets concurrent workers each take different rows
    without waiting on each other. SQLite has no row locks, but it runs one writer at a time
    and the UPDATE … WHERE id IN (SELECT … LIMIT) … RETURNING is a single statement, so two
    workers can never claim the same row there either.
    """
    candidates = (
        select(Delivery.id)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued)
        .order_by(Delivery.id)
        .limit(limit)
    )
    if is_postgresql(session):
        candidates = candidates.with_for_update(skip_locked=True)
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(candidates.scalar_subquery()))
        .values(
            status=DeliveryStatus.inflight,
            claimed_by=worker,
            claimed_at=utcnow(),
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.id, Delivery.subscriber_id)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    by_id = {sid: did for did, sid in claimed}
    people = session.execute(
        select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status).where(
            Subscriber.id.in_(list(by_id))
        )
    ).all()
    return sorted(
        (ClaimedDelivery(by_id[p.id], p.id, p.email, p.name, p.status) for p in people),
        key=lambda c: c.delivery_id,
    )


def mark_sent(session: Session, delivery_ids: Sequence[int], *, at: datetime) -> None:
    """Mark deliveries sent; only rows still in flight, so a cancelled row stays cancelled."""
    if delivery_ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.inflight)
            .values(status=DeliveryStatus.sent, sent_at=at, last_error=None)
            .execution_options(synchronize_session=False)
        )


def mark_outcome(
    session: Session, delivery_ids: Sequence[int], status: DeliveryStatus, reason: str | None
) -> None:
    """Mark in-flight deliveries failed, skipped, or back to queued (for a retry)."""
    if delivery_ids:
        values: dict[str, object] = {"status": status, "last_error": reason}
        if status == DeliveryStatus.queued:
            values.update(claimed_by=None, claimed_at=None)
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.inflight)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def skip_queued(session: Session, campaign_id: int, reason: str) -> int:
    """Mark every still-queued delivery of a campaign skipped (on cancel)."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued)
        .values(status=DeliveryStatus.skipped, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return _affected(result)


def attempts_at_least(session: Session, delivery_ids: Sequence[int], limit: int) -> list[int]:
    """Which of these deliveries have been tried ``limit`` times or more."""
    if not delivery_ids:
        return []
    return list(
        session.scalars(
            select(Delivery.id).where(Delivery.id.in_(delivery_ids), Delivery.attempts >= limit)
        )
    )


def requeue_stale(session: Session, campaign_id: int, *, older_than: timedelta) -> int:
    """Give back in-flight rows whose worker has held them too long (it died).

    The mail may already have left; it is sent again with the same Message-ID, so receivers
    and the file outbox treat it as the same message.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.inflight,
            Delivery.claimed_at < utcnow() - older_than,
        )
        .values(status=DeliveryStatus.queued, claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return _affected(result)


def delivery_counts(session: Session, campaign_id: int) -> dict[str, int]:
    """Deliveries by status, from the rows (the index covers campaign_id, status)."""
    counts = {status.value: 0 for status in DeliveryStatus}
    for status, count in session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.status)
    ):
        counts[status] = int(count)
    return counts


def get_campaign(session: Session, campaign_id: int) -> Campaign | None:
    """The campaign or None."""
    return session.get(Campaign, campaign_id)


def lock_campaign(session: Session, campaign_id: int) -> Campaign | None:
    """The campaign row, locked for update on PostgreSQL so state changes do not race."""
    query = select(Campaign).where(Campaign.id == campaign_id)
    if is_postgresql(session):
        query = query.with_for_update()
    return session.scalars(query).first()


def list_campaigns(session: Session, limit: int = 50) -> list[Campaign]:
    """Newest campaigns first."""
    return list(session.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(limit)))


def finish_if_done(session: Session, campaign_id: int) -> bool:
    """Mark a sending campaign finished when no delivery is queued or in flight."""
    pending = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.inflight]),
        )
    )
    if pending:
        return False
    result = session.execute(
        update(Campaign)
        .where(and_(Campaign.id == campaign_id, Campaign.status == CampaignStatus.sending))
        .values(status=CampaignStatus.finished, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _affected(result) > 0
