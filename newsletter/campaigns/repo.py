"""All SQL about campaigns and deliveries (who gets one: :mod:`.recipients`). Each query
says why it looks the way it does.

Progress lives in ``deliveries`` rows: a worker claims a batch by flipping rows from
``queued`` to ``inflight`` in one statement, sends, then marks them ``sent``. Nothing about
who has been mailed is kept only in the broker or in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from newsletter.db import is_postgresql, utcnow
from subscribers.models import Subscriber


def _affected(result: Result[Any]) -> int:
    """Rows an UPDATE changed (session.execute types its result as the generic Result)."""
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery a worker now owns, with what it needs to address the mail."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    subscriber_status: str
    attempts: int  # including this one


def claim_batch(
    session: Session, campaign_id: int, *, worker: str, limit: int
) -> list[ClaimedDelivery]:
    """Atomically move up to ``limit`` due, queued deliveries to ``inflight`` for ``worker``.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets concurrent workers each take different rows
    without waiting on each other. SQLite has no row locks, but it runs one writer at a time
    and the UPDATE … WHERE id IN (SELECT … LIMIT) … RETURNING is a single statement, so two
    workers can never claim the same row there either. Rows waiting out a retry back-off
    (``next_attempt_at`` in the future) are not due yet.
    """
    now = utcnow()
    candidates = (
        select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.queued,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
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
            claimed_at=now,
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.id, Delivery.subscriber_id, Delivery.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    by_subscriber = {sid: (did, attempts) for did, sid, attempts in claimed}
    # Status is read at claim time, so an unsubscribe after the campaign was created counts.
    people = session.execute(
        select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status).where(
            Subscriber.id.in_(list(by_subscriber))
        )
    ).all()
    claims = []
    for person in people:
        delivery_id, attempts = by_subscriber[person.id]
        claims.append(
            ClaimedDelivery(
                delivery_id, person.id, person.email, person.name, person.status, attempts
            )
        )
    return sorted(claims, key=lambda c: c.delivery_id)


def _owned(delivery_ids: Sequence[int], worker: str) -> ColumnElement[bool]:
    # Only rows this worker still holds: if a sweeper gave a row to another worker after
    # mistaking this one for dead, the new owner's outcome is the one that counts.
    return and_(
        Delivery.id.in_(delivery_ids),
        Delivery.status == DeliveryStatus.inflight,
        Delivery.claimed_by == worker,
    )


def mark_sent(session: Session, delivery_ids: Sequence[int], *, worker: str) -> int:
    """Mark this worker's in-flight deliveries sent (a cancelled row stays cancelled)."""
    if not delivery_ids:
        return 0
    result = session.execute(
        update(Delivery)
        .where(_owned(delivery_ids, worker))
        .values(status=DeliveryStatus.sent, sent_at=utcnow(), last_error=None)
        .execution_options(synchronize_session=False)
    )
    return _affected(result)


def mark_final(
    session: Session,
    delivery_ids: Sequence[int],
    status: DeliveryStatus,
    reason: str | None,
    *,
    worker: str,
) -> None:
    """Mark this worker's in-flight deliveries failed or skipped, with the reason."""
    if delivery_ids:
        session.execute(
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(status=status, last_error=reason)
            .execution_options(synchronize_session=False)
        )


def requeue(
    session: Session,
    delivery_ids: Sequence[int],
    *,
    worker: str,
    not_before: datetime | None,
    reason: str | None,
    refund_attempt: bool = False,
) -> None:
    """Give this worker's in-flight deliveries back to the queue, due at ``not_before``.

    ``refund_attempt`` is for rows that were claimed but never tried (the batch stopped
    first): their attempt does not count towards the retry limit.
    """
    if delivery_ids:
        session.execute(
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(
                status=DeliveryStatus.queued,
                claimed_by=None,
                claimed_at=None,
                next_attempt_at=not_before,
                last_error=reason,
                attempts=Delivery.attempts - 1 if refund_attempt else Delivery.attempts,
            )
            .execution_options(synchronize_session=False)
        )


def touch_claims(session: Session, delivery_ids: Sequence[int], *, worker: str) -> None:
    """Renew this worker's claim on rows it is still sending: the sweeper's heartbeat."""
    if delivery_ids:
        session.execute(
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(claimed_at=utcnow())
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


def requeue_stale(session: Session, campaign_id: int, *, older_than: timedelta) -> int:
    """Give back in-flight rows whose worker has not reported for ``older_than`` (it died).

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


@dataclass(frozen=True, slots=True)
class Pending:
    """What is left of a campaign when no row could be claimed right now."""

    queued: int
    inflight: int
    next_due: datetime | None  # the earliest back-off end among queued rows


def pending(session: Session, campaign_id: int) -> Pending:
    """Queued and in-flight rows, with the times that say when to look again."""
    queued = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at)).where(
            Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued
        )
    ).one()
    inflight = session.scalar(
        select(func.count()).where(
            Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.inflight
        )
    )
    # min() over a timestamp loses the type decorator on SQLite: restore UTC awareness.
    return Pending(int(queued[0]), int(inflight or 0), _aware(queued[1]))


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def final_counts(session: Session, campaign_id: int) -> tuple[int, int]:
    """(sent, failed) so far: what the error budget is judged on."""
    counts = delivery_counts(session, campaign_id)
    return counts[DeliveryStatus.sent], counts[DeliveryStatus.failed]


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


def record_progress(
    session: Session, campaign_id: int, *, succeeded: int, refused_temporarily: int
) -> int:
    """Note that a batch reported; returns the campaign's failure streak after this report.

    The streak counts temporary refusals since the last success, across all workers, so
    "the relay keeps refusing" is judged on the campaign, not on one batch.
    """
    streak: Any = literal(0) if succeeded else Campaign.failure_streak + refused_temporarily
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(failure_streak=streak, last_progress_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(
        session.scalar(select(Campaign.failure_streak).where(Campaign.id == campaign_id)) or 0
    )


def stalled_campaigns(session: Session, *, quiet_for: timedelta) -> list[int]:
    """Sending campaigns with no batch report for ``quiet_for``: their tasks may be lost."""
    limit = utcnow() - quiet_for
    return list(
        session.scalars(
            select(Campaign.id).where(
                Campaign.status == CampaignStatus.sending,
                or_(
                    Campaign.last_progress_at < limit,
                    and_(Campaign.last_progress_at.is_(None), Campaign.started_at < limit),
                ),
            )
        )
    )


def due_scheduled(session: Session) -> list[int]:
    """Scheduled campaigns whose time has come."""
    return list(
        session.scalars(
            select(Campaign.id).where(
                Campaign.status == CampaignStatus.scheduled, Campaign.scheduled_at <= utcnow()
            )
        )
    )
