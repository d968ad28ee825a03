"""The answer rules, as SQL: what one answer does, decided once here for SQLite and PostgreSQL.

An answer is decided by one SELECT (:func:`decided`) from three rows read with the locks
that make the decision safe: the subscriber (``FOR SHARE``: a departure waits for the answer,
or the answer sees the departure), the session (``FOR NO KEY UPDATE`` when it has a seat
limit: answers for one session are decided one after another) and the person's own answer.
The session row carries the seat counters (``seats_taken``, ``waiting``, ``queue_next``), so
no other answer is read. What the decision says is written by :mod:`.record_repo` (the
answer, the counters, the history row) and :mod:`.waitlist_repo` (the first waiting person
who fits a freed seat); :mod:`.answer_repo` puts all of it in one statement for PostgreSQL.

The rules, each in one expression below: answers are open until the deadline (or the start)
unless cancelled, and a departure withdraws an answer until the start; only active
subscribers answer; guests within the record's ``plus_ones``; a "yes" takes 1 + guests seats
while they fit, else waits; a new "yes" (from no answer, "maybe" or "no") queues at the back
and answered_at restarts; the same answer again changes nothing; a freed seat goes to the
first waiting active person who fits, in queue order (:func:`.waitlist_repo.pick_next`).

The decision comes in three shapes made from this one definition (:class:`Shape`): for any
session, and for a session with (or without) a seat limit, which reads the session row only
``WHERE capacity IS NOT NULL`` (or ``IS NULL``) and leaves out the other read. A shape that
does not fit the session finds no session and decides nothing, so it can never decide an
answer that needed seats counted: the caller then decides again for any session.
"""

from __future__ import annotations

import enum
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    Text,
    Update,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    select,
    true,
    union_all,
    update,
)

from newsletter.db import UtcDateTime
from newsletter.rsvp.models import Answer, Rsvp, RsvpEvent
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber, SubscriberStatus

SESSIONS, RSVPS = cast(Table, SalonSession.__table__), cast(Table, Rsvp.__table__)
SUBSCRIBERS, EVENTS = cast(Table, Subscriber.__table__), cast(Table, RsvpEvent.__table__)

# The inputs of an answer. ``note`` is set only when the answer is given for the person (they
# left the list): it goes on the history row, and it lifts the deadline and the status rule.
SESSION_ID = bindparam("session_id", type_=Integer())
SUBSCRIBER_ID = bindparam("subscriber_id", type_=Integer())
ANSWER = bindparam("answer", type_=String())
GUESTS = bindparam("guests", type_=Integer())
NOW = bindparam("now", type_=UtcDateTime())
NOTE = bindparam("note", type_=Text())

YES = Answer.yes.value


class Shape(enum.Enum):
    """Which sessions a decision (and the statement built on it) can decide for."""

    ANY = "any"  # with or without a seat limit: seats, the waitlist and promotion included
    LIMITED = "limited"  # only with a seat limit; a session without one is not found
    NO_LIMIT = "no_limit"  # only without a seat limit (no seats, no promotion); nor with one


def parameters(
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    guests: int,
    now: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """The statement parameters of one answer."""
    return {
        "session_id": session_id,
        "subscriber_id": subscriber_id,
        "answer": answer.value,
        "guests": guests,
        "now": now,
        "note": note,
    }


def count(cte: CTE) -> ColumnElement[int]:
    """The number of rows of ``cte``, as a value (also used to order CTEs: ``count >= 0``)."""
    return select(func.count()).select_from(cte).scalar_subquery()


def is_active(subscriber_id: ColumnElement[int]) -> ColumnElement[bool]:
    """Whether an answer's subscriber is still on the list: someone who unsubscribed,
    bounced or was suppressed neither moves up the waitlist nor counts ahead of others.
    (Leaving the list withdraws the answers; this also covers rows older than that rule, or a
    status changed in the database by hand.)

    Said as "no row of theirs that is not active" (``status`` is never NULL, and the foreign
    key guarantees the row): the only index that can serve ``id = … AND status <> …`` is the
    primary key, so the plan is one key lookup per answer whatever the statistics say. Said
    as ``status = 'active'``, a table not analysed yet after an import was planned as a scan
    of every active subscriber through the status index for each waiting answer (35 ms per
    position at 700 answers; a seat burst fell from 190 to 44/s).
    """
    return ~(
        select(SUBSCRIBERS.c.id)
        .where(
            SUBSCRIBERS.c.id == subscriber_id,
            SUBSCRIBERS.c.status != SubscriberStatus.active.value,
        )
        .exists()
    )


_SALON_COLUMNS = (
    "id",
    "capacity",
    "plus_ones",
    "seats_taken",
    "waiting",
    "queue_next",
    "cancelled",
    "starts_at",
    "deadline",
    "revision",
    "updated_at",
)


def _salon(after: ColumnElement[bool], shape: Shape) -> CTE:
    """The session row, read once ``after`` is evaluated. A session with a seat limit is
    locked (answers for it are decided one at a time, each seeing the counters the previous
    one left); one without a limit is read as it is, so its answers never wait for each
    other. (PostgreSQL allows no lock under a UNION: hence two CTEs.)"""
    columns = [SESSIONS.c[name] for name in _SALON_COLUMNS]
    here = SESSIONS.c.id == SESSION_ID
    one = shape is not Shape.ANY  # the one read is the salon itself
    unlimited = (
        select(*columns)
        .where(here, SESSIONS.c.capacity.is_(None), after)
        .cte("salon" if one else "unlimited")
        .prefix_with("MATERIALIZED")
    )
    limited = (
        select(*columns)
        .where(here, SESSIONS.c.capacity.is_not(None), after)
        .with_for_update(key_share=True)
        .cte("salon" if one else "limited")
        .prefix_with("MATERIALIZED")
    )
    if shape is Shape.NO_LIMIT:
        return unlimited
    if shape is Shape.LIMITED:
        return limited
    return union_all(select(limited), select(unlimited)).cte("salon").prefix_with("MATERIALIZED")


@lru_cache(maxsize=3)
def decided(shape: Shape) -> CTE:
    """One row whatever exists: what the rules make of this answer."""
    who = (
        select(SUBSCRIBERS.c.id, SUBSCRIBERS.c.status)
        .where(SUBSCRIBERS.c.id == SUBSCRIBER_ID)
        .with_for_update(read=True)
        .cte("who")
        .prefix_with("MATERIALIZED")
    )
    # Locks in one order, subscriber → session → answer, as a departure takes them too
    # (its status change, then the sessions ahead): two answers, or an answer and a
    # departure, never wait for each other in a circle.
    salon = _salon(count(who) >= 0, shape)
    old = (
        select(
            RSVPS.c.id,
            RSVPS.c.answer,
            RSVPS.c.guests,
            RSVPS.c.waitlisted,
            RSVPS.c.answered_at,
            RSVPS.c.queue_no,
        )
        .where(
            RSVPS.c.session_id == SESSION_ID,
            RSVPS.c.subscriber_id == SUBSCRIBER_ID,
            count(salon) >= 0,
        )
        .with_for_update(key_share=True)
        .cte("old")
        .prefix_with("MATERIALIZED")
    )
    return _decide(_facts(salon, who, old))


def _facts(salon: CTE, who: CTE, old: CTE) -> CTE:
    """The three rows side by side (one row whatever exists), with what the rules derive
    from them directly. A CTE of its own, so that each fact is worked out once per answer:
    inlined into the decision, ``fits`` alone appeared eleven times, and PostgreSQL sets up
    every copy of an expression again on each execution of the statement."""
    one = select(literal(1).label("one")).subquery("one")
    s, w, o = salon.c, who.c, old.c
    withdrawal = NOTE.is_not(None)
    was_yes = func.coalesce(o.answer == YES, False)
    was_waiting = func.coalesce(o.waitlisted, False)
    need = case((ANSWER == YES, 1 + GUESTS), else_=0)
    held = case((was_yes & ~was_waiting, 1 + o.guests), else_=0)
    limited = s.capacity.is_not(None)
    opened = ~s.cancelled & case(
        # Withdrawing (the person left the list) works until the start, whatever the deadline.
        (withdrawal, s.starts_at > NOW),
        else_=func.coalesce(s.deadline, s.starts_at) > NOW,
    )
    active = (w.status == SubscriberStatus.active.value) | withdrawal
    guests_ok = (GUESTS >= 0) & (s.plus_ones >= GUESTS)
    exists_now = exists(select(SESSIONS.c.id).where(SESSIONS.c.id == SESSION_ID))
    return (
        select(
            s.id.is_not(None).label("session_found"),
            # Read only when the session was not found (OR stops at the first true).
            (s.id.is_not(None) | exists_now).label("session_exists"),
            w.status,
            func.coalesce(opened, False).label("open"),
            func.coalesce(guests_ok, False).label("guests_ok"),
            (s.id.is_not(None) & w.id.is_not(None) & opened & active & guests_ok).label("allowed"),
            *(s[name] for name in _SALON_COLUMNS if name not in ("id", "cancelled", "deadline")),
            o.id.label("old_id"),
            o.answer.label("old_answer"),
            o.guests.label("old_guests"),
            o.waitlisted.label("old_waitlisted"),
            o.queue_no.label("old_queue_no"),
            o.answered_at.label("old_answered_at"),
            was_yes.label("was_yes"),
            was_waiting.label("was_waiting"),
            need.label("need"),
            held.label("held"),
            (~limited | (s.seats_taken - held + need <= s.capacity)).label("fits"),
        )
        .select_from(one.outerjoin(salon, true()).outerjoin(who, true()).outerjoin(old, true()))
        .cte("facts")
        .prefix_with("MATERIALIZED")
    )


def _decide(facts: CTE) -> CTE:
    """What the rules make of this answer, from the facts."""
    f = facts.c
    is_yes = ANSWER == YES
    had = f.old_id.is_not(None)
    waitlisted = is_yes & ~f.fits
    confirmed = is_yes & f.fits
    seats_after = f.seats_taken - f.held + case((confirmed, f.need), else_=0)
    requeue = is_yes & ~f.was_yes  # a new "yes" queues behind those who said yes before
    # The same answer again changes nothing (a double click, a scanner), unless it waits for
    # a seat that now fits (the room grew, or lost its limit).
    unchanged = (
        had & (f.old_answer == ANSWER) & (f.old_guests == GUESTS) & ~(f.was_waiting & f.fits)
    )
    waiting_after = f.waiting + case((waitlisted, 1), else_=0) - case((f.was_waiting, 1), else_=0)
    return (
        select(
            f.session_found,
            f.session_exists,
            f.status,
            f.open,
            f.guests_ok,
            f.plus_ones,
            f.capacity,
            f.revision,
            f.updated_at,
            func.coalesce(f.allowed & ~unchanged, False).label("writes"),
            func.coalesce(unchanged, False).label("unchanged"),
            func.coalesce(f.old_waitlisted, False).label("old_waitlisted"),
            f.old_queue_no,
            f.old_id,
            func.coalesce(waitlisted, False).label("waitlisted"),
            func.coalesce(confirmed, False).label("confirmed"),
            case((requeue | ~had, NOW), else_=f.old_answered_at).label("answered_at"),
            case((requeue, f.queue_next), else_=func.coalesce(f.old_queue_no, 0)).label("queue_no"),
            (f.queue_next + case((requeue, 1), else_=0)).label("queue_next_after"),
            seats_after.label("seats_after"),
            waiting_after.label("waiting_after"),
            (f.capacity - seats_after).label("free_after"),
            # A new "yes" that waits is last in line: its place is the count of those waiting.
            case((waitlisted & requeue, waiting_after), else_=null()).label("place"),
        )
        .cte("decided")
        .prefix_with("MATERIALIZED")
    )


@lru_cache(maxsize=1)
def decision() -> Select[Any]:
    """The decision alone, for any session (SQLite: run after :func:`lock_sqlite`; then
    the writes of :mod:`.record_repo`)."""
    return select(decided(Shape.ANY))


@lru_cache(maxsize=1)
def lock_sqlite() -> Update:
    """SQLite: take the database's write lock before anything is read (a no-op UPDATE), so
    the decision reads the latest answers; a read-then-write transaction would instead fail
    with a stale snapshot."""
    return update(SESSIONS).where(SESSIONS.c.id == SESSION_ID).values(revision=SESSIONS.c.revision)
