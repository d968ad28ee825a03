"""All SQL of the waitlist's timing rules: confirming a promoted seat, finding seats whose time
to confirm ran out, and sessions with a seat freed inside the promotion cutoff.

A promoted seat is still to be confirmed while the answer is a confirmed "yes" whose
``confirm_by`` is set and whose promotion came after the "yes" was given (``promoted_at >=
answered_at``): a new "yes" later is a seat of its own, whatever an old promotion left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
from newsletter.rsvp.waitlist_repo import place_statement
from newsletter.sessions.models import SalonSession


def answer_of(db: Session, session_id: int, subscriber_id: int) -> Rsvp | None:
    """The person's answer for the session, if any."""
    return db.scalars(
        select(Rsvp).where(Rsvp.session_id == session_id, Rsvp.subscriber_id == subscriber_id)
    ).first()


def pending(answer: Rsvp) -> bool:
    """Whether ``answer`` is a promoted seat still to be confirmed (see the module)."""
    return (
        answer.answer == Answer.yes
        and not answer.waitlisted
        and answer.confirm_by is not None
        and answer.promoted_at is not None
        and answer.promoted_at >= answer.answered_at
    )


def _pending() -> ColumnElement[bool]:
    return (
        (Rsvp.answer == Answer.yes.value)
        & Rsvp.waitlisted.is_(False)
        & Rsvp.confirm_by.is_not(None)
        & (Rsvp.promoted_at >= Rsvp.answered_at)
    )


def place(db: Session, answer: Rsvp) -> int:
    """The waiting answer's place in line (1 = next), counted as the answer pages count it."""
    values = {"session_id": answer.session_id, "queue_no": answer.queue_no, "rsvp_id": answer.id}
    return int(db.execute(place_statement(), values).scalar_one())


def confirm(db: Session, session_id: int, subscriber_id: int, now: datetime) -> bool:
    """The promoted person keeps their seat: True if it was theirs to confirm (in time)."""
    result = db.execute(
        update(Rsvp)
        .where(
            Rsvp.session_id == session_id,
            Rsvp.subscriber_id == subscriber_id,
            _pending(),
            Rsvp.confirm_by > now,
        )
        .values(confirm_by=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True, slots=True)
class Lapsed:
    """A promoted seat not confirmed in time."""

    session_id: int
    subscriber_id: int


def due_lapses(db: Session, now: datetime, limit: int = 100) -> list[Lapsed]:
    """Promoted seats whose time to confirm has run out, for sessions not yet started (nor
    cancelled)."""
    rows = db.execute(
        select(Rsvp.session_id, Rsvp.subscriber_id)
        .join(SalonSession, SalonSession.id == Rsvp.session_id)
        .where(
            _pending(),
            Rsvp.confirm_by <= now,
            SalonSession.starts_at > now,
            SalonSession.cancelled.is_(False),  # a cancelled session's answers stay as they are
        )
        .order_by(Rsvp.confirm_by, Rsvp.id)
        .limit(limit)
    )
    return [Lapsed(row[0], row[1]) for row in rows]


def claim_lapse(db: Session, lapsed: Lapsed, now: datetime) -> bool:
    """Take the seat's lapse for this transaction: False if it was confirmed (or lapsed by
    another worker) meanwhile."""
    result = db.execute(
        update(Rsvp)
        .where(
            Rsvp.session_id == lapsed.session_id,
            Rsvp.subscriber_id == lapsed.subscriber_id,
            _pending(),
            Rsvp.confirm_by <= now,
        )
        .values(confirm_by=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def add_lapsed_notice(db: Session, lapsed: Lapsed, now: datetime) -> None:
    """The lapsed person's mail, in the notice outbox (due now)."""
    db.add(
        RsvpEvent(
            session_id=lapsed.session_id,
            subscriber_id=lapsed.subscriber_id,
            answer=Answer.no.value,
            waitlisted=False,
            at=now,
            notice=NoticeKind.lapsed.value,
            notice_due_at=now,
        )
    )
    db.flush()


def held_candidates(db: Session, now: datetime) -> list[SalonSession]:
    """Sessions ahead with a promotion cutoff, a free seat and someone waiting (whether now
    is inside the cutoff is the caller's test: it is the session's own duration)."""
    return list(
        db.scalars(
            select(SalonSession)
            .where(
                SalonSession.promotion_cutoff_s.is_not(None),
                SalonSession.capacity.is_not(None),
                SalonSession.cancelled.is_(False),
                SalonSession.starts_at > now,
                SalonSession.waiting > 0,
                SalonSession.seats_taken < SalonSession.capacity,
            )
            .order_by(SalonSession.id)
        )
    )


def last_freed_at(db: Session, session_id: int) -> datetime | None:
    """When an answer last stopped being "yes" for the session (a seat may have come free)."""
    return db.scalar(
        select(func.max(RsvpEvent.at)).where(
            RsvpEvent.session_id == session_id, RsvpEvent.answer != Answer.yes.value
        )
    )


def claim_held(db: Session, salon: SalonSession, now: datetime) -> bool:
    """Record that the organizer is told now; False if another worker told them already."""
    before = salon.promotion_held_at
    told = (
        SalonSession.promotion_held_at.is_(None)
        if before is None
        else SalonSession.promotion_held_at == before
    )
    result = db.execute(
        update(SalonSession)
        .where(SalonSession.id == salon.id, told)
        .values(promotion_held_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def unclaim_held(
    db: Session, session_id: int, claimed_at: datetime, before: datetime | None
) -> None:
    """Give back :func:`claim_held`'s claim made at ``claimed_at`` (only if it is still that
    one): the organizer's mail did not go, so "told" must not say it did."""
    db.execute(
        update(SalonSession)
        .where(SalonSession.id == session_id, SalonSession.promotion_held_at == claimed_at)
        .values(promotion_held_at=before)
        .execution_options(synchronize_session=False)
    )
