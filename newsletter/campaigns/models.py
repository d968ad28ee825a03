"""Campaign and Delivery: progress lives in these rows, not in the broker."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.db import Base, UtcDateTime


class CampaignStatus(StrEnum):
    """draft → (scheduled) → sending ⇄ waiting (for the relay) → paused / cancelled → finished."""

    draft = "draft"
    scheduled = "scheduled"
    sending = "sending"
    # The relay (or the rate limiter) could not be reached: probed on the back-off table,
    # sending again by itself when it answers.
    waiting = "waiting"
    paused = "paused"
    cancelled = "cancelled"
    finished = "finished"


class CampaignKind(StrEnum):
    """What the campaign's mails are."""

    invitation = "invitation"
    reminder = "reminder"
    change = "change"  # a re-imported record changed (or was cancelled) after mail went out
    followup = "followup"  # after the session: recordings, slides and a feedback form


class DeliveryStatus(StrEnum):
    """queued → inflight (claimed by a worker) → sent | failed | skipped | unconfirmed."""

    queued = "queued"
    inflight = "inflight"
    sent = "sent"
    failed = "failed"
    skipped = "skipped"  # the subscriber unsubscribed or bounced after the campaign was created
    # A worker stopped after handing a copy over, before writing the relay's answer, and the
    # re-sends were refused: the first copy may have been accepted, so it is not "failed".
    unconfirmed = "unconfirmed"


class Campaign(Base):
    """One mailing of one session to a snapshot of recipients."""

    __tablename__ = "campaigns"
    __table_args__ = (
        # What a campaign is *for*, once: the change notice of record revision 3 is
        # occasion "revision-3", the automatic reminder at one day before is "P1D", the
        # follow-up is "followup"; None for campaigns an organizer may send any number of.
        # NULLs are distinct in a unique constraint (SQLite and PostgreSQL alike).
        Index("uq_campaigns_session_kind_occasion", "session_id", "kind", "occasion", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=CampaignKind.invitation)
    subject: Mapped[str] = mapped_column(Text)
    occasion: Mapped[str | None] = mapped_column(String(64))
    # A change notice's "what changed" lines (JSON, sessions.changes): the record before the
    # re-import is overwritten, so the notice keeps what it announces.
    details: Mapped[str | None] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.draft, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    scheduled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When a batch last reported; the sweeper restarts campaigns that stopped moving.
    last_progress_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Temporary refusals in a row with no success in between (the error budget's streak).
    failure_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # While ``waiting``: when the relay is probed next, and how many probes found it down
    # (the step of the back-off table); reset by the first message it accepts.
    relay_retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    relay_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Deliveries per status, moved by the delivery transitions in repo.py in the same
    # statement's transaction (see counts_repo.py): read paths never count delivery rows.
    queued_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    inflight_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sent_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skipped_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    unconfirmed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When `campaign prune` removed its delivery rows (the counts above stay).
    pruned_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Mail coming back (newsletter inbound), counted as it is classified: distinct deliveries
    # that bounced for good, and abuse reports.
    bounce_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    complaint_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Delivery(Base):
    """One recipient of one campaign. Its id makes the Message-ID, so a resend is the same mail."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "subscriber_id"),
        # The claim query scans queued rows of one campaign in id order.
        Index("ix_deliveries_campaign_status_id", "campaign_id", "status", "id"),
        # The earliest back-off end of a campaign's queued rows, read from the index alone.
        Index("ix_deliveries_campaign_status_due", "campaign_id", "status", "next_attempt_at"),
        # The id makes the Message-ID: SQLite must never hand out again the id of a row that
        # was deleted (pruned), as it would without AUTOINCREMENT for the highest ids.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.queued)
    # SMTP transactions the relay answered (accepted or refused); a claim, a dead worker or a
    # connection that broke before the reply does not count.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A temporary failure puts the row back in the queue, not claimable before this time.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A copy may already have been accepted: set when the row was taken back from a worker
    # that stopped (or lost the connection) after handing it over, before the answer was
    # written. Such a row is never marked failed because a re-send was refused.
    maybe_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class WorkerHeartbeat(Base):
    """A worker process that holds deliveries says it is alive here every few seconds."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(UtcDateTime)
