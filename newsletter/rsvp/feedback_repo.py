"""SQL of the follow-up's feedback: one answer per person and session (a second replaces the
first), and what the dashboard shows of them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.db import is_postgresql
from newsletter.rsvp.models import Feedback


def save(
    db: Session,
    session_id: int,
    subscriber_id: int,
    rating: int,
    comment: str | None,
    now: datetime,
) -> None:
    """Insert the answer, or replace the person's earlier one for the session.

    One ``INSERT … ON CONFLICT DO UPDATE`` on the (session, subscriber) unique constraint, so
    two presses of the button at once leave one row (the later answer), on either database.
    """
    dialect = postgresql if is_postgresql(db) else sqlite
    new = dialect.insert(Feedback).values(
        session_id=session_id,
        subscriber_id=subscriber_id,
        rating=rating,
        comment=comment,
        at=now,
    )
    db.execute(
        new.on_conflict_do_update(
            index_elements=[Feedback.session_id, Feedback.subscriber_id],
            set_={
                "rating": new.excluded.rating,
                "comment": new.excluded.comment,
                "at": new.excluded.at,
            },
        )
    )


def answer_of(db: Session, session_id: int, subscriber_id: int) -> Feedback | None:
    """The person's answer for the session, if any (the form shows it again)."""
    return db.scalar(
        select(Feedback).where(
            Feedback.session_id == session_id, Feedback.subscriber_id == subscriber_id
        )
    )


def rating_counts(db: Session, session_id: int) -> dict[int, int]:
    """How many answers gave each rating (only the ratings given appear)."""
    rows = db.execute(
        select(Feedback.rating, func.count())
        .where(Feedback.session_id == session_id)
        .group_by(Feedback.rating)
    )
    return {int(rating): int(count) for rating, count in rows}


def comments(db: Session, session_id: int, limit: int) -> list[tuple[int, str, datetime]]:
    """``(rating, comment, at)`` of the answers that carry a comment, newest first."""
    rows = db.execute(
        select(Feedback.rating, Feedback.comment, Feedback.at)
        .where(Feedback.session_id == session_id, Feedback.comment.is_not(None))
        .order_by(Feedback.at.desc(), Feedback.id.desc())
        .limit(limit)
    )
    return [(int(r), str(c), at) for r, c, at in rows]
