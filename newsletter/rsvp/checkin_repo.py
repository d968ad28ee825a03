"""SQL of the door: marking a confirmed answer present (once), undoing it, walk-ins, the
counts and the list an organizer searches on a phone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.rsvp.models import Answer, Rsvp, WalkIn
from subscribers.models import Subscriber

# A confirmed seat: said yes and not waiting. Only these can be checked in.
_CONFIRMED = (Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False)


def mark_present(db: Session, session_id: int, subscriber_id: int, now: datetime) -> bool:
    """Set the check-in time of a confirmed answer that has none; True when this wrote it.

    One conditional UPDATE, so two phones scanning the same code at once write one time
    (the first); an answer that stopped being confirmed meanwhile is not touched.
    """
    result = db.execute(
        update(Rsvp)
        .where(
            Rsvp.session_id == session_id,
            Rsvp.subscriber_id == subscriber_id,
            _CONFIRMED,
            Rsvp.checked_in_at.is_(None),
        )
        .values(checked_in_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def clear_present(db: Session, session_id: int, subscriber_id: int) -> bool:
    """Forget a check-in (the organizer tapped the wrong person); True when there was one."""
    result = db.execute(
        update(Rsvp)
        .where(
            Rsvp.session_id == session_id,
            Rsvp.subscriber_id == subscriber_id,
            Rsvp.checked_in_at.is_not(None),
        )
        .values(checked_in_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def add_walk_in(db: Session, session_id: int, name: str, now: datetime) -> WalkIn:
    """A person who came without an answer."""
    row = WalkIn(session_id=session_id, name=name, at=now)
    db.add(row)
    db.flush()
    return row


@dataclass(frozen=True, slots=True)
class Attendance:
    """Who was expected and who came."""

    confirmed: int  # people with a confirmed seat (guests not counted)
    present: int  # of them, checked in
    walk_ins: int

    @property
    def not_yet(self) -> int:
        """Confirmed people not checked in (after the session: the no-shows)."""
        return self.confirmed - self.present

    @property
    def no_show_rate(self) -> float | None:
        """The share of confirmed people not checked in; None when nobody was confirmed."""
        return self.not_yet / self.confirmed if self.confirmed else None


def attendance(db: Session, session_id: int) -> Attendance:
    """The door's counts in two small aggregate queries (the page polls this)."""
    confirmed, present = db.execute(
        select(
            func.count(),
            func.count(Rsvp.checked_in_at),  # COUNT(col) skips NULLs: those checked in
        ).where(Rsvp.session_id == session_id, _CONFIRMED)
    ).one()
    walk_ins = db.scalar(select(func.count()).where(WalkIn.session_id == session_id))
    return Attendance(int(confirmed or 0), int(present or 0), int(walk_ins or 0))


@dataclass(frozen=True, slots=True)
class DoorRow:
    """One confirmed person on the door list: no address is shown at the door."""

    subscriber_id: int
    name: str
    guests: int
    checked_in_at: datetime | None


def _door_select() -> Select[int, str, int, datetime | None]:
    return (
        select(Rsvp.subscriber_id, Subscriber.name, Rsvp.guests, Rsvp.checked_in_at)
        .join(Subscriber, Subscriber.id == Rsvp.subscriber_id)
        .where(_CONFIRMED)
    )


def door_list(
    db: Session, session_id: int, query: str | None = None, *, limit: int = 200
) -> list[DoorRow]:
    """Confirmed people by name, those not yet in first; ``query`` matches any part of the
    name or of the address (typed, never shown), case-insensitively."""
    statement = _door_select().where(Rsvp.session_id == session_id)
    if query:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(
            or_(
                func.lower(Subscriber.name).like(pattern.lower(), escape="\\"),
                func.lower(Subscriber.email).like(pattern.lower(), escape="\\"),
            )
        )
    statement = statement.order_by(
        Rsvp.checked_in_at.is_not(None), Subscriber.name, Rsvp.subscriber_id
    ).limit(limit)
    return [DoorRow(row[0], row[1], row[2], row[3]) for row in db.execute(statement).all()]


def door_row(db: Session, session_id: int, subscriber_id: int) -> DoorRow | None:
    """One person's line, if their answer is a confirmed seat."""
    row = db.execute(
        _door_select().where(Rsvp.session_id == session_id, Rsvp.subscriber_id == subscriber_id)
    ).first()
    return DoorRow(row[0], row[1], row[2], row[3]) if row else None


def present_ids(db: Session, session_id: int) -> dict[int, datetime]:
    """Subscriber id -> check-in time, for the page's live refresh."""
    rows = db.execute(
        select(Rsvp.subscriber_id, Rsvp.checked_in_at).where(
            Rsvp.session_id == session_id, _CONFIRMED, Rsvp.checked_in_at.is_not(None)
        )
    )
    return {int(row[0]): row[1] for row in rows if row[1] is not None}
