"""All SQL about answers: the per-session lock, seat counts, the waitlist, the history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    ScalarResult,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session, defer, lazyload

from newsletter.db import is_postgresql
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber, SubscriberStatus

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
    session: Session, session_id: int, subscriber_id: int
) -> tuple[SalonSession, Subscriber] | None:
    """The session and the subscriber a link names, in one round trip; None if either is gone."""
    row = session.execute(
        _ADDRESSEE, {"session_id": session_id, "subscriber_id": subscriber_id}
    ).first()
    return (row[0], row[1]) if row else None


def lock_session(session: Session, session_id: int) -> None:
    """Serialise answers for one session until the transaction ends (sessions with seats).

    PostgreSQL: ``SELECT … FOR UPDATE`` on the session row. SQLite: a no-op UPDATE, which
    takes the database write lock before anything is read, so the reads that follow see the
    latest answers (a read-then-write transaction would instead fail with a stale snapshot).
    Either way two answers for the last seat cannot both see it free.
    """
    if is_postgresql(session):
        session.execute(
            select(SalonSession.id).where(SalonSession.id == session_id).with_for_update()
        )
        return
    session.execute(
        update(SalonSession)
        .where(SalonSession.id == session_id)
        .values(revision=SalonSession.revision)
        .execution_options(synchronize_session=False)
    )


def get(session: Session, session_id: int, subscriber_id: int) -> Rsvp | None:
    """A subscriber's current answer for a session."""
    return session.scalars(
        select(Rsvp).where(Rsvp.session_id == session_id, Rsvp.subscriber_id == subscriber_id)
    ).first()


def get_with_status(
    session: Session, session_id: int, subscriber_id: int
) -> tuple[Rsvp | None, str | None]:
    """A subscriber's current answer for a session and their status now (None: no such
    subscriber), in one round trip: read under the session's lock, the status cannot be one
    that a departure committed before this answer took its seat."""
    row = session.execute(
        select(Subscriber.status, Rsvp)
        .outerjoin(Rsvp, (Rsvp.subscriber_id == Subscriber.id) & (Rsvp.session_id == session_id))
        .where(Subscriber.id == subscriber_id)
        # The status column, not a cached Subscriber object: the row may have changed.
        .execution_options(populate_existing=True)
    ).first()
    return (None, None) if row is None else (row[1], row[0])


def lock_sessions_ahead(session: Session, now: datetime) -> None:
    """Lock every session still ahead (not started, not cancelled) until the transaction
    ends, in id order: someone leaving the list then waits for any answer of theirs being
    recorded, so it sees that answer and withdraws it too. SQLite: the write lock of the
    database, as in :func:`lock_session`."""
    ahead = (SalonSession.starts_at > now) & SalonSession.cancelled.is_(False)
    if is_postgresql(session):
        session.execute(
            select(SalonSession.id).where(ahead).order_by(SalonSession.id).with_for_update()
        )
        return
    session.execute(
        update(SalonSession)
        .where(ahead)
        .values(revision=SalonSession.revision)
        .execution_options(synchronize_session=False)
    )


def seats_taken(session: Session, session_id: int) -> int:
    """Seats held by confirmed "yes" answers, guests included."""
    taken = session.scalar(
        select(func.coalesce(func.sum(1 + Rsvp.guests), 0)).where(
            Rsvp.session_id == session_id,
            Rsvp.answer == Answer.yes,
            Rsvp.waitlisted.is_(False),
        )
    )
    return int(taken or 0)


def _active() -> ColumnElement[bool]:
    """Whether an answer's subscriber is still on the list: someone who unsubscribed,
    bounced or was suppressed neither moves up the waitlist nor counts ahead of others.
    (Leaving the list withdraws the answers; this also covers rows older than that rule.)

    Said as "no row of theirs that is not active" (``status`` is never NULL, and the foreign
    key guarantees the row): the only index that can serve ``id = … AND status <> …`` is the
    primary key, so the plan is one key lookup per answer whatever the statistics say. Said
    as ``status = 'active'``, a table not analysed yet after an import (a new list's first
    burst) was planned as a scan of every active subscriber through the status index for each
    waiting answer: 35 ms per position at 700 answers, and a seat burst fell from 190 to 44/s.
    """
    return ~(
        select(Subscriber.id)
        .where(Subscriber.id == Rsvp.subscriber_id, Subscriber.status != SubscriberStatus.active)
        .exists()
    )


def waitlist(session: Session, session_id: int) -> ScalarResult[Rsvp]:
    """Waiting "yes" answers of active subscribers, first come first served, fetched 50 at a
    time as iterated; close the result when done with it."""
    return session.scalars(
        select(Rsvp)
        .where(
            Rsvp.session_id == session_id,
            Rsvp.waitlisted.is_(True),
            _active(),
        )
        .order_by(Rsvp.answered_at, Rsvp.id)
        .execution_options(yield_per=50)
    )


def waitlist_position(session: Session, rsvp: Rsvp) -> int:
    """1 for the first in line (only active subscribers are in line)."""
    session.flush()  # a new answer needs its id to be placed among equal times
    ahead = session.scalar(
        select(func.count()).where(
            Rsvp.session_id == rsvp.session_id,
            Rsvp.waitlisted.is_(True),
            (Rsvp.answered_at < rsvp.answered_at)
            | ((Rsvp.answered_at == rsvp.answered_at) & (Rsvp.id < rsvp.id)),
            _active(),
        )
    )
    return int(ahead or 0) + 1


def answered_ahead(session: Session, subscriber_id: int, now: datetime) -> list[int]:
    """Sessions still ahead (not started, not cancelled) for which the subscriber's answer
    is something other than "no": what they give up when they leave the list.

    In session id order, so that two people leaving at once lock sessions in the same order.
    """
    return list(
        session.scalars(
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


def add_event(
    session: Session,
    rsvp: Rsvp,
    at: datetime,
    notice: NoticeKind | None = None,
    *,
    note: str | None = None,
) -> None:
    """Append the answer to the history the dashboard charts, with the mail it triggers, or
    with a ``note`` saying why the answer changed without the person giving it."""
    add_event_row(
        session,
        rsvp.session_id,
        rsvp.subscriber_id,
        rsvp.answer,
        rsvp.waitlisted,
        at,
        notice,
        note=note,
    )


def add_event_row(
    session: Session,
    session_id: int,
    subscriber_id: int,
    answer: str,
    waitlisted: bool,
    at: datetime,
    notice: NoticeKind | None,
    *,
    note: str | None = None,
) -> None:
    """Append one answer to the history, by ids; a notice is due at once. ``note`` goes
    where a notice's outcome would (a row with a note has no notice)."""
    session.add(
        RsvpEvent(
            session_id=session_id,
            subscriber_id=subscriber_id,
            answer=answer,
            waitlisted=waitlisted,
            at=at,
            notice=notice.value if notice else None,
            notice_due_at=at if notice else None,
            notice_error=note,
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


def counts(session: Session, session_id: int) -> Counts:
    """Counts for one session in one grouped query."""
    confirmed = (Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False)
    row = session.execute(
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


def attendees(session: Session, session_id: int) -> list[AttendeeRow]:
    """Every answer for a session: confirmed first, then the waitlist in order, then the rest."""
    order = case(
        ((Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False), 0),
        (Rsvp.waitlisted.is_(True), 1),
        (Rsvp.answer == Answer.maybe, 2),
        else_=3,
    )
    rows = session.execute(
        select(
            Subscriber.name,
            Subscriber.email,
            Rsvp.answer,
            Rsvp.guests,
            Rsvp.waitlisted,
            Rsvp.answered_at,
            Rsvp.updated_at,
        )
        .join(Subscriber, Subscriber.id == Rsvp.subscriber_id)
        .where(Rsvp.session_id == session_id)
        .order_by(order, Rsvp.answered_at, Rsvp.id)
    )
    return [AttendeeRow(*row) for row in rows]
