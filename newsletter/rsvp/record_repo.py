"""Writing what :mod:`.decision_repo` decided: the answer, the seat counters, the history row.

Each write is built over "values": the decided row's columns, read from the decision's CTE
(PostgreSQL's one statement, :mod:`.answer_repo`: the writes select ``FROM decided``) or
bound parameters ``d_<name>`` carrying them (SQLite, which runs the decision, then these one
by one).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Insert,
    Integer,
    Select,
    Update,
    bindparam,
    case,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from newsletter.db import UtcDateTime
from newsletter.rsvp.decision_repo import (
    ANSWER,
    EVENTS,
    GUESTS,
    NOTE,
    NOW,
    RSVPS,
    SESSION_ID,
    SESSIONS,
    SUBSCRIBER_ID,
    YES,
)
from newsletter.rsvp.models import NoticeKind

Values = dict[str, ColumnElement[Any]]

# The decided columns the answer's writes read, and those the counters read.
WRITTEN = ("writes", "waitlisted", "confirmed", "answered_at", "queue_no", "old_id")
COUNTED = ("seats_after", "waiting_after", "queue_next_after")


def bound_values(names: tuple[str, ...]) -> Values:
    """Bound parameters ``d_<name>`` standing for the decided row's columns."""
    types: dict[str, Any] = {
        "writes": Boolean(),
        "waitlisted": Boolean(),
        "confirmed": Boolean(),
        "answered_at": UtcDateTime(),
    }
    return {name: bindparam(f"d_{name}", type_=types.get(name, Integer())) for name in names}


def upsert(new: postgresql.Insert | sqlite.Insert, old_id: ColumnElement[Any]) -> Insert:
    """The answer as decided. On a conflict the row is changed only if it is the one the
    decision read (``old_id``): a first answer racing the same person's other first answer
    (a row the decision could not see yet) writes nothing, and the caller decides again."""
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
        where=RSVPS.c.id == old_id,
    )


def answer_source(values: Values) -> Select[Any]:
    """The answer's row, when the decision says it is written."""
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


ANSWER_COLUMNS = [
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
    """SQLite: the decided answer (parameters: the inputs and ``d_*`` of :data:`WRITTEN`)."""
    values = bound_values(WRITTEN)
    new = sqlite.insert(RSVPS).from_select(ANSWER_COLUMNS, answer_source(values))
    return upsert(new, values["old_id"]).returning(RSVPS.c.id)


def counters(
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
    return counters(bound_values(COUNTED), literal(0), literal(0))


def event(
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


EVENT_COLUMNS = [
    "session_id",
    "subscriber_id",
    "answer",
    "waitlisted",
    "at",
    "notice",
    "notice_due_at",
    "notice_error",
]


def answer_event(values: Values) -> Select[Any]:
    """The history row of the decided answer: a confirmed seat carries its mail, and so
    does a "yes" that waits (their place on the waitlist)."""
    notice = case(
        (NOTE.is_not(None), null()),
        (values["confirmed"], NoticeKind.confirmed.value),
        (values["waitlisted"], NoticeKind.waitlisted.value),
        else_=null(),
    )
    return event(SUBSCRIBER_ID, ANSWER, values["waitlisted"], notice, NOTE)


def promoted_event(subscriber_id: ColumnElement[int]) -> Select[Any]:
    """The history row of someone given a freed seat, with their mail."""
    return event(
        subscriber_id, literal(YES), literal(False), literal(NoticeKind.promoted.value), null()
    )


@lru_cache(maxsize=1)
def write_event_sqlite() -> Insert:
    """SQLite: the history row of the decided answer."""
    return insert(EVENTS).from_select(
        EVENT_COLUMNS, answer_event(bound_values(("waitlisted", "confirmed")))
    )
