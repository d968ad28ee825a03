"""Answer counts over time, replayed from the append-only ``rsvp_events`` history.

Each event sets one person's current state (confirmed, waitlisted, maybe or no); replaying the
events in order and counting states after each gives the step series the dashboard charts.
The replay is the same rule the service applies, so its last point equals today's counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from newsletter.rsvp import history_repo
from newsletter.rsvp.history_repo import EventRow
from newsletter.rsvp.models import Answer

# The four states a person can be in; a chart line each.
STATES = ("yes", "waitlisted", "maybe", "no")


class Point(NamedTuple):
    """The counts right after everything that happened at ``at``."""

    at: datetime
    yes: int  # confirmed "yes" (seats held), not counting guests
    waitlisted: int
    maybe: int
    no: int

    def count(self, state: str) -> int:
        """The count of one of :data:`STATES`."""
        value: int = getattr(self, state)
        return value


# Where each state's count is in a Point after ``at``.
_YES, _WAITLISTED, _MAYBE, _NO = range(4)


def _state(answer: str, waitlisted: bool) -> int:
    if answer == Answer.yes:
        return _WAITLISTED if waitlisted else _YES
    return _MAYBE if answer == Answer.maybe else _NO


def replay(events: Iterable[EventRow]) -> list[Point]:
    """One point per distinct event time, with the counts after all events of that time.

    Events sharing a timestamp (a "no" and the promotion it triggers) collapse into one point:
    the intermediate state never existed for anyone looking. A point is made only when the
    time moves on: a session's history is tens of thousands of events.
    """
    current: dict[int, int] = {}
    tally = [0, 0, 0, 0]
    points: list[Point] = []
    at: datetime | None = None
    for subscriber_id, answer, waitlisted, event_at in events:
        if at is not None and event_at != at:
            points.append(Point(at, *tally))
        at = event_at
        new = _state(answer, waitlisted)
        old = current.get(subscriber_id)
        if old is not None:
            tally[old] -= 1
        tally[new] += 1
        current[subscriber_id] = new
    if at is not None:
        points.append(Point(at, *tally))
    return points


def history(db: Session, session_id: int) -> list[Point]:
    """The counts of session ``session_id`` over time, oldest first."""
    return replay(history_repo.events(db, session_id))


def thin(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most about ``max_points`` points: the last of each equal slice of time.

    A burst right after a send can make thousands of points; the chart and its table need a
    few hundred. Keeping the *last* point of each slice keeps every value the counts settled
    on, and the first and last points are always kept so the series starts and ends exactly.
    """
    if len(points) <= max_points or max_points < 2:
        return list(points)
    first, last = points[0].at, points[-1].at
    span = (last - first).total_seconds()
    if span <= 0:
        return [points[-1]]
    buckets: dict[int, Point] = {}
    for point in points[1:-1]:
        slot = int((point.at - first).total_seconds() / span * (max_points - 2))
        buckets[slot] = point  # later points overwrite: the slice's final state
    return [points[0], *(buckets[k] for k in sorted(buckets)), points[-1]]
