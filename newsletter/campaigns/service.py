"""Campaign lifecycle: create (snapshot recipients), start, pause, resume, cancel, status.

Two kinds of campaign: the invitation (:func:`create_campaign`, every active subscriber or a
tag) and the reminder (:func:`create_reminder`, those holding a confirmed seat). Both are
sent, paused and watched the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.campaigns import recipients, repo
from newsletter.campaigns.counts_repo import counts_of
from newsletter.campaigns.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    DeliveryStatus,
)
from newsletter.db import utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rendering import default_subject, reminder_subject
from newsletter.rendering.environment import cn_datetime_range
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import require_session
from subscribers.validation import normalise_tag


def create_campaign(
    db: Session,
    number: int,
    *,
    subject: str | None = None,
    tag: str | None = None,
    kind: CampaignKind = CampaignKind.invitation,
    past: bool = False,
) -> Campaign:
    """Create a draft campaign for session ``number`` with one queued delivery per recipient.

    The recipient snapshot is taken in the caller's transaction, so the campaign and all its
    deliveries appear together or not at all. Reminders have their own audience: make them
    with :func:`create_reminder`. A session that has ended is refused with
    :class:`InvalidStateError` unless ``past`` is given; such a campaign (created after the
    end) mails no RSVP buttons, which the server would refuse (see ``campaigns.compiled``).
    """
    if kind == CampaignKind.reminder:
        raise ValueError("reminders go to confirmed attendees only: use create_reminder()")
    salon = require_session(db, number)
    record = sessions_repo.record_of(salon)
    if record.cancelled:
        raise InvalidStateError(f"session {number} is cancelled; no invitation can be sent")
    if salon.ends_at <= utcnow() and not past:
        held = cn_datetime_range(salon.starts_at, salon.ends_at, ZoneInfo(salon.timezone))
        raise InvalidStateError(
            f"session {number} is over (it was held {held}): an invitation would offer RSVP"
            " buttons that are refused; to mail it anyway, without them, use"
            f" `newsletter campaign create {number} --past`"
        )
    campaign = _draft(
        db,
        salon.id,
        kind,
        subject=(subject or default_subject(record)).strip(),
        tag=normalise_tag(tag) if tag else None,
    )
    campaign.recipient_count = recipients.snapshot_recipients(db, campaign)
    return campaign


def create_reminder(
    db: Session, number: int, *, subject: str | None = None, occasion: str | None = None
) -> Campaign:
    """Create a draft reminder for session ``number``: one queued delivery per active
    subscriber with a confirmed seat ("yes", not waitlisted).

    Refused with :class:`InvalidStateError` when the session is cancelled, already over, or
    nobody has confirmed; :class:`NotFoundError` for an unknown number. Creating another
    reminder later is allowed (a second reminder); each campaign mails each person once.
    The subject defaults to ``提醒：第 N 期… · <local start time>``.

    ``occasion`` (an automatic reminder's offset, ``P1D``; see ``campaigns.reminders``) makes
    it the one reminder for that offset: a second one raises IntegrityError from the unique
    constraint on (session, kind, occasion). Such a reminder is made even when nobody has
    confirmed, so that the row records that its moment came and went.
    """
    salon = require_session(db, number)
    if salon.cancelled:
        raise InvalidStateError(f"session {number} is cancelled; there is nothing to remind of")
    if salon.ends_at <= utcnow():
        held = cn_datetime_range(salon.starts_at, salon.ends_at, ZoneInfo(salon.timezone))
        raise InvalidStateError(f"session {number} is over (it was held {held}); no reminder")
    # Checked before anything is written, so a refusal leaves no empty campaign behind.
    if occasion is None and recipients.count_confirmed(db, salon.id) == 0:
        raise InvalidStateError(
            f"nobody has a confirmed seat for session {number} yet; a reminder goes only to "
            "those who answered yes (see `newsletter rsvp list`)"
        )
    record = sessions_repo.record_of(salon)
    campaign = _draft(
        db,
        salon.id,
        CampaignKind.reminder,
        subject=(subject or "").strip() or reminder_subject(record, salon.timezone),
        tag=None,
        occasion=occasion,
    )
    campaign.recipient_count = recipients.snapshot_confirmed(db, campaign)
    return campaign


def _draft(
    db: Session,
    session_id: int,
    kind: CampaignKind,
    *,
    subject: str,
    tag: str | None,
    occasion: str | None = None,
) -> Campaign:
    """A new draft campaign row, flushed so its id exists for the recipient snapshot (and so
    that a second campaign for the same ``occasion`` fails here, before any delivery)."""
    campaign = Campaign(
        session_id=session_id,
        kind=kind,
        subject=subject,
        tag=tag,
        occasion=occasion,
        status=CampaignStatus.draft,
        created_at=utcnow(),
    )
    db.add(campaign)
    db.flush()
    return campaign


def require_campaign(db: Session, campaign_id: int, *, lock: bool = False) -> Campaign:
    """The campaign or a NotFoundError naming the id."""
    campaign = repo.lock_campaign(db, campaign_id) if lock else repo.get_campaign(db, campaign_id)
    if campaign is None:
        raise NotFoundError(
            f"campaign {campaign_id} does not exist (see `newsletter campaign list`)"
        )
    return campaign


_TRANSITIONS: dict[str, set[CampaignStatus]] = {
    # Starting a campaign that waits for the relay probes it now.
    "start": {
        CampaignStatus.draft,
        CampaignStatus.scheduled,
        CampaignStatus.sending,
        CampaignStatus.waiting,
    },
    "schedule": {CampaignStatus.draft, CampaignStatus.scheduled},
    # Pausing a waiting campaign stops the probing too.
    "pause": {CampaignStatus.sending, CampaignStatus.scheduled, CampaignStatus.waiting},
    "resume": {CampaignStatus.paused, CampaignStatus.waiting},
    "cancel": {
        CampaignStatus.draft,
        CampaignStatus.scheduled,
        CampaignStatus.sending,
        CampaignStatus.waiting,
        CampaignStatus.paused,
    },
}


def _transition(db: Session, campaign_id: int, action: str) -> Campaign:
    campaign = require_campaign(db, campaign_id, lock=True)
    if campaign.status not in _TRANSITIONS[action]:
        raise InvalidStateError(
            f"campaign {campaign_id} is {campaign.status}; it cannot {action}"
            + (" (it is already done)" if campaign.status == CampaignStatus.finished else "")
        )
    return campaign


def start_campaign(db: Session, campaign_id: int) -> Campaign:
    """Mark the campaign sending. Starting a campaign that is already sending is harmless.

    A pending change notice (a draft with no deliveries yet) is refused: its audience is
    chosen when it is sent (``campaigns.change_notices.send_pending``), and started empty it
    would count as told."""
    campaign = _transition(db, campaign_id, "start")
    refuse_pending_change(campaign)
    _sending(campaign)
    campaign.started_at = campaign.started_at or utcnow()
    return campaign


def refuse_pending_change(campaign: Campaign) -> None:
    """:class:`InvalidStateError` for a pending change notice (see :func:`start_campaign`)."""
    if (
        campaign.kind == CampaignKind.change
        and campaign.status == CampaignStatus.draft
        and campaign.recipient_count == 0
    ):
        raise InvalidStateError(
            f"campaign {campaign.id} is a pending change notice: send it with `newsletter"
            " sessions import FILE --notify` (or --notify-all) or the dashboard's button"
        )


def _sending(campaign: Campaign) -> None:
    campaign.status = CampaignStatus.sending
    campaign.status_reason = None
    campaign.relay_retry_at = None


def schedule_campaign(db: Session, campaign_id: int, at: datetime) -> Campaign:
    """Schedule a draft campaign; Celery beat's sweeper starts it at ``at``."""
    if at.tzinfo is None:
        raise InvalidStateError(f"{at.isoformat()} has no UTC offset, e.g. 2026-12-01T09:00+08:00")
    campaign = _transition(db, campaign_id, "schedule")
    campaign.status = CampaignStatus.scheduled
    campaign.scheduled_at = at
    campaign.status_reason = None
    return campaign


def pause_campaign(db: Session, campaign_id: int, reason: str | None = None) -> Campaign:
    """Stop claiming new batches; batches in flight finish their current message."""
    campaign = _transition(db, campaign_id, "pause")
    campaign.status = CampaignStatus.paused
    campaign.status_reason = reason or "paused by an organizer"
    return campaign


def halt_campaign(db: Session, campaign_id: int, reason: str) -> bool:
    """Pause a sending campaign because sending cannot go on (the relay is down, say).

    Several batches may hit the same fault at once; only the first one pauses, the others
    find it paused already and do nothing.
    """
    campaign = require_campaign(db, campaign_id, lock=True)
    if campaign.status != CampaignStatus.sending:
        return False
    campaign.status = CampaignStatus.paused
    campaign.status_reason = reason
    return True


def resume_campaign(db: Session, campaign_id: int) -> Campaign:
    """Continue a paused campaign where it stopped (a waiting one: probe the relay now)."""
    campaign = _transition(db, campaign_id, "resume")
    _sending(campaign)
    return campaign


def wait_for_relay(
    db: Session,
    campaign_id: int,
    reason: str,
    *,
    delays: list[float],
    zone: ZoneInfo,
    probe_forever: bool = True,
) -> datetime | None:
    """Take a sending campaign off the relay while it cannot be reached (or answers 421):
    status ``waiting``, the next probe on the back-off table ``delays`` (its last step
    repeats), the organizer told when. Returns the time of the next probe, or None when the
    campaign was not sending (another batch got there first, or an organizer acted).

    Pause and cancel stay possible; a probe (:func:`probe_relay`) sends again by itself.
    Without ``probe_forever`` (a command's own embedded worker, which ends with the command)
    the campaign pauses once the table is used up, so the command ends.
    """
    campaign = require_campaign(db, campaign_id, lock=True)
    if campaign.status != CampaignStatus.sending:
        return None
    if not probe_forever and campaign.relay_failures >= len(delays):
        campaign.status = CampaignStatus.paused
        campaign.status_reason = (
            f"{reason}; tried {campaign.relay_failures + 1} times, resume when it is back"
        )
        campaign.relay_retry_at = None
        return None
    step = delays[min(campaign.relay_failures, len(delays) - 1)]
    at = utcnow() + timedelta(seconds=step)
    campaign.status = CampaignStatus.waiting
    campaign.relay_failures += 1
    campaign.relay_retry_at = at
    campaign.status_reason = next_try(reason, at, zone)
    return at


def next_try(reason: str, at: datetime, zone: ZoneInfo) -> str:
    """What the organizer reads while a campaign waits: the reason and the next probe time."""
    return f"{reason}; next try at {at.astimezone(zone):%H:%M:%S %Z}"


def probe_relay(db: Session, campaign_id: int) -> bool:
    """Send again if the campaign waits for the relay and its probe is due; True if so.

    The batches that follow are the probe: if the relay still fails, the first of them puts
    the campaign back to waiting, one step further along the back-off table.
    """
    campaign = require_campaign(db, campaign_id, lock=True)
    if campaign.status != CampaignStatus.waiting:
        return False
    if campaign.relay_retry_at is not None and campaign.relay_retry_at > utcnow():
        return False
    _sending(campaign)
    return True


def cancel_campaign(db: Session, campaign_id: int) -> Campaign:
    """Cancel: queued deliveries are skipped and never sent."""
    campaign = _transition(db, campaign_id, "cancel")
    campaign.status = CampaignStatus.cancelled
    campaign.status_reason = "cancelled by an organizer"
    campaign.finished_at = utcnow()
    repo.skip_queued(db, campaign_id, "campaign cancelled")
    return campaign


OrganizerAction = Literal["send", "pause", "resume", "cancel"]


def apply_organizer_action(db: Session, campaign_id: int, action: OrganizerAction) -> bool:
    """What an organizer's send / pause / resume / cancel does (API and dashboard alike);
    True when the caller must enqueue the sending after the commit. "send" on a paused
    campaign resumes it; on a draft or sending one it (re)starts it, which is harmless."""
    current = require_campaign(db, campaign_id)
    if action in ("send", "resume"):
        refuse_pending_change(current)
    if action == "pause":
        pause_campaign(db, campaign_id)
    elif action == "cancel":
        cancel_campaign(db, campaign_id)
    elif action == "resume" or current.status in (CampaignStatus.paused, CampaignStatus.waiting):
        resume_campaign(db, campaign_id)
    return action in ("send", "resume")


@dataclass(frozen=True, slots=True)
class CampaignProgress:
    """A campaign's state and its delivery counts, as kept on the campaign row."""

    id: int
    session_number: int
    subject: str
    status: str
    status_reason: str | None
    total: int
    queued: int
    inflight: int
    sent: int
    failed: int
    skipped: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    kind: str = CampaignKind.invitation
    # Re-sends refused after a worker stopped mid-hand-over: maybe delivered, maybe not.
    unconfirmed: int = 0
    # When `campaign prune` removed the delivery rows (the counts above are kept).
    pruned_at: datetime | None = None

    @property
    def done(self) -> int:
        """Deliveries that reached a final state."""
        return self.sent + self.failed + self.skipped + self.unconfirmed

    @property
    def state(self) -> str:
        """The status as shown to organizers: "finished, pruned" once the rows are gone."""
        return f"{self.status}, pruned" if self.pruned_at else self.status


def progress(db: Session, campaign_id: int) -> CampaignProgress:
    """The campaign's status with counts per delivery state (from its row: no count(*))."""
    campaign = require_campaign(db, campaign_id)
    salon = sessions_repo.get_by_id(db, campaign.session_id)
    return progress_of(campaign, salon.number if salon else 0)


def list_progress(
    db: Session, limit: int = 50, *, session_id: int | None = None
) -> list[tuple[Campaign, CampaignProgress]]:
    """The newest campaigns with their progress, in one query whatever their number."""
    return [
        (campaign, progress_of(campaign, number))
        for campaign, number in repo.list_with_numbers(db, limit, session_id=session_id)
    ]


def progress_of(campaign: Campaign, session_number: int) -> CampaignProgress:
    """The progress of a campaign row already read."""
    counts = counts_of(campaign)
    return CampaignProgress(
        id=campaign.id,
        session_number=session_number,
        subject=campaign.subject,
        status=campaign.status,
        status_reason=campaign.status_reason,
        total=sum(counts.values()),
        queued=counts[DeliveryStatus.queued],
        inflight=counts[DeliveryStatus.inflight],
        sent=counts[DeliveryStatus.sent],
        failed=counts[DeliveryStatus.failed],
        skipped=counts[DeliveryStatus.skipped],
        created_at=campaign.created_at,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at,
        kind=campaign.kind,
        unconfirmed=counts[DeliveryStatus.unconfirmed],
        pruned_at=campaign.pruned_at,
    )
