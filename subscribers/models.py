"""Subscribers, their tags, the mail the list itself sends them, and erased addresses."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UtcDateTime


class SubscriberStatus(StrEnum):
    """Only ``active`` subscribers are ever mailed."""

    pending = "pending"  # signed up, not confirmed yet (double opt-in): mailed nothing else
    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"  # a hard bounce (5.1.x) suppressed the address
    suppressed = "suppressed"  # an organizer blocked it
    erased = "erased"  # GDPR erasure: the row keeps no personal data, only its history's ids


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
    # How the person joined: "import", "signup", "cli", "api" (None: before issue 12).
    source: Mapped[str | None] = mapped_column(String(16))
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # double opt-in done
    welcomed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # the one welcome mail
    paused_until: Mapped[datetime | None] = mapped_column(UtcDateTime)  # no mail before this
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    tags: Mapped[list[Tag]] = relationship(secondary=subscriber_tags, lazy="selectin")


class SubscriberMailKind(StrEnum):
    """The mails the list sends a person about their subscription (not campaigns)."""

    confirm = "confirm"  # double opt-in: the link that confirms a sign-up
    welcome = "welcome"  # after confirming, once
    export = "export"  # GDPR: everything held about them, asked for on the preference page


class SubscriberMail(Base):
    """An outbox row: a subscription mail to send (``due_at`` set) or sent/given up (unset).

    Committed with the change that asks for it (a sign-up, a confirmation), so a crash between
    the two loses neither; the rows also count the confirmation mails of the last day.
    """

    __tablename__ = "subscriber_mails"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class ErasedAddress(Base):
    """A keyed hash of an erased address: an import does not bring the person back."""

    __tablename__ = "erased_addresses"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime)
