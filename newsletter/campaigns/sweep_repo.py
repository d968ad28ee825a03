"""SQL that finds work nobody is doing: worker heartbeats and the rows of workers that
stopped (see :mod:`.heartbeat`), stalled campaigns, due relay probes and due schedules.

A worker process upserts one ``worker_heartbeats`` row while it holds deliveries; rows in
flight whose worker's heartbeat went quiet are given back here. The claim loop and beat's
sweep (``tasks.campaigns.sweep``) ask these questions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, Result, and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from newsletter.campaigns.counts_repo import moved
from newsletter.campaigns.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    WorkerHeartbeat,
)
from newsletter.db import is_postgresql, utcnow


def _affected(result: Result[Any]) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def record_heartbeat(db: Session, worker: str) -> None:
    """Say that ``worker`` is alive now (one row per worker process, upserted)."""
    insert = pg_insert if is_postgresql(db) else sqlite_insert
    statement = insert(WorkerHeartbeat).values(worker_id=worker, beat_at=utcnow())
    db.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.worker_id],
            set_={"beat_at": statement.excluded.beat_at},
        )
    )


def forget_old_heartbeats(db: Session, *, older_than: timedelta) -> int:
    """Delete heartbeats of workers gone for ``older_than`` (each restart adds a row)."""
    result = db.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.beat_at < utcnow() - older_than)
    )
    return _affected(result)


def requeue_orphans(
    db: Session,
    *,
    dead_after: timedelta,
    stuck_after: timedelta,
    campaign_id: int | None = None,
) -> int:
    """Give back in-flight rows whose worker is gone: its heartbeat (or, with no heartbeat
    row, its claim) is older than ``dead_after``; or rows whose claim was not renewed for
    ``stuck_after`` (a worker alive but stuck in one transaction). Of one campaign, or all.

    The worker may have handed some of them over before it stopped, so they are marked
    ``maybe_sent``: sent again with the same Message-ID (receivers treat it as the same
    message), and never failed because the re-send was refused.
    """
    now = utcnow()
    alive = select(WorkerHeartbeat.worker_id).where(
        WorkerHeartbeat.worker_id == Delivery.claimed_by,
        WorkerHeartbeat.beat_at >= now - dead_after,
    )
    condition = and_(
        Delivery.status == DeliveryStatus.inflight,
        or_(
            and_(Delivery.claimed_at < now - dead_after, ~alive.exists()),
            Delivery.claimed_at < now - stuck_after,
        ),
    )
    if campaign_id is not None:
        condition = and_(Delivery.campaign_id == campaign_id, condition)
    rows = db.execute(
        update(Delivery)
        .where(condition)
        .values(status=DeliveryStatus.queued, claimed_by=None, claimed_at=None, maybe_sent=True)
        .returning(Delivery.campaign_id, Delivery.status)
        .execution_options(synchronize_session=False)
    ).all()
    # The counts move with the rows (of every campaign given back from, when not one).
    return moved(db, DeliveryStatus.inflight, [(row[0], row[1]) for row in rows])


def stalled_campaigns(db: Session, *, quiet_for: timedelta) -> list[int]:
    """Sending campaigns with rows due now and no batch report for ``quiet_for``: nobody is
    working on them, so their batch tasks were lost (a killed worker held them, or a broker
    restart without persistence). A campaign whose rows all wait out a back-off is not
    stalled: its chains sleep until then."""
    now = utcnow()
    limit = now - quiet_for
    due = select(Delivery.id).where(
        Delivery.campaign_id == Campaign.id,
        Delivery.status == DeliveryStatus.queued,
        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
    )
    return list(
        db.scalars(
            select(Campaign.id).where(
                Campaign.status == CampaignStatus.sending,
                or_(
                    Campaign.last_progress_at < limit,
                    and_(Campaign.last_progress_at.is_(None), Campaign.started_at < limit),
                ),
                due.exists(),
            )
        )
    )


def relay_probes_due(db: Session) -> list[int]:
    """Campaigns waiting for the relay whose next probe is due."""
    return list(
        db.scalars(
            select(Campaign.id).where(
                Campaign.status == CampaignStatus.waiting, Campaign.relay_retry_at <= utcnow()
            )
        )
    )


def due_scheduled(db: Session) -> list[int]:
    """Scheduled campaigns whose time has come."""
    return list(
        db.scalars(
            select(Campaign.id).where(
                Campaign.status == CampaignStatus.scheduled, Campaign.scheduled_at <= utcnow()
            )
        )
    )
