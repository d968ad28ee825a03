"""SQL about answers other than recording one (that is :mod:`newsletter.rsvp.answer_repo`):
the link's rows, the sessions a departure gives up, counts and lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import QueryableAttribute, Session, defer, lazyload

from newsletter.db import is_postgresql
from newsletter.rsvp.answer_repo import place_statement
from newsletter.rsvp.models import Answer, Rsvp
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
    :func:`newsletter.rsvp.answer_repo.place_statement`."""
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
    so many): confirmed first, then the waitlist in order, then the rest."""
    rows = db.execute(
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
        .order_by(*_attendee_order())
        .limit(limit)
    )
    return [AttendeeRow(*row) for row in rows]


def _csv_cell(text: _Sql, spaces: str, starts: str) -> ColumnElement[Any]:
    """PostgreSQL: one CSV cell as Python's ``csv`` module writes it after
    :func:`~newsletter.rsvp.export.spreadsheet_safe`: an apostrophe first when, past the
    leading ``spaces``, it starts with one of ``starts`` (or starts with a tab or a carriage
    return); quoted, quotes doubled, when it holds a comma, a quote or a line break. String
    functions, not regular expressions: half a million cells a list, a regex each costs
    a second."""
    risky = or_(
        func.left(func.ltrim(text, spaces), 1).in_(list(starts)),
        func.left(text, 1).in_(["\t", "\r"]),
    )
    safe = case((risky, literal("'") + text), else_=text)
    quote = or_(*(func.strpos(text, c) > 0 for c in (",", '"', "\r", "\n")))
    return case((quote, literal('"') + func.replace(safe, '"', '""') + literal('"')), else_=safe)


def _iso(at: _Sql) -> ColumnElement[Any]:
    """PostgreSQL: a timestamp as Python's ``datetime.isoformat()`` of it in UTC writes it
    (microseconds only when there are some)."""
    utc = func.timezone("UTC", at)
    micro = func.to_char(utc, "US")
    return (
        func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS')
        + case((micro == "000000", ""), else_=literal(".") + micro)
        + literal("+00:00")
    )


def attendee_csv_lines(db: Session, session_id: int, *, spaces: str, starts: str) -> list[str]:
    """PostgreSQL only: the CSV lines of :func:`attendees` (without line ends), each made by
    the database. A session's list can be tens of thousands of answers; building a row
    object and seven cells per answer in Python took seconds, the same text made by the
    query takes milliseconds. ``spaces`` and ``starts``: the spreadsheet-formula test's
    characters (:func:`newsletter.rsvp.export.spreadsheet_safe`)."""
    cells = [
        _csv_cell(func.coalesce(Subscriber.name, ""), spaces, starts),
        _csv_cell(Subscriber.email, spaces, starts),
        _csv_cell(Rsvp.answer, spaces, starts),
        _csv_cell(cast(Rsvp.guests, String), spaces, starts),
        _csv_cell(case((Rsvp.waitlisted.is_(True), "yes"), else_="no"), spaces, starts),
        _csv_cell(_iso(Rsvp.answered_at), spaces, starts),
        _csv_cell(_iso(Rsvp.updated_at), spaces, starts),
    ]
    line = cells[0]
    for cell in cells[1:]:
        line = line + literal(",") + cell
    return list(
        db.scalars(
            select(line)
            .select_from(Rsvp)
            .join(Subscriber, Subscriber.id == Rsvp.subscriber_id)
            .where(Rsvp.session_id == session_id)
            .order_by(*_attendee_order())
        )
    )
