"""RSVPs and the history of answers (for the over-time chart)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.db import Base, UtcDateTime


class Answer(StrEnum):
    """What a subscriber said."""

    yes = "yes"
    maybe = "maybe"
    no = "no"


class NoticeKind(StrEnum):
    """The mail an answer triggers."""

    confirmed = "confirmed"  # a "yes" got a seat
    promoted = "promoted"  # someone cancelled and the first on the waitlist got the seat
    waitlisted = "waitlisted"  # a "yes" past capacity: their place on the waitlist
    lapsed = "lapsed"  # promoted, not confirmed within confirm_within: the seat passed on


class Rsvp(Base):
    """A subscriber's current answer for a session; answering again updates this row."""

    __tablename__ = "rsvps"
    __table_args__ = (
        UniqueConstraint("session_id", "subscriber_id"),
        # The waitlist in order: the next person who fits when a seat frees, and a place in
        # line counted for a page that shows one (not on the burst's path: see decision_repo).
        Index("ix_rsvps_session_queue", "session_id", "waitlisted", "queue_no"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    answer: Mapped[str] = mapped_column(String(8))
    guests: Mapped[int] = mapped_column(Integer, default=0)
    # A "yes" past capacity waits here; the waitlist is ordered by queue_no.
    waitlisted: Mapped[bool] = mapped_column(default=False)
    answered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The session's queue_next when this "yes" was given (a new "yes" after a "maybe" or a
    # "no" queues anew): the order of answers as they took the session's row, which two web
    # processes' clocks cannot disagree about. 0 for answers that never were a "yes".
    queue_no: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Promoted from the waitlist at this time; with the session's confirm_within, the seat
    # is held for them until confirm_by and then passes on.
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    confirm_by: Mapped[datetime | None] = mapped_column(UtcDateTime)
    checked_in_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # at the door


class RsvpEvent(Base):
    """Every answer ever recorded, append-only: the dashboard charts counts over time from it.

    It is also the outbox of the mail an answer triggers: the row that records a confirmed
    seat carries its notice, committed with the answer, and a worker sends it. A broker that
    is down or a worker that dies delays that mail; it cannot lose it.
    """

    __tablename__ = "rsvp_events"
    # A session's history in chart order straight from the index (the dashboard replays it).
    __table_args__ = (Index("ix_rsvp_events_session_at", "session_id", "at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    answer: Mapped[str] = mapped_column(String(8))
    waitlisted: Mapped[bool] = mapped_column(default=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    notice: Mapped[str | None] = mapped_column(String(16))  # a NoticeKind, or no mail
    # When the notice is next due; NULL once it was sent or given up (see notice_error).
    notice_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    notice_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Why the notice was not sent (or its last temporary failure). On a row without a notice:
    # why the answer changed without the person giving it ("withdrawn: subscriber
    # unsubscribed (…)" when they left the list).
    notice_error: Mapped[str | None] = mapped_column(Text)


class WalkIn(Base):
    """Someone who came without an answer, added at the door (counted as present)."""

    __tablename__ = "walk_ins"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class Feedback(Base):
    """One person's answer to a follow-up's one question (1-5 and a comment); answering
    again replaces it."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("session_id", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
