"""Answers to sessions without a seat limit: one statement, no lock.

Nobody waits for a seat, so an answer needs no lock: one upsert (``ON CONFLICT … DO
UPDATE … WHERE`` something differs) decides atomically, even when the same person's two
clicks race. This is the path the burst of confirmations right after a send takes, so on
PostgreSQL the whole answer is a single statement (data-modifying CTEs): it checks that the
session is still open and without a limit and that the subscriber is active, upserts the answer,
appends the history row with its confirmation mail, and returns the session's version.
Committed on its own, it costs one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import cast

from sqlalchemy import Table, bindparam, case, func, insert, literal, null, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.selectable import Select

from newsletter.db import (
    AloneStatement,
    UtcDateTime,
    fetch_row_alone,
    is_postgresql,
    is_postgresql_url,
)
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
from newsletter.rsvp.repo import add_event_row
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber, SubscriberStatus


@dataclass(frozen=True, slots=True)
class OpenAnswer:
    """An answer recorded by the one-statement path, and the version of the session then."""

    changed: bool  # False when the same answer was recorded again
    revision: int
    updated_at: datetime


# Core tables, not the ORM classes: with a parameter dict the ORM would take these for
# "bulk" inserts, which support neither ON CONFLICT nor RETURNING from a CTE.
_RSVPS, _EVENTS = cast(Table, Rsvp.__table__), cast(Table, RsvpEvent.__table__)
_NOW = bindparam("now", type_=UtcDateTime())
# The columns of a new answer after session_id and subscriber_id.
_NEW_ANSWER = {
    "answer": bindparam("answer"),
    "guests": bindparam("guests"),
    "waitlisted": literal(False),
    "answered_at": _NOW,
    "updated_at": _NOW,
}

# Statements are built once, as building one costs more CPU than running it. Parameters of
# both: session_id, subscriber_id, answer, guests, now.


def _upsert(new: postgresql.Insert | sqlite.Insert) -> ReturningInsert[tuple[int, int, str]]:
    """``new`` answer, or the change of an existing one; a row comes back only if something
    changed (a double click or a scanner's second request changes nothing)."""
    return new.on_conflict_do_update(
        index_elements=[_RSVPS.c.session_id, _RSVPS.c.subscriber_id],
        set_={
            "answer": new.excluded.answer,
            "guests": new.excluded.guests,
            "waitlisted": False,
            "updated_at": new.excluded.updated_at,
            # A new "yes" queues behind earlier ones, should a seat limit come later.
            "answered_at": case(
                (
                    (new.excluded.answer == Answer.yes.value)
                    & (_RSVPS.c.answer != Answer.yes.value),
                    new.excluded.answered_at,
                ),
                else_=_RSVPS.c.answered_at,
            ),
        },
        where=(_RSVPS.c.answer != new.excluded.answer)
        | (_RSVPS.c.guests != new.excluded.guests)
        | _RSVPS.c.waitlisted.is_(True),
    ).returning(_RSVPS.c.session_id, _RSVPS.c.subscriber_id, _RSVPS.c.answer)


@lru_cache(maxsize=1)
def _sqlite_statement() -> ReturningInsert[tuple[int, int, str]]:
    """The bare upsert: the caller has checked the session and appends the history row."""
    new = sqlite.insert(_RSVPS).values(
        session_id=bindparam("session_id"), subscriber_id=bindparam("subscriber_id"), **_NEW_ANSWER
    )
    return _upsert(new)


@lru_cache(maxsize=1)
def _postgresql_statement() -> Select[tuple[int, int, datetime]]:
    """The whole answer: one row (changed, revision, updated_at) if the session is open
    without a limit and the subscriber is active, else no row and nothing written."""
    sessions, subscribers = cast(Table, SalonSession.__table__), cast(Table, Subscriber.__table__)
    salon = (
        select(sessions.c.id, sessions.c.revision, sessions.c.updated_at)
        .where(
            sessions.c.id == bindparam("session_id"),
            sessions.c.capacity.is_(None),
            sessions.c.cancelled.is_(False),
            func.coalesce(sessions.c.deadline, sessions.c.starts_at) > _NOW,
        )
        .cte("salon")
    )
    who = (
        select(subscribers.c.id)
        .where(
            subscribers.c.id == bindparam("subscriber_id"),
            # Someone who left the list answers nothing (the full path says so).
            subscribers.c.status == SubscriberStatus.active.value,
        )
        .cte("who")
    )
    both = salon.join(who, true())
    answered = select(salon.c.id, who.c.id, *_NEW_ANSWER.values()).select_from(both)
    changed = _upsert(
        postgresql.insert(_RSVPS).from_select(
            ["session_id", "subscriber_id", *_NEW_ANSWER], answered
        )
    ).cte("changed")
    # A "yes" here always has a seat, so it carries its confirmation mail.
    confirmed = changed.c.answer == Answer.yes.value
    history = (
        insert(_EVENTS)
        .from_select(
            [
                "session_id",
                "subscriber_id",
                "answer",
                "waitlisted",
                "at",
                "notice",
                "notice_due_at",
            ],
            select(
                changed.c.session_id,
                changed.c.subscriber_id,
                changed.c.answer,
                literal(False),
                _NOW,
                case((confirmed, NoticeKind.confirmed.value), else_=null()),
                case((confirmed, _NOW), else_=null()),
            ),
        )
        .cte("history")
    )
    return (
        select(
            select(func.count()).select_from(changed).scalar_subquery().label("changed"),
            salon.c.revision,
            salon.c.updated_at,
        )
        .select_from(both)
        # Not read by the query, but PostgreSQL runs every data-modifying CTE to completion.
        .add_cte(history)
    )


def _parameters(
    session_id: int, subscriber_id: int, answer: Answer, guests: int, now: datetime
) -> dict[str, object]:
    return {
        "session_id": session_id,
        "subscriber_id": subscriber_id,
        "answer": answer.value,
        "guests": guests,
        "now": now,
    }


def save_unlimited_answer(
    session: Session,
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    guests: int,
    now: datetime,
) -> bool | None:
    """Insert or change an answer for a session without a seat limit, which the caller
    found open: True if it changed, False if it was recorded already, None if the session
    closed (or got a limit) in the meantime and nothing was recorded."""
    values = _parameters(session_id, subscriber_id, answer, guests, now)
    if is_postgresql(session):
        outcome = session.execute(_postgresql_statement(), values).first()
        return None if outcome is None else bool(outcome.changed)
    row = session.execute(_sqlite_statement(), values).first()
    if row is not None:  # SQLite: the history row, in the caller's transaction
        notice = NoticeKind.confirmed if answer == Answer.yes else None
        add_event_row(session, session_id, subscriber_id, answer, False, now, notice)
    return row is not None


async def answer_open_session(
    url: str, session_id: int, subscriber_id: int, answer: Answer, guests: int, now: datetime
) -> OpenAnswer | None:
    """Record an answer in one statement, committed, if that decides it: on PostgreSQL, for
    a session that is open and has no seat limit, an active subscriber, and no guests
    (whether a record allows them is in its parsed form). Otherwise record nothing and
    return None: the caller takes the full path, which also says what is wrong."""
    if guests or not is_postgresql_url(url):
        return None
    parameters = _parameters(session_id, subscriber_id, answer, 0, now)
    row = await fetch_row_alone(url, _alone_statement(), parameters)
    if row is None:
        return None
    return OpenAnswer(bool(row["changed"]), row["revision"], row["updated_at"])


@lru_cache(maxsize=1)
def _alone_statement() -> AloneStatement:
    return AloneStatement(_postgresql_statement())
