"""What came back, one row per distinct message, with the raw message (bounded)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.db import Base, UtcDateTime


class InboundKind(StrEnum):
    """How a returned message was classified."""

    hard_bounce = "hard_bounce"  # permanent failure (5.x.x): the address is suppressed
    soft_bounce = "soft_bounce"  # temporary failure (4.x.x): counted towards the limit
    complaint = "complaint"  # an ARF abuse report (RFC 5965): unsubscribed
    unsubscribe = "unsubscribe"  # mail to the List-Unsubscribe mailto, with its token
    auto_reply = "auto_reply"  # RFC 3834 or an out-of-office: changes nothing
    unknown = "unknown"  # kept for an organizer to inspect; changes nothing


class InboundEvent(Base):
    """One returned message and what it did.

    ``fingerprint`` makes processing idempotent: the same message fed twice (a retried pipe,
    an IMAP message seen again) finds its row and counts once. ``delivery_id`` is a plain
    integer, not a foreign key: pruning removes delivery rows and the event must outlive them.
    """

    __tablename__ = "inbound_events"
    __table_args__ = (
        # The soft-bounce window: this subscriber's events of a kind since a time.
        Index("ix_inbound_events_subscriber_kind_at", "subscriber_id", "kind", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))  # "file", "smtp", "imap", "webhook"
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    delivery_id: Mapped[int | None] = mapped_column(Integer)
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL"), index=True
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    matched_by: Mapped[str | None] = mapped_column(String(16))  # "verp", "message_id", "address"
    address: Mapped[str | None] = mapped_column(String(320))  # the failed recipient, as reported
    status_code: Mapped[str | None] = mapped_column(String(16))  # e.g. "5.1.1"
    diagnostic: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)  # at most a bounded prefix
    raw_truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
