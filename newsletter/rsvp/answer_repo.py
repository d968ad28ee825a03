"""An answer on PostgreSQL as one statement: the decision and all its writes.

:func:`answer_statement` is data-modifying CTEs over :func:`.decision_repo.decided`: the
answer (:mod:`.record_repo`), the counters, the history row with the mail it triggers, and
the first waiting person who fits a freed seat (:mod:`.waitlist_repo`). Committed on its own
by the web app, it is one round trip, and a limited session's row stays locked only while it
runs. SQLite runs the same decision, then the same writes one by one (``rsvp.service``).

Three shapes of it, from the same decision and the same writes (:class:`.decision_repo.Shape`):
``ANY`` decides for every session; ``LIMITED`` reads only a session with a seat limit;
``NO_LIMIT`` leaves out what does nothing without a seat limit (the locked read of a limited
session, the counters, the promotion). Either of the last two finds no session when the
session is not of its kind, so the caller decides again with ``ANY``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Select,
    case,
    exists,
    func,
    insert,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql

from newsletter.rsvp.decision_repo import EVENTS, RSVPS, SESSIONS, SUBSCRIBER_ID, Shape, count
from newsletter.rsvp.decision_repo import decided as decided_cte
from newsletter.rsvp.record_repo import (
    ANSWER_COLUMNS,
    COUNTED,
    EVENT_COLUMNS,
    WRITTEN,
    Values,
    answer_event,
    answer_source,
    counters,
    promoted_event,
    upsert,
)
from newsletter.rsvp.waitlist_repo import pick_next, promote


@lru_cache(maxsize=3)
def answer_statement(shape: Shape = Shape.ANY) -> Select[Any]:
    """The whole answer in one statement; one row, the decision's columns with ``wrote``
    (0: nothing written, 1: the answer) and ``promoted`` (the subscriber given the freed
    seat, if any) and ``free_left`` (both NULL in the ``NO_LIMIT`` shape)."""
    decided = decided_cte(shape)
    # The writes read the decided row as columns (``… FROM decided``): one scan of it each,
    # where a scalar subquery per value was one more subplan each, run on every answer.
    values: Values = {name: decided.c[name] for name in WRITTEN + COUNTED}
    old_id = select(decided.c.old_id).scalar_subquery()
    written = (
        upsert(postgresql.insert(RSVPS).from_select(ANSWER_COLUMNS, answer_source(values)), old_id)
        .returning(RSVPS.c.id)
        .cte("written")
    )
    wrote = exists(select(written.c.id))
    answered = answer_event(values).where(wrote)
    if shape is Shape.NO_LIMIT:
        history = insert(EVENTS).from_select(EVENT_COLUMNS, answered).cte("history")
        return select(
            decided,
            count(written).label("wrote"),
            null().label("promoted"),
            null().label("free_left"),
        ).add_cte(history)
    promoted, counted = _seats(decided, values, wrote)
    history = (
        insert(EVENTS)
        .from_select(
            EVENT_COLUMNS,
            union_all(answered, promoted_event(promoted.c.subscriber_id).select_from(promoted)),
        )
        .cte("history")
    )
    return (
        select(
            decided,
            count(written).label("wrote"),
            select(promoted.c.subscriber_id).scalar_subquery().label("promoted"),
            select(counted.c[0]).scalar_subquery().label("free_left"),
        )
        # Not read, but PostgreSQL runs every data-modifying CTE to completion.
        .add_cte(history)
    )


def _seats(decided: CTE, values: Values, wrote: ColumnElement[bool]) -> tuple[CTE, CTE]:
    """The seat part of the statement: the first waiting person who fits the seats the
    answer freed is promoted, and the counters are written (both only for a seat limit)."""
    free = case((wrote, select(decided.c.free_after).scalar_subquery()), else_=0)
    pick = pick_next(free, passing=SUBSCRIBER_ID).cte("pick").prefix_with("MATERIALIZED")
    promoted = promote(select(pick.c.id).scalar_subquery()).cte("promoted")
    promoted_seats = func.coalesce(select(1 + promoted.c.guests).scalar_subquery(), 0)
    counted = (
        counters(values, promoted_seats, count(promoted))
        .where(wrote)
        .returning(SESSIONS.c.capacity - SESSIONS.c.seats_taken)
        .cte("counted")
    )
    return promoted, counted
