"""All SQL of sign-up and of the subscription-mail outbox (``subscriber_mails``).

A row is due while ``due_at`` is set and not in the future. Claiming pushes ``due_at`` forward
by a lease, as the RSVP notice outbox does (``newsletter.rsvp.notice_repo``): a sender that
dies before recording the outcome leaves the row to the next sender once the lease runs out
(at least once, never lost). Sent rows keep ``sent_at``; given-up rows keep ``error``; both
stay, because the confirmation rows of the last day are the per-address limit's count.

Nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from newsletter.db import is_postgresql
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber, SubscriberMail, SubscriberMailKind, SubscriberStatus


@dataclass(frozen=True, slots=True)
class DueMail:
    """One outbox row leased to the caller."""

    id: int
    subscriber_id: int
    kind: SubscriberMailKind
    attempts: int  # including this one


def add(db: Session, subscriber_id: int, kind: SubscriberMailKind, now: datetime) -> int:
    """Queue one mail, due at once; its row id."""
    row = SubscriberMail(
        subscriber_id=subscriber_id, kind=kind.value, created_at=now, due_at=now, attempts=0
    )
    db.add(row)
    db.flush()
    return row.id


def add_many(
    db: Session, subscriber_ids: Sequence[int], kind: SubscriberMailKind, now: datetime
) -> None:
    """Queue one mail of ``kind`` for each of these subscribers (an import's new people):
    one executemany, not one INSERT round trip per person."""
    if subscriber_ids:
        db.execute(
            insert(SubscriberMail),
            [
                {
                    "subscriber_id": sid,
                    "kind": kind.value,
                    "created_at": now,
                    "due_at": now,
                    "attempts": 0,
                }
                for sid in subscriber_ids
            ],
        )


def lock_subscriber(db: Session, subscriber_id: int) -> Subscriber | None:
    """The subscriber row, locked until the transaction ends: two sign-ups of one address at
    once then count and queue one after the other, so the daily limit holds. PostgreSQL:
    ``FOR UPDATE``. SQLite ignores ``FOR UPDATE`` and lets two transactions read before
    either writes, so a no-op UPDATE of the row takes the database's write lock first."""
    query = select(Subscriber).where(Subscriber.id == subscriber_id)
    if is_postgresql(db):
        query = query.with_for_update()
    else:
        db.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id)
            .values(status=Subscriber.status)
            .execution_options(synchronize_session=False)
        )
    return db.scalars(query.execution_options(populate_existing=True)).one_or_none()


def confirms_since(db: Session, subscriber_id: int, since: datetime) -> int:
    """Confirmation mails queued for this person since ``since`` (sent, waiting or given up):
    the per-address limit. Uses the subscriber_id index; a person has a handful of rows."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(SubscriberMail)
            .where(
                SubscriberMail.subscriber_id == subscriber_id,
                SubscriberMail.kind == SubscriberMailKind.confirm.value,
                SubscriberMail.created_at >= since,
            )
        )
        or 0
    )


def is_confirm_mail_of(db: Session, mail_id: int, subscriber_id: int) -> bool:
    """Whether row ``mail_id`` is a confirmation mail queued for this subscriber (a confirm
    link names both; the row goes with the person when an expired sign-up is deleted)."""
    found = db.scalar(
        select(SubscriberMail.id).where(
            SubscriberMail.id == mail_id,
            SubscriberMail.subscriber_id == subscriber_id,
            SubscriberMail.kind == SubscriberMailKind.confirm.value,
        )
    )
    return found is not None


def claim_due(db: Session, *, now: datetime, lease_until: datetime, limit: int) -> list[DueMail]:
    """Lease up to ``limit`` due rows, oldest first.

    PostgreSQL skips rows another sender holds (``SKIP LOCKED``); on SQLite the UPDATE runs
    under the database write lock and re-checks the due time, so a row is never leased twice.
    """
    due = SubscriberMail.due_at <= now
    candidates = select(SubscriberMail.id).where(due).order_by(SubscriberMail.id).limit(limit)
    ids = list(db.scalars(candidates.with_for_update(skip_locked=True)))
    if not ids:
        return []
    rows = db.execute(
        update(SubscriberMail)
        .where(SubscriberMail.id.in_(ids), due)
        .values(due_at=lease_until, attempts=SubscriberMail.attempts + 1)
        .returning(
            SubscriberMail.id,
            SubscriberMail.subscriber_id,
            SubscriberMail.kind,
            SubscriberMail.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = [DueMail(r[0], r[1], SubscriberMailKind(str(r[2])), r[3]) for r in rows]
    return sorted(claimed, key=lambda mail: mail.id)


def settle(
    db: Session,
    ids: list[int],
    *,
    now: datetime,
    error: str | None,
    retry_at: datetime | None = None,
) -> None:
    """Record an outcome: sent (no error: ``sent_at``), given up (``error`` says why) or, with
    ``retry_at``, a temporary failure to try again then."""
    if not ids:
        return
    sent = error is None and retry_at is None
    db.execute(
        update(SubscriberMail)
        .where(SubscriberMail.id.in_(ids))
        .values(due_at=retry_at, error=error, sent_at=now if sent else None)
        .execution_options(synchronize_session=False)
    )


def activate(db: Session, subscriber_id: int, reason: str, now: datetime) -> bool:
    """A confirmed sign-up: pending or unsubscribed becomes active, ``confirmed_at`` set;
    whether the row changed. Conditional in the statement, so a bounce or a suppression that
    lands meanwhile is never overwritten (and an active person is left as they are)."""
    result = cast(
        CursorResult[Any],
        db.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber_id,
                Subscriber.status.in_(
                    [SubscriberStatus.pending.value, SubscriberStatus.unsubscribed.value]
                ),
            )
            .values(
                status=SubscriberStatus.active.value,
                status_changed_at=now,
                status_reason=reason,
                confirmed_at=now,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount > 0


def claim_welcome(db: Session, subscriber_id: int, now: datetime) -> bool:
    """Set ``welcomed_at`` if it is unset; whether this call set it. The one welcome a
    person ever gets is queued only by the caller that wins this (two confirmations at once,
    a second sign-up, a return after unsubscribing: none gets a second one)."""
    result = cast(
        CursorResult[Any],
        db.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id, Subscriber.welcomed_at.is_(None))
            .values(welcomed_at=now)
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount > 0


def set_joined_by(db: Session, subscriber_id: int, source: str) -> None:
    """Record how a person joined (``Subscriber.source``: "signup", "import")."""
    db.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(source=source)
        .execution_options(synchronize_session=False)
    )


def set_name(db: Session, subscriber_id: int, name: str) -> None:
    """A pending person signed up again with another name: the newest form wins."""
    db.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.status == SubscriberStatus.pending.value)
        .values(name=name)
        .execution_options(synchronize_session=False)
    )


def delete_expired_pending(db: Session, cutoff: datetime) -> int:
    """Delete people still pending who signed up before ``cutoff`` and were sent no
    confirmation since (a sign-up renewed on day 6 keeps its fresh link alive); how many.

    Their outbox rows go with them (ON DELETE CASCADE); a pending person has no deliveries or
    answers (they are mailed nothing else), so no other table stops the delete.
    """
    recent = exists().where(
        SubscriberMail.subscriber_id == Subscriber.id,
        SubscriberMail.kind == SubscriberMailKind.confirm.value,
        SubscriberMail.created_at >= cutoff,
    )
    result = cast(
        CursorResult[Any],
        db.execute(
            delete(Subscriber)
            .where(
                Subscriber.status == SubscriberStatus.pending.value,
                Subscriber.created_at < cutoff,
                ~recent,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount


def next_session(db: Session, now: datetime) -> SalonSession | None:
    """The next session still ahead and not cancelled, for the welcome mail (the starts_at
    index orders it)."""
    return db.scalars(
        select(SalonSession)
        .where(SalonSession.starts_at > now, SalonSession.cancelled.is_(False))
        .order_by(SalonSession.starts_at)
        .limit(1)
    ).one_or_none()
