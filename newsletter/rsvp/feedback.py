"""The follow-up's one-question feedback: the signed per-person link, recording an answer
(1-5 and an optional comment; a second answer replaces the first) and the summary the
dashboard shows.

The link carries the session and subscriber ids only (``Purpose.FEEDBACK``), never an
address. It is accepted until :data:`OPEN_FOR` after the session's end: a follow-up is read
in the days after a talk, and answers months later say little about that evening.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.errors import InvalidStateError
from newsletter.rsvp import feedback_repo
from newsletter.sessions.models import SalonSession
from newsletter.tokens import Purpose, sign

RATINGS = (1, 2, 3, 4, 5)
MAX_COMMENT = 2000
OPEN_FOR = timedelta(days=60)
# The dashboard lists this many comments, newest first.
COMMENTS_SHOWN = 200


def feedback_payload(*, session_id: int, subscriber_id: int) -> dict[str, int]:
    """The ids a feedback token carries (the web app reads the same keys)."""
    return {"s": session_id, "u": subscriber_id}


def feedback_link(
    base_url: str, keys: Sequence[str], *, session_id: int, subscriber_id: int
) -> str:
    """The absolute link to this person's feedback form for the session."""
    token = sign(
        Purpose.FEEDBACK,
        feedback_payload(session_id=session_id, subscriber_id=subscriber_id),
        keys,
    )
    return f"{base_url.rstrip('/')}/feedback/{token}"


def closes_at(salon: SalonSession) -> datetime:
    """When the session's feedback form stops taking answers."""
    return salon.ends_at + OPEN_FOR


class FeedbackClosed(InvalidStateError):
    """The form takes no answers now: :class:`FeedbackNotYet` or :class:`FeedbackOver`."""


class FeedbackNotYet(FeedbackClosed):
    """The session has not ended yet."""


class FeedbackOver(FeedbackClosed):
    """The form closed (:data:`OPEN_FOR` after the session's end)."""


def check_open(salon: SalonSession, now: datetime | None = None) -> None:
    """:class:`FeedbackClosed` unless the session's form takes answers at ``now``."""
    at = now or utcnow()
    if salon.ends_at > at:
        raise FeedbackNotYet("本期活动还没有结束，结束后才能提交反馈。")
    if at >= closes_at(salon):
        raise FeedbackOver("本期活动的反馈已经截止，谢谢你的关注。")


def clean_comment(comment: str | None) -> str | None:
    """The comment as stored: stripped, None when empty; :class:`ValueError` when too long."""
    text = (comment or "").strip()
    if len(text) > MAX_COMMENT:
        raise ValueError(f"意见不能超过 {MAX_COMMENT} 个字符。")
    return text or None


def record_feedback(
    db: Session, salon: SalonSession, subscriber_id: int, rating: int, comment: str | None
) -> None:
    """Record (or replace) the person's answer; :class:`FeedbackClosed` outside the window,
    :class:`ValueError` for a rating outside 1-5 or a comment too long."""
    if rating not in RATINGS:
        raise ValueError("请选择 1 到 5 分。")
    text = clean_comment(comment)
    check_open(salon)
    feedback_repo.save(db, salon.id, subscriber_id, rating, text, utcnow())


@dataclass(frozen=True, slots=True)
class Comment:
    """One comment as the dashboard lists it."""

    rating: int
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    """The answers of one session: how many, the average, each rating's count, the comments."""

    count: int
    average: float | None
    distribution: tuple[tuple[int, int], ...]  # (rating, count) for 1…5
    comments: tuple[Comment, ...]

    def share(self, count: int) -> int:
        """``count`` as a whole percentage of the answers (a bar's width)."""
        return round(100 * count / self.count) if self.count else 0


def summary(db: Session, session_id: int) -> FeedbackSummary:
    """The session's feedback for the dashboard."""
    counts = feedback_repo.rating_counts(db, session_id)
    total = sum(counts.values())
    average = sum(r * n for r, n in counts.items()) / total if total else None
    return FeedbackSummary(
        count=total,
        average=average,
        distribution=tuple((r, counts.get(r, 0)) for r in RATINGS),
        comments=tuple(
            Comment(r, c, at) for r, c, at in feedback_repo.comments(db, session_id, COMMENTS_SHOWN)
        ),
    )
