"""All SQL of the notice outbox: leasing due notices to a sender, recording what became of them.

A notice is due while its history row's ``notice_due_at`` is set and not in the future.
Claiming pushes that time forward by a lease: a sender that dies before recording the outcome
leaves the notice to the next sender once the lease runs out (at least once, never lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.rsvp.models import NoticeKind, RsvpEvent


@dataclass(frozen=True, slots=True)
class DueNotice:
    """One notice leased to the caller."""

    id: int
    session_id: int
    subscriber_id: int
    kind: NoticeKind
    attempts: int  # including this one


def claim_due(
    db: Session,
    *,
    now: datetime,
    lease_until: datetime,
    session_id: int | None = None,
    limit: int = 100,
) -> list[DueNotice]:
    """Lease up to ``limit`` due notices (of one session, or all), oldest first.

    PostgreSQL skips rows another sender holds (``SKIP LOCKED``); on SQLite the UPDATE runs
    under the database write lock and re-checks the due time, so a row is never leased twice.
    """
    due = RsvpEvent.notice_due_at <= now
    candidates = select(RsvpEvent.id).where(due).order_by(RsvpEvent.id).limit(limit)
    if session_id is not None:
        candidates = candidates.where(RsvpEvent.session_id == session_id)
    ids = list(db.scalars(candidates.with_for_update(skip_locked=True)))
    if not ids:
        return []
    rows = db.execute(
        update(RsvpEvent)
        .where(RsvpEvent.id.in_(ids), due)
        .values(notice_due_at=lease_until, notice_attempts=RsvpEvent.notice_attempts + 1)
        .returning(
            RsvpEvent.id,
            RsvpEvent.session_id,
            RsvpEvent.subscriber_id,
            RsvpEvent.notice,
            RsvpEvent.notice_attempts,
        )
        .execution_options(synchronize_session=False)
    )
    # Only rows with a notice ever get a due time, so row[3] is never NULL here.
    claimed = [DueNotice(row[0], row[1], row[2], NoticeKind(str(row[3])), row[4]) for row in rows]
    return sorted(claimed, key=lambda notice: notice.id)


def settle(
    db: Session, ids: list[int], *, error: str | None, retry_at: datetime | None = None
) -> None:
    """Record an outcome: sent (no error), given up (``error`` says why) or, with
    ``retry_at``, a temporary failure to try again then."""
    if ids:
        db.execute(
            update(RsvpEvent)
            .where(RsvpEvent.id.in_(ids))
            .values(notice_due_at=retry_at, notice_error=error)
            .execution_options(synchronize_session=False)
        )


def drop_pending(db: Session, subscriber_id: int, *, reason: str) -> int:
    """Give up every notice of one subscriber not yet sent (due, waiting for a retry or leased
    to a sender), recording ``reason``; how many were dropped. A mail that a sender claimed
    before this commit may still go out (the sender checked the subscriber when it claimed);
    its outcome then overwrites the reason, truthfully."""
    result = db.execute(
        update(RsvpEvent)
        .where(RsvpEvent.subscriber_id == subscriber_id, RsvpEvent.notice_due_at.is_not(None))
        .values(notice_due_at=None, notice_error=reason)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
