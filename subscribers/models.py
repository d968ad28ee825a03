"""Subscribers and their tags."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UtcDateTime


class SubscriberStatus(StrEnum):
    """Only ``active`` subscribers are ever mailed."""

    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"  # a hard bounce (5.1.x) suppressed the address
    suppressed = "suppressed"  # an organizer blocked it


subscriber_tags = Table(
    "subscriber_tags",
    Base.metadata,
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Tag(Base):
    """A label used to pick a campaign's audience."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Subscriber(Base):
    """A person on the list. ``email`` is stored normalised, so it is unique case-insensitively."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    locale: Mapped[str] = mapped_column(String(16), default="zh-CN")
    status: Mapped[str] = mapped_column(String(16), default=SubscriberStatus.active, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status_reason: Mapped[str | None] = mapped_column(Text)

    tags: Mapped[list[Tag]] = relationship(secondary=subscriber_tags, lazy="selectin")
