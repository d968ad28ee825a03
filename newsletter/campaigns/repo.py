"""All SQL about campaigns and deliveries (who gets one: :mod:`.recipients`). Each query
says why it looks the way it does.

Progress lives in ``deliveries`` rows: a worker claims a batch by flipping rows from
``queued`` to ``inflight`` in one statement, sends, then marks them ``sent``. Nothing about
who has been mailed is kept only in the broker or in memory. Every function here that moves
a delivery's status moves the campaign's counts with it, in the same transaction
(:mod:`.counts_repo`); read paths read those counts, never count rows. Workers' heartbeats
and the rows of dead workers: :mod:`.sweep_repo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    Update,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from newsletter.campaigns.counts_repo import moved, shift
from newsletter.campaigns.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
)
from newsletter.campaigns.recipients import mailable
from newsletter.campaigns.sweep_repo import record_heartbeat
from newsletter.db import is_postgresql, utcnow
from newsletter.sessions.models import SalonSession
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
    attempts: int  # answered by the relay before this claim
    maybe_sent: bool = False  # an earlier copy may have been accepted
    # recipients.mailable at claim time: False for a person who left, paused or dropped the
    # campaign's topic since it was created (skipped, never mailed).
    mailable: bool = True


def claim_batch(db: Session, campaign_id: int, *, worker: str, limit: int) -> list[ClaimedDelivery]:
    """Atomically move up to ``limit`` due, queued deliveries to ``inflight`` for ``worker``.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets concurrent workers each take different rows
    without waiting on each other. SQLite has no row locks, but it runs one writer at a time
    and the UPDATE … WHERE id IN (SELECT … LIMIT) … RETURNING is a single statement, so two
    workers can never claim the same row there either. Rows waiting out a retry back-off
    (``next_attempt_at`` in the future) are not due yet. A claim is not an attempt: only an
    answer of the relay counts (see :func:`mark_answered`). The worker's heartbeat is written
    in the same transaction, so its rows are never seen held by a worker without one.

    On PostgreSQL the campaign row is locked first (``FOR NO KEY UPDATE``), as a cancel
    locks it before skipping queued rows: taking row locks then the campaign's (to move its
    counts) in the opposite order to a cancel could deadlock.
    """
    now = utcnow()
    record_heartbeat(db, worker)
    campaign_row = select(Campaign.tag).where(Campaign.id == campaign_id)
    if is_postgresql(db):
        campaign_row = campaign_row.with_for_update(key_share=True)
    tag = db.scalar(campaign_row)
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
    if is_postgresql(db):
        candidates = candidates.with_for_update(skip_locked=True)
    claimed = db.execute(
        update(Delivery)
        .where(Delivery.id.in_(candidates.scalar_subquery()))
        .values(status=DeliveryStatus.inflight, claimed_by=worker, claimed_at=now)
        .returning(Delivery.id, Delivery.subscriber_id, Delivery.attempts, Delivery.maybe_sent)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    shift(
        db,
        campaign_id,
        {DeliveryStatus.queued: -len(claimed), DeliveryStatus.inflight: len(claimed)},
    )
    by_subscriber = {row.subscriber_id: row for row in claimed}
    # Whether the person may be mailed is read at claim time (and again at each report, see
    # inactive_subscribers), by the same rule that chose the recipients, so an unsubscribe,
    # a pause or a dropped topic after the campaign was created counts.
    people = db.execute(
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.name,
            Subscriber.status,
            mailable(now, tag).label("mailable"),
        ).where(Subscriber.id.in_(list(by_subscriber)))
    ).all()
    claims = []
    for person in people:
        row = by_subscriber[person.id]
        claims.append(
            ClaimedDelivery(
                row.id,
                person.id,
                person.email,
                person.name,
                person.status,
                row.attempts,
                bool(row.maybe_sent),
                bool(person.mailable),
            )
        )
    return sorted(claims, key=lambda c: c.delivery_id)


def inactive_subscribers(
    db: Session, subscriber_ids: Sequence[int], *, campaign_id: int | None = None
) -> set[int]:
    """Which of ``subscriber_ids`` may no longer be mailed (unsubscribed, bounced, erased,
    paused; with ``campaign_id``, also those who dropped its topic): ``recipients.mailable``."""
    if not subscriber_ids:
        return set()
    tag = None
    if campaign_id is not None:
        tag = db.scalar(select(Campaign.tag).where(Campaign.id == campaign_id))
    still = set(
        db.scalars(
            select(Subscriber.id).where(Subscriber.id.in_(subscriber_ids), mailable(utcnow(), tag))
        )
    )
    return set(subscriber_ids) - still


def _owned(delivery_ids: Sequence[int], worker: str) -> ColumnElement[bool]:
    # Only rows this worker still holds: if a sweeper gave a row to another worker after
    # mistaking this one for dead, the new owner's outcome is the one that counts.
    return and_(
        Delivery.id.in_(delivery_ids),
        Delivery.status == DeliveryStatus.inflight,
        Delivery.claimed_by == worker,
    )


def mark_sent(db: Session, delivery_ids: Sequence[int], *, worker: str) -> int:
    """Mark this worker's in-flight deliveries sent: the relay accepted them (an answered
    attempt). A cancelled row stays cancelled."""
    if not delivery_ids:
        return 0
    return _from_inflight(
        db,
        update(Delivery)
        .where(_owned(delivery_ids, worker))
        .values(
            status=DeliveryStatus.sent,
            sent_at=utcnow(),
            last_error=None,
            attempts=Delivery.attempts + 1,
        ),
    )


def _from_inflight(db: Session, statement: Update) -> int:
    """Run an UPDATE of in-flight rows and move the counts by the rows it changed (their
    campaign and new status come back by RETURNING); returns how many changed."""
    rows = db.execute(
        statement.returning(Delivery.campaign_id, Delivery.status).execution_options(
            synchronize_session=False
        )
    ).all()
    return moved(db, DeliveryStatus.inflight, [(row[0], row[1]) for row in rows])


def _failed_unless_maybe_sent() -> ColumnElement[str]:
    # The one place where "a delivery the relay may have accepted is never failed" is kept:
    # such a row ends unconfirmed instead, whatever refused its re-send.
    return case(
        (Delivery.maybe_sent, literal(DeliveryStatus.unconfirmed.value)),
        else_=literal(DeliveryStatus.failed.value),
    )


def mark_failed(
    db: Session,
    delivery_ids: Sequence[int],
    reason: str,
    *,
    worker: str,
    answered: bool,
) -> None:
    """Fail this worker's in-flight deliveries for good, with the reason.

    ``answered``: the relay refused them (it counts as an attempt); otherwise they never
    reached it (an address this sender cannot use). A row that may already have been
    accepted (``maybe_sent``) becomes ``unconfirmed``, never ``failed``.
    """
    if delivery_ids:
        _from_inflight(
            db,
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(
                status=_failed_unless_maybe_sent(),
                last_error=reason,
                attempts=Delivery.attempts + 1 if answered else Delivery.attempts,
            ),
        )


def mark_skipped(db: Session, delivery_ids: Sequence[int], reason: str, *, worker: str) -> None:
    """Mark this worker's in-flight deliveries skipped (the person is not active any more)."""
    if delivery_ids:
        _from_inflight(
            db,
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(status=DeliveryStatus.skipped, last_error=reason),
        )


def defer(db: Session, delivery_id: int, *, worker: str, reason: str, not_before: datetime) -> None:
    """The relay refused this worker's delivery for now (4xx): an answered attempt; queued
    again, not due before ``not_before``."""
    _from_inflight(
        db,
        update(Delivery)
        .where(_owned([delivery_id], worker))
        .values(
            status=DeliveryStatus.queued,
            claimed_by=None,
            claimed_at=None,
            next_attempt_at=not_before,
            last_error=reason,
            attempts=Delivery.attempts + 1,
        ),
    )


def give_back(
    db: Session,
    delivery_ids: Sequence[int],
    *,
    worker: str,
    maybe_sent: bool = False,
    reason: str | None = None,
) -> None:
    """Give this worker's in-flight deliveries back to the queue as they were: the relay did
    not answer for them (never tried, no connection, the batch stopped). Not an attempt.

    ``maybe_sent``: the message was handed over and the connection broke before the reply,
    so the relay may have it (see :data:`Delivery.maybe_sent`).
    """
    if delivery_ids:
        values: dict[str, Any] = {
            "status": DeliveryStatus.queued,
            "claimed_by": None,
            "claimed_at": None,
        }
        if maybe_sent:
            values["maybe_sent"] = True
        if reason is not None:
            values["last_error"] = reason
        _from_inflight(db, update(Delivery).where(_owned(delivery_ids, worker)).values(**values))


def touch_claims(db: Session, delivery_ids: Sequence[int], *, worker: str) -> int:
    """Renew this worker's claim on rows it is still sending; returns how many it still
    holds (fewer than asked: a sweeper took this worker for dead and gave some away)."""
    if not delivery_ids:
        return 0
    return _affected(
        db.execute(
            update(Delivery)
            .where(_owned(delivery_ids, worker))
            .values(claimed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )


def skip_queued(db: Session, campaign_id: int, reason: str) -> int:
    """Mark every still-queued delivery of a campaign skipped (on cancel).

    One campaign and one status change, so the rowcount is what moved (no RETURNING of up to
    a million ids)."""
    result = db.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued)
        .values(status=DeliveryStatus.skipped, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    skipped = _affected(result)
    shift(db, campaign_id, {DeliveryStatus.queued: -skipped, DeliveryStatus.skipped: skipped})
    return skipped


@dataclass(frozen=True, slots=True)
class Pending:
    """What is left of a campaign when no row could be claimed right now."""

    queued: int
    inflight: int
    next_due: datetime | None  # the earliest back-off end among queued rows


def pending(db: Session, campaign_id: int) -> Pending:
    """Queued and in-flight rows (the campaign's counts), with the time that says when to
    look again: the earliest back-off end, read from ix_deliveries_campaign_status_due."""
    counts = db.execute(
        select(Campaign.queued_count, Campaign.inflight_count).where(Campaign.id == campaign_id)
    ).one_or_none()
    queued, inflight = (int(counts[0]), int(counts[1])) if counts else (0, 0)
    next_due = None
    if queued:
        next_due = db.scalar(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued
            )
        )
    # min() over a timestamp loses the type decorator on SQLite: restore UTC awareness.
    return Pending(queued, inflight, _aware(next_due))


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def get_campaign(db: Session, campaign_id: int) -> Campaign | None:
    """The campaign or None."""
    return db.get(Campaign, campaign_id)


def lock_campaign(db: Session, campaign_id: int) -> Campaign | None:
    """The campaign row, locked for update on PostgreSQL so state changes do not race."""
    query = select(Campaign).where(Campaign.id == campaign_id)
    if is_postgresql(db):
        query = query.with_for_update()
    return db.scalars(query).first()


def list_campaigns(
    db: Session, limit: int = 50, *, session_id: int | None = None
) -> list[Campaign]:
    """Newest campaigns first (of one salon's session, if given)."""
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit)
    if session_id is not None:
        query = query.where(Campaign.session_id == session_id)
    return list(db.scalars(query))


def list_with_numbers(
    db: Session, limit: int = 50, *, session_id: int | None = None
) -> list[tuple[Campaign, int]]:
    """Newest campaigns first, each with its session's number: one query for the whole list
    (the counts are on the campaign rows)."""
    query = (
        select(Campaign, SalonSession.number)
        .join(SalonSession, SalonSession.id == Campaign.session_id)
        .order_by(Campaign.id.desc())
        .limit(limit)
    )
    if session_id is not None:
        query = query.where(Campaign.session_id == session_id)
    return [(campaign, int(number)) for campaign, number in db.execute(query)]


def finish_if_done(db: Session, campaign_id: int) -> bool:
    """Mark a sending campaign finished when no delivery is queued or in flight (its counts
    say so: one conditional UPDATE of its row)."""
    result = db.execute(
        update(Campaign)
        .where(
            and_(
                Campaign.id == campaign_id,
                Campaign.status == CampaignStatus.sending,
                Campaign.queued_count == 0,
                Campaign.inflight_count == 0,
            )
        )
        .values(status=CampaignStatus.finished, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _affected(result) > 0


def record_progress(
    db: Session, campaign_id: int, *, succeeded: int, refused_temporarily: int
) -> int:
    """Note that a batch reported; returns the campaign's failure streak after this report.

    The streak counts temporary refusals since the last success, across all workers, so
    "the relay keeps refusing" is judged on the campaign, not on one batch.
    """
    streak: Any = literal(0) if succeeded else Campaign.failure_streak + refused_temporarily
    values: dict[str, Any] = {"failure_streak": streak, "last_progress_at": utcnow()}
    if succeeded:
        values["relay_failures"] = 0  # the relay answers again: probing starts afresh
    db.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(db.scalar(select(Campaign.failure_streak).where(Campaign.id == campaign_id)) or 0)
