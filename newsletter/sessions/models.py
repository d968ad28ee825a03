"""Sessions, talks and archive links as stored.

The validated record is kept whole (``record``) because the invitation shows every detail of
it; talks and links are also stored as rows because the archive table of every invitation and
the RSVP views query them across all sessions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UtcDateTime


class SalonSession(Base):
    """One salon session, keyed by its number."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    series: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)
    theme: Mapped[str | None] = mapped_column(String(200))
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    venue_mode: Mapped[str | None] = mapped_column(String(16))
    capacity: Mapped[int | None] = mapped_column(Integer)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cancelled: Mapped[bool] = mapped_column(default=False)
    # Guests each person may bring (the record's registration.plus_ones), a column because
    # the answer decision checks it (newsletter/rsvp/decision_repo.py).
    plus_ones: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Kept by every answer to a session with a seat limit, in the statement that records it
    # (so an answer reads no other answer): seats held by confirmed "yes" answers, guests
    # included; "yes" answers waiting; the queue number the next new "yes" gets (the
    # waitlist's order is the order in which answers took the session's row).
    seats_taken: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    waiting: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue_next: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The waitlist's timing rules (the record's registration.promotion_cutoff and
    # confirm_within, in seconds; None: no cutoff, no confirmation asked), columns because
    # the promotion statement checks them (newsletter/rsvp/waitlist_repo.py).
    promotion_cutoff_s: Mapped[int | None] = mapped_column(Integer)
    confirm_within_s: Mapped[int | None] = mapped_column(Integer)
    # When the organizer was last told that a seat came free inside the promotion cutoff.
    promotion_held_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The record's reminder offsets (ISO 8601 durations, comma-separated, e.g. "P1D,PT2H");
    # None: NEWSLETTER_REMINDERS.
    reminder_offsets: Mapped[str | None] = mapped_column(String(200))
    # Bumped on every import that changes the record: the calendar SEQUENCE.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_path: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    talks: Mapped[list[Talk]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="Talk.position"
    )
    links: Mapped[list[SessionLink]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="SessionLink.position"
    )


class Talk(Base):
    """A talk of a session, in the order of the record."""

    __tablename__ = "talks"
    __table_args__ = (UniqueConstraint("session_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    speaker: Mapped[str | None] = mapped_column(String(200))
    affiliation: Mapped[str | None] = mapped_column(String(200))
    starts_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    session: Mapped[SalonSession] = relationship(back_populates="talks")


class SessionLink(Base):
    """A recording or material of a session, shown in the archive table."""

    __tablename__ = "session_links"
    __table_args__ = (UniqueConstraint("session_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)

    session: Mapped[SalonSession] = relationship(back_populates="links")
