"""The waitlist as SQL: who is given a freed seat, and where a waiting answer stands in line.

A freed seat goes to the first waiting active person whose party fits, in queue order
(:func:`pick_next`), unless the session is inside its promotion cutoff (then nobody moves up
on their own: :mod:`.promotion` tells the organizer); a session with ``confirm_within`` holds
the seat for the promoted person until ``confirm_by`` (:mod:`.promotion` passes it on after).
:mod:`.answer_repo` gives the first one inside the answer's own statement,
:func:`promote_statement` each further one (PostgreSQL), and the ``*_sqlite`` statements do
the same step by step under SQLite's write lock.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Select,
    Update,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)

from newsletter.rsvp.decision_repo import EVENTS, NOW, RSVPS, SESSION_ID, SESSIONS, is_active
from newsletter.rsvp.record_repo import EVENT_COLUMNS, promoted_event
from newsletter.rsvp.waitlist_time import add_seconds


def held(session_id: ColumnElement[int]) -> ColumnElement[bool]:
    """Whether the session is inside its promotion cutoff (``starts_at`` within
    ``promotion_cutoff_s`` of now): nobody is promoted on their own then."""
    s = SESSIONS.alias("held")
    return (
        select(s.c.id)
        .where(
            s.c.id == session_id,
            s.c.promotion_cutoff_s.is_not(None),
            s.c.starts_at <= add_seconds(NOW, s.c.promotion_cutoff_s),
        )
        .exists()
    )


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
        is_active(r.c.subscriber_id),
        # Correlated with the candidate, so it is read only when someone waits and fits: a
        # session nobody waits for (the burst's case) reads nothing more.
        ~held(r.c.session_id),
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


def promote(picked: ColumnElement[int]) -> Update:
    """The picked answer takes its seat; returns who it is and their guests. With the
    session's ``confirm_within`` the seat is held for them until ``confirm_by``."""
    within = (
        select(SESSIONS.c.confirm_within_s)
        .where(SESSIONS.c.id == RSVPS.c.session_id)
        .scalar_subquery()
    )
    return (
        update(RSVPS)
        .where(RSVPS.c.id == picked)
        .values(
            waitlisted=False, updated_at=NOW, promoted_at=NOW, confirm_by=add_seconds(NOW, within)
        )
        .returning(RSVPS.c.subscriber_id, RSVPS.c.guests)
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
    promoted = promote(select(pick.c.id).scalar_subquery()).cte("promoted")
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
        .from_select(EVENT_COLUMNS, promoted_event(promoted.c.subscriber_id).select_from(promoted))
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
    return promote(bindparam("picked", type_=Integer()))


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
        EVENT_COLUMNS, promoted_event(bindparam("p_subscriber_id", type_=Integer()))
    )


# --- the place in line, for a page that shows it --------------------------------------------


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
        is_active(r.c.subscriber_id),
    )
