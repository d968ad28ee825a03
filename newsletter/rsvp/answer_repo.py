"""The answer rules, as SQL: defined once here, run on SQLite and PostgreSQL alike.

An answer is decided by one SELECT (:func:`decision`) from three rows read with the locks
that make the decision safe: the subscriber (``FOR SHARE``: a departure waits for the answer,
or the answer sees the departure), the session (``FOR NO KEY UPDATE`` when it has a seat
limit: answers for one session are decided one after another) and the person's own answer.
The session row carries the seat counters (``seats_taken``, ``waiting``, ``queue_next``), so
no other answer is read. What the decision says is then written: the answer, the counters,
the history row with the mail it triggers, and the first waiting person who fits a freed seat.

* PostgreSQL: everything above is **one statement** (:func:`answer_statement`, data-modifying
  CTEs over the decision), committed on its own by the web app: one round trip, and the
  session row stays locked only while that statement runs.
* SQLite (one writer at a time): the same decision SELECT, then the same writes one by one
  with the decided values as parameters (:func:`write_answer` and the others), in the
  caller's transaction, which has taken the database's write lock first.

The rules, each in one expression below: answers are open until the deadline (or the start)
unless cancelled, and a departure withdraws an answer until the start; only active
subscribers answer; guests within the record's ``plus_ones``; a "yes" takes 1 + guests seats
while they fit, else waits; a new "yes" (from no answer, "maybe" or "no") queues at the back
and answered_at restarts; the same answer again changes nothing; a freed seat goes to the
first waiting active person who fits, in queue order (:func:`pick_next`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    CTE,
    Boolean,
    ColumnElement,
    Insert,
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
    insert,
    literal,
    null,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from newsletter.db import UtcDateTime
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
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


def _count(cte: CTE) -> ColumnElement[int]:
    return select(func.count()).select_from(cte).scalar_subquery()


def _is_active(subscriber_id: ColumnElement[int]) -> ColumnElement[bool]:
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


def _salon(after: ColumnElement[bool]) -> CTE:
    """The session row, read once ``after`` is evaluated. A session with a seat limit is
    locked (answers for it are decided one at a time, each seeing the counters the previous
    one left); one without a limit is read as it is, so its answers never wait for each
    other. (PostgreSQL allows no lock under a UNION: hence two CTEs.)"""
    columns = [
        SESSIONS.c.id,
        SESSIONS.c.capacity,
        SESSIONS.c.plus_ones,
        SESSIONS.c.seats_taken,
        SESSIONS.c.waiting,
        SESSIONS.c.queue_next,
        SESSIONS.c.cancelled,
        SESSIONS.c.starts_at,
        SESSIONS.c.deadline,
        SESSIONS.c.revision,
        SESSIONS.c.updated_at,
    ]
    here = SESSIONS.c.id == SESSION_ID
    limited = (
        select(*columns)
        .where(here, SESSIONS.c.capacity.is_not(None), after)
        .with_for_update(key_share=True)
        .cte("limited")
        .prefix_with("MATERIALIZED")
    )
    unlimited = (
        select(*columns)
        .where(here, SESSIONS.c.capacity.is_(None), after)
        .cte("unlimited")
        .prefix_with("MATERIALIZED")
    )
    return union_all(select(limited), select(unlimited)).cte("salon").prefix_with("MATERIALIZED")


@lru_cache(maxsize=1)
def _decided() -> CTE:
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
    salon = _salon(_count(who) >= 0)
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
            _count(salon) >= 0,
        )
        .with_for_update(key_share=True)
        .cte("old")
        .prefix_with("MATERIALIZED")
    )
    one = select(literal(1).label("one")).subquery("one")
    s, w, o = salon.c, who.c, old.c

    withdrawal = NOTE.is_not(None)
    is_yes = ANSWER == YES
    had = o.id.is_not(None)
    was_yes = func.coalesce(o.answer == YES, False)
    was_waiting = func.coalesce(o.waitlisted, False)
    held = case((was_yes & ~was_waiting, 1 + o.guests), else_=0)
    need = case((is_yes, 1 + GUESTS), else_=0)
    limited = s.capacity.is_not(None)
    fits = ~limited | (s.seats_taken - held + need <= s.capacity)
    waitlisted = is_yes & ~fits
    confirmed = is_yes & fits
    seats_after = s.seats_taken - held + case((confirmed, need), else_=0)
    requeue = is_yes & ~was_yes  # a new "yes" queues behind those who said yes before
    opened = ~s.cancelled & case(
        # Withdrawing (the person left the list) works until the start, whatever the deadline.
        (withdrawal, s.starts_at > NOW),
        else_=func.coalesce(s.deadline, s.starts_at) > NOW,
    )
    active = (w.status == SubscriberStatus.active.value) | withdrawal
    guests_ok = (GUESTS >= 0) & (s.plus_ones >= GUESTS)
    # The same answer again changes nothing (a double click, a scanner), unless it waits for
    # a seat that now fits (the room grew, or lost its limit).
    unchanged = had & (o.answer == ANSWER) & (o.guests == GUESTS) & ~(was_waiting & fits)
    allowed = s.id.is_not(None) & w.id.is_not(None) & opened & active & guests_ok
    waiting_after = s.waiting + case((waitlisted, 1), else_=0) - case((was_waiting, 1), else_=0)
    exists_now = exists(select(SESSIONS.c.id).where(SESSIONS.c.id == SESSION_ID))
    return (
        select(
            s.id.is_not(None).label("session_found"),
            exists_now.label("session_exists"),
            w.status.label("status"),
            func.coalesce(opened, False).label("open"),
            func.coalesce(guests_ok, False).label("guests_ok"),
            s.plus_ones,
            s.capacity,
            s.revision,
            s.updated_at,
            func.coalesce(allowed & ~unchanged, False).label("writes"),
            func.coalesce(unchanged, False).label("unchanged"),
            func.coalesce(o.waitlisted, False).label("old_waitlisted"),
            o.queue_no.label("old_queue_no"),
            o.id.label("old_id"),
            func.coalesce(waitlisted, False).label("waitlisted"),
            func.coalesce(confirmed, False).label("confirmed"),
            case((requeue | ~had, NOW), else_=o.answered_at).label("answered_at"),
            case((requeue, s.queue_next), else_=func.coalesce(o.queue_no, 0)).label("queue_no"),
            (s.queue_next + case((requeue, 1), else_=0)).label("queue_next_after"),
            seats_after.label("seats_after"),
            waiting_after.label("waiting_after"),
            (s.capacity - seats_after).label("free_after"),
            # A new "yes" that waits is last in line: its place is the count of those waiting.
            case((waitlisted & requeue, waiting_after), else_=null()).label("place"),
        )
        .select_from(one.outerjoin(salon, true()).outerjoin(who, true()).outerjoin(old, true()))
        .cte("decided")
        .prefix_with("MATERIALIZED")
    )


@lru_cache(maxsize=1)
def decision() -> Select[Any]:
    """The decision alone (SQLite: run after taking the write lock; then the writes)."""
    decided = _decided()
    return select(decided)


# --- the writes, each built over "values": the decided row's columns (PostgreSQL: scalar
# subqueries of the CTE) or bound parameters carrying them (SQLite) ----------------------


Values = dict[str, ColumnElement[Any]]

_WRITTEN = ("writes", "waitlisted", "confirmed", "answered_at", "queue_no", "old_id")
_COUNTED = ("seats_after", "waiting_after", "queue_next_after")


def bound_values(names: tuple[str, ...]) -> Values:
    """Bound parameters ``d_<name>`` standing for the decided row's columns."""
    types: dict[str, Any] = {
        "writes": Boolean(),
        "waitlisted": Boolean(),
        "confirmed": Boolean(),
        "answered_at": UtcDateTime(),
    }
    return {name: bindparam(f"d_{name}", type_=types.get(name, Integer())) for name in names}


def _upsert(new: postgresql.Insert | sqlite.Insert, values: Values) -> Insert:
    """The answer as decided. On a conflict the row is changed only if it is the one the
    decision read: a first answer racing the same person's other first answer (a row the
    decision could not see yet) writes nothing, and the caller decides again."""
    return new.on_conflict_do_update(
        index_elements=[RSVPS.c.session_id, RSVPS.c.subscriber_id],
        set_={
            "answer": new.excluded.answer,
            "guests": new.excluded.guests,
            "waitlisted": new.excluded.waitlisted,
            "answered_at": new.excluded.answered_at,
            "updated_at": new.excluded.updated_at,
            "queue_no": new.excluded.queue_no,
        },
        where=RSVPS.c.id == values["old_id"],
    )


def _answer_source(values: Values) -> Select[Any]:
    source = select(
        SESSION_ID,
        SUBSCRIBER_ID,
        ANSWER,
        GUESTS,
        values["waitlisted"],
        values["answered_at"],
        NOW,
        values["queue_no"],
    ).where(values["writes"])
    return cast(Select[Any], source)


_ANSWER_COLUMNS = [
    "session_id",
    "subscriber_id",
    "answer",
    "guests",
    "waitlisted",
    "answered_at",
    "updated_at",
    "queue_no",
]


@lru_cache(maxsize=1)
def write_answer_sqlite() -> Insert:
    """SQLite: the decided answer (parameters: the inputs and ``d_*`` of :data:`_WRITTEN`)."""
    values = bound_values(_WRITTEN)
    new = sqlite.insert(RSVPS).from_select(_ANSWER_COLUMNS, _answer_source(values))
    return _upsert(new, values).returning(RSVPS.c.id)


def _counters(
    values: Values, promoted_seats: ColumnElement[int], promoted: ColumnElement[int]
) -> Update:
    """The session's counters after the answer (and a promotion); only for a seat limit."""
    return (
        update(SESSIONS)
        .where(SESSIONS.c.id == SESSION_ID, SESSIONS.c.capacity.is_not(None))
        .values(
            seats_taken=values["seats_after"] + promoted_seats,
            waiting=values["waiting_after"] - promoted,
            queue_next=values["queue_next_after"],
        )
    )


@lru_cache(maxsize=1)
def write_counters_sqlite() -> Update:
    """SQLite: the counters as decided (parameters: ``session_id`` and ``d_*``)."""
    return _counters(bound_values(_COUNTED), literal(0), literal(0))


def _event(
    subscriber_id: ColumnElement[int],
    answer: ColumnElement[str],
    waitlisted: ColumnElement[bool],
    notice: ColumnElement[Any],
    note: ColumnElement[Any],
) -> Select[Any]:
    """One history row: the answer, and the mail it triggers (due now) or why the answer
    changed without the person giving it (``note``; such a row has no mail)."""
    return select(
        SESSION_ID,
        subscriber_id,
        answer,
        waitlisted,
        NOW,
        notice,
        case((notice.is_not(None), NOW), else_=null()),
        note,
    )


_EVENT_COLUMNS = [
    "session_id",
    "subscriber_id",
    "answer",
    "waitlisted",
    "at",
    "notice",
    "notice_due_at",
    "notice_error",
]


def _answer_event(values: Values) -> Select[Any]:
    notice = case((values["confirmed"] & NOTE.is_(None), NoticeKind.confirmed.value), else_=null())
    return _event(SUBSCRIBER_ID, ANSWER, values["waitlisted"], notice, NOTE)


@lru_cache(maxsize=1)
def write_event_sqlite() -> Insert:
    """SQLite: the history row of the decided answer."""
    return insert(EVENTS).from_select(
        _EVENT_COLUMNS, _answer_event(bound_values(("waitlisted", "confirmed")))
    )


# --- promotion ------------------------------------------------------------------------------


def pick_next(free: ColumnElement[int], passing: ColumnElement[int] | None = None) -> Select[Any]:
    """The first waiting active person, in queue order, whose party fits ``free`` seats
    (someone too big for them waits on; someone not on the list is passed over), locked;
    ``passing`` (the person answering) is not a candidate. Nothing is read when no seat is
    free, whatever the waitlist's length."""
    r = RSVPS.alias("candidate")
    conditions = [
        free > 0,
        r.c.session_id == SESSION_ID,
        r.c.waitlisted.is_(True),
        1 + r.c.guests <= free,
        _is_active(r.c.subscriber_id),
    ]
    if passing is not None:
        conditions.append(r.c.subscriber_id != passing)
    return (
        select(r.c.id, r.c.subscriber_id, r.c.guests)
        .where(*conditions)
        .order_by(r.c.queue_no, r.c.id)
        .limit(1)
        .with_for_update(of=r, key_share=True)
    )


def _promote(picked: ColumnElement[int]) -> Update:
    return (
        update(RSVPS)
        .where(RSVPS.c.id == picked)
        .values(waitlisted=False, updated_at=NOW)
        .returning(RSVPS.c.subscriber_id, RSVPS.c.guests)
    )


def _promoted_event(subscriber_id: ColumnElement[int]) -> Select[Any]:
    return _event(
        subscriber_id, literal(YES), literal(False), literal(NoticeKind.promoted.value), null()
    )


@lru_cache(maxsize=1)
def answer_statement() -> Select[Any]:
    """PostgreSQL: the whole answer in one statement; one row, the decision's columns with
    ``wrote`` (0: nothing written, 1: the answer) and ``promoted`` (the subscriber given the
    freed seat, if any) and ``free_left``."""
    decided = _decided()
    values: Values = {
        name: select(decided.c[name]).scalar_subquery() for name in _WRITTEN + _COUNTED
    }
    values["free_after"] = select(decided.c.free_after).scalar_subquery()
    written = (
        _upsert(
            postgresql.insert(RSVPS).from_select(_ANSWER_COLUMNS, _answer_source(values)),
            values,
        )
        .returning(RSVPS.c.id)
        .cte("written")
    )
    wrote = exists(select(written.c.id))
    pick = (
        pick_next(case((wrote, values["free_after"]), else_=0), passing=SUBSCRIBER_ID)
        .cte("pick")
        .prefix_with("MATERIALIZED")
    )
    promoted = _promote(select(pick.c.id).scalar_subquery()).cte("promoted")
    promoted_seats = func.coalesce(select(1 + promoted.c.guests).scalar_subquery(), 0)
    counted = (
        _counters(values, promoted_seats, _count(promoted))
        .where(wrote)
        .returning(SESSIONS.c.capacity - SESSIONS.c.seats_taken)
        .cte("counted")
    )
    history = (
        insert(EVENTS)
        .from_select(
            _EVENT_COLUMNS,
            union_all(
                _answer_event(values).where(wrote),
                _promoted_event(promoted.c.subscriber_id).select_from(promoted),
            ),
        )
        .cte("history")
    )
    return (
        select(
            decided,
            _count(written).label("wrote"),
            select(promoted.c.subscriber_id).scalar_subquery().label("promoted"),
            select(counted.c[0]).scalar_subquery().label("free_left"),
        )
        # Not read, but PostgreSQL runs every data-modifying CTE to completion.
        .add_cte(history)
    )


@lru_cache(maxsize=1)
def promote_statement() -> Select[Any]:
    """PostgreSQL: give the next freed seat (parameters: session_id, now); one row
    (``promoted``, ``free_left``), both NULL when nobody fits or no seat is free."""
    salon = (
        select(SESSIONS.c.capacity - SESSIONS.c.seats_taken)
        .where(SESSIONS.c.id == SESSION_ID, SESSIONS.c.capacity.is_not(None))
        .with_for_update(key_share=True)
        .cte("salon")
        .prefix_with("MATERIALIZED")
    )
    free = func.coalesce(select(salon.c[0]).scalar_subquery(), 0)
    pick = pick_next(free).cte("pick").prefix_with("MATERIALIZED")
    promoted = _promote(select(pick.c.id).scalar_subquery()).cte("promoted")
    counted = (
        update(SESSIONS)
        .where(SESSIONS.c.id == SESSION_ID, exists(select(promoted.c.subscriber_id)))
        .values(
            seats_taken=SESSIONS.c.seats_taken + select(1 + promoted.c.guests).scalar_subquery(),
            waiting=SESSIONS.c.waiting - 1,
        )
        .returning(SESSIONS.c.capacity - SESSIONS.c.seats_taken)
        .cte("counted")
    )
    history = (
        insert(EVENTS)
        .from_select(
            _EVENT_COLUMNS, _promoted_event(promoted.c.subscriber_id).select_from(promoted)
        )
        .cte("history")
    )
    return select(
        select(promoted.c.subscriber_id).scalar_subquery().label("promoted"),
        select(counted.c[0]).scalar_subquery().label("free_left"),
    ).add_cte(history)


# SQLite's promotion, step by step (after the write lock): the free seats, the pick, then
# these three with ``picked`` / ``p_guests`` / ``p_subscriber_id`` bound.


@lru_cache(maxsize=1)
def free_seats_sqlite() -> Select[Any]:
    """SQLite: seats free in the session (NULL without a limit)."""
    return select(SESSIONS.c.capacity - SESSIONS.c.seats_taken).where(SESSIONS.c.id == SESSION_ID)


@lru_cache(maxsize=1)
def pick_next_sqlite() -> Select[Any]:
    """SQLite: :func:`pick_next` for ``free`` seats (a parameter)."""
    return pick_next(bindparam("free", type_=Integer()))


@lru_cache(maxsize=1)
def promote_sqlite() -> Update:
    """SQLite: the picked person moves up (parameters: picked, now)."""
    return _promote(bindparam("picked", type_=Integer()))


@lru_cache(maxsize=1)
def promoted_counters_sqlite() -> Update:
    """SQLite: seats and the waiting count after a promotion (parameter: p_guests)."""
    return (
        update(SESSIONS)
        .where(SESSIONS.c.id == SESSION_ID)
        .values(
            seats_taken=SESSIONS.c.seats_taken + 1 + bindparam("p_guests", type_=Integer()),
            waiting=SESSIONS.c.waiting - 1,
        )
    )


@lru_cache(maxsize=1)
def promoted_event_sqlite() -> Insert:
    """SQLite: the promoted person's history row with their mail (parameter: p_subscriber_id)."""
    return insert(EVENTS).from_select(
        _EVENT_COLUMNS, _promoted_event(bindparam("p_subscriber_id", type_=Integer()))
    )


@lru_cache(maxsize=1)
def lock_sqlite() -> Update:
    """SQLite: take the database's write lock before anything is read (a no-op UPDATE), so
    the decision reads the latest answers; a read-then-write transaction would instead fail
    with a stale snapshot."""
    return update(SESSIONS).where(SESSIONS.c.id == SESSION_ID).values(revision=SESSIONS.c.revision)


# --- the place in line, for a page that shows it --------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """Where an answer stands in its session's queue."""

    queue_no: int
    rsvp_id: int


@lru_cache(maxsize=1)
def place_statement() -> Select[Any]:
    """1 + active people waiting ahead of (``queue_no``, ``rsvp_id``): one key lookup per
    answer ahead, run without any lock, only for a waiting answer that kept its place (a
    double click, a change of guests); a new one is last in line and counted by the
    session's ``waiting``."""
    r = RSVPS
    queue_no = bindparam("queue_no", type_=Integer())
    rsvp_id = bindparam("rsvp_id", type_=Integer())
    ahead = (r.c.queue_no < queue_no) | ((r.c.queue_no == queue_no) & (r.c.id < rsvp_id))
    return select((1 + func.count()).label("place")).where(
        r.c.session_id == SESSION_ID,
        r.c.waitlisted.is_(True),
        ahead,
        _is_active(r.c.subscriber_id),
    )
