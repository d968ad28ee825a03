"""SQL about answers other than recording one (that is :mod:`newsletter.rsvp.decision_repo`):
the link's rows, the sessions a departure gives up, counts and lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.orm import QueryableAttribute, Session, defer, lazyload

from newsletter.db import is_postgresql
from newsletter.rsvp.models import Answer, Rsvp
from newsletter.rsvp.waitlist_repo import place_statement
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber

# Built once: on the answer path, building these statements cost more CPU than running them.
_ADDRESSEE = (
    select(SalonSession, Subscriber)
    .join(Subscriber, Subscriber.id == bindparam("subscriber_id"))
    .where(SalonSession.id == bindparam("session_id"))
    # Not the tags' eager load (links never need them), and not the record's JSON: pages
    # take the parsed record from sessions.repo.record_of's cache, which loads it on a miss.
    .options(lazyload(Subscriber.tags), defer(SalonSession.record))
)


def addressee_rows(
    db: Session, session_id: int, subscriber_id: int
) -> tuple[SalonSession, Subscriber] | None:
    """The session and the subscriber a link names, in one round trip; None if either is gone."""
    row = db.execute(_ADDRESSEE, {"session_id": session_id, "subscriber_id": subscriber_id}).first()
    return (row[0], row[1]) if row else None


def get(db: Session, session_id: int, subscriber_id: int) -> Rsvp | None:
    """A subscriber's current answer for a session."""
    return db.scalars(
        select(Rsvp).where(Rsvp.session_id == session_id, Rsvp.subscriber_id == subscriber_id)
    ).first()


def lock_sessions_ahead(db: Session, now: datetime) -> None:
    """Lock every session still ahead (not started, not cancelled) until the transaction
    ends, in id order, before their answers are read: two people leaving at once take them
    in the same order. SQLite: the write lock of the database."""
    ahead = (SalonSession.starts_at > now) & SalonSession.cancelled.is_(False)
    if is_postgresql(db):
        db.execute(select(SalonSession.id).where(ahead).order_by(SalonSession.id).with_for_update())
        return
    db.execute(
        update(SalonSession)
        .where(ahead)
        .values(revision=SalonSession.revision)
        .execution_options(synchronize_session=False)
    )


def waitlist_position(db: Session, rsvp: Rsvp) -> int:
    """1 for the first in line (only active subscribers are in line); see
    :func:`newsletter.rsvp.waitlist_repo.place_statement`."""
    db.flush()
    values = {"session_id": rsvp.session_id, "queue_no": rsvp.queue_no, "rsvp_id": rsvp.id}
    return int(db.scalar(place_statement(), values) or 1)


def answered_ahead(db: Session, subscriber_id: int, now: datetime) -> list[int]:
    """Sessions still ahead (not started, not cancelled) for which the subscriber's answer
    is something other than "no": what they give up when they leave the list.

    In session id order, so that two people leaving at once lock sessions in the same order.
    """
    return list(
        db.scalars(
            select(Rsvp.session_id)
            .join(SalonSession, SalonSession.id == Rsvp.session_id)
            .where(
                Rsvp.subscriber_id == subscriber_id,
                Rsvp.answer != Answer.no,
                SalonSession.starts_at > now,
                SalonSession.cancelled.is_(False),
            )
            .order_by(Rsvp.session_id)
        )
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """Answers for one session."""

    yes: int
    maybe: int
    no: int
    waitlisted: int
    seats: int  # confirmed people, guests included

    @property
    def answers(self) -> int:
        """Everyone who answered, whatever the answer (the length of the attendee list)."""
        return self.yes + self.waitlisted + self.maybe + self.no


def counts(db: Session, session_id: int) -> Counts:
    """Counts for one session in one grouped query."""
    confirmed = (Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False)
    row = db.execute(
        select(
            func.sum(case((confirmed, 1), else_=0)),
            func.sum(case((Rsvp.answer == Answer.maybe, 1), else_=0)),
            func.sum(case((Rsvp.answer == Answer.no, 1), else_=0)),
            func.sum(case((Rsvp.waitlisted.is_(True), 1), else_=0)),
            func.sum(case((confirmed, 1 + Rsvp.guests), else_=0)),
        ).where(Rsvp.session_id == session_id)
    ).one()
    return Counts(*(int(value or 0) for value in row))


@dataclass(frozen=True, slots=True)
class AttendeeRow:
    """One answer with who gave it, for lists and CSV exports."""

    name: str
    email: str
    answer: str
    guests: int
    waitlisted: bool
    answered_at: datetime
    updated_at: datetime
    checked_in_at: datetime | None = None  # marked present at the door


# A column or an expression of columns, in the SQL built below.
_Sql = ColumnElement[Any] | QueryableAttribute[Any]


def _attendee_order() -> tuple[_Sql, ...]:
    """Confirmed first, then the waitlist in order, then maybe, then no: every list and CSV."""
    state = case(
        ((Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False), 0),
        (Rsvp.waitlisted.is_(True), 1),
        (Rsvp.answer == Answer.maybe, 2),
        else_=3,
    )
    return (state, Rsvp.queue_no, Rsvp.answered_at, Rsvp.id)


def attendees(db: Session, session_id: int, *, limit: int | None = None) -> list[AttendeeRow]:
    """Every answer for a session (the first ``limit`` of them, for a page that shows only
    so many): confirmed first, then the waitlist in order, then the rest. Read on the
    connection in one fetch: a list of 74,000 answers spent half its time in the ORM's
    per-row loading, which plain column rows do not need."""
    rows = db.connection().execute(
        select(
            Subscriber.name,
            Subscriber.email,
            Rsvp.answer,
            Rsvp.guests,
            Rsvp.waitlisted,
            Rsvp.answered_at,
            Rsvp.updated_at,
            Rsvp.checked_in_at,
        )
        .join(Subscriber, Subscriber.id == Rsvp.subscriber_id)
        .where(Rsvp.session_id == session_id)
        .order_by(*_attendee_order())
        .limit(limit)
    )
    return [AttendeeRow(*row) for row in rows.all()]
