"""Automatic reminders: each session's planned reminders, the ones beat sends, and the
organizer's cancel.

A session's offsets are its record's ``reminders`` (``SalonSession.reminder_offsets``, "" for
none) or else ``NEWSLETTER_REMINDERS``. The reminder at offset ``P1D`` is due once
``starts_at - P1D`` has come, for a session that is neither cancelled nor started; it is a
reminder campaign (``service.create_reminder``: confirmed "yes" only, the manual reminder's
audience and mail) whose occasion is the offset's canonical spelling, so the unique
constraint on (session, kind, occasion) makes "once per session and offset" a database fact,
whichever beat or web process gets there first.

Late reminders (the rule, decided): a reminder whose moment has passed is still sent once if
the session has not started - a session imported an hour before its start with ``P1D`` gets
its reminder at once - but only the nearest one: when the moments of several offsets have all
come (``P1D`` and ``PT2H`` for that same late import, or beat down for a day), the smallest
offset is sent and the larger ones are recorded as skipped (a cancelled campaign row saying
why), so nobody gets two reminders in the same minute and none comes after a later one. Once
the session has started, nothing is sent: a reminder then is noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.campaigns import reminders_repo, service
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rendering import reminder_subject
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.sessions.offsets import iso_duration, parse_offsets
from newsletter.sessions.service import require_session

log = logging.getLogger(__name__)

SKIPPED = "skipped: a later reminder ({nearer}) was due at the same time"
CANCELLED_BY_ORGANIZER = "cancelled by an organizer before it was sent"


def offsets_of(salon: SalonSession, settings: Settings) -> list[timedelta]:
    """The session's reminder offsets, largest first: its record's, else the default."""
    if salon.reminder_offsets is None:
        offsets = settings.reminder_offsets
    else:
        offsets = parse_offsets(salon.reminder_offsets)
    return sorted(offsets, reverse=True)


@dataclass(frozen=True, slots=True)
class PlannedReminder:
    """One planned reminder of a session, as the dashboard lists it.

    ``state``: ``pending`` (its moment has not come), ``due`` (it has; beat sends it on its
    next run), ``sent`` (a campaign exists and was not cancelled: sending or finished),
    ``cancelled`` (cancelled or skipped: ``reason`` says which), ``missed`` (the session
    started or was cancelled first).
    """

    occasion: str
    at: datetime
    state: str
    campaign_id: int | None = None
    reason: str | None = None

    @property
    def cancellable(self) -> bool:
        """Whether the organizer may still stop it (nothing sent yet, or still sending)."""
        return self.state in ("pending", "due") or (
            self.state == "sent" and self.reason in _STOPPABLE
        )


# A reminder campaign in these states has mail still to send: cancelling skips it.
_STOPPABLE = {
    s.value
    for s in (
        CampaignStatus.draft,
        CampaignStatus.scheduled,
        CampaignStatus.sending,
        CampaignStatus.waiting,
        CampaignStatus.paused,
    )
}


def plan(
    salon: SalonSession, settings: Settings, existing: dict[str, Campaign], now: datetime
) -> list[PlannedReminder]:
    """The session's reminders with their time and state (``existing``: its reminder
    campaigns by occasion, from :func:`reminders_repo.reminder_campaigns`)."""
    planned = []
    open_ = not salon.cancelled and salon.starts_at > now
    for offset in offsets_of(salon, settings):
        occasion = iso_duration(offset)
        at = salon.starts_at - offset
        campaign = existing.get(occasion)
        if campaign is not None:
            cancelled = campaign.status == CampaignStatus.cancelled
            planned.append(
                PlannedReminder(
                    occasion,
                    at,
                    "cancelled" if cancelled else "sent",
                    campaign.id,
                    campaign.status_reason if cancelled else campaign.status,
                )
            )
        elif not open_:
            planned.append(PlannedReminder(occasion, at, "missed"))
        else:
            planned.append(PlannedReminder(occasion, at, "due" if at <= now else "pending"))
    return planned


def session_plan(db: Session, salon: SalonSession, settings: Settings) -> list[PlannedReminder]:
    """:func:`plan` for one session, reading its reminder campaigns."""
    existing = reminders_repo.reminder_campaigns(db, [salon.id])[salon.id]
    return plan(salon, settings, existing, utcnow())


@dataclass(frozen=True, slots=True)
class DueReminder:
    """A reminder to make now (``skip``: record it as skipped instead, see the module doc)."""

    session_id: int
    number: int
    occasion: str
    skip_because: str | None = None


def due(db: Session, settings: Settings, now: datetime) -> list[DueReminder]:
    """The reminders whose moment has come at ``now`` and that have no campaign yet."""
    sessions = reminders_repo.upcoming(db, now)
    existing = reminders_repo.reminder_campaigns(db, [s.id for s in sessions])
    found: list[DueReminder] = []
    for salon in sessions:
        come = [p for p in plan(salon, settings, existing[salon.id], now) if p.at <= now]
        if not come:
            continue
        nearest = come[-1]  # the smallest offset whose moment has come (largest first)
        for planned in come:
            if planned.state != "due":
                continue
            why = None if planned is nearest else SKIPPED.format(nearer=nearest.occasion)
            found.append(DueReminder(salon.id, salon.number, planned.occasion, why))
    return found


def make_due(url: str, settings: Settings, now: datetime | None = None) -> list[int]:
    """Make every due reminder (beat's task); returns the ids of campaigns to start sending.

    Each reminder is made in a transaction of its own: one that another process made first
    (the unique constraint refuses ours) or that became impossible meanwhile (the session was
    cancelled) leaves the others alone. A reminder with nobody confirmed is finished at once.
    """
    at = now or utcnow()
    with session_scope(url) as db:
        todo = due(db, settings, at)
    started: list[int] = []
    for item in todo:
        try:
            with session_scope(url) as db:
                if item.skip_because:
                    _record_cancelled(db, item.session_id, item.occasion, item.skip_because)
                    log.info(
                        "session %s: reminder %s %s", item.number, item.occasion, item.skip_because
                    )
                    continue
                campaign = service.create_reminder(db, item.number, occasion=item.occasion)
                if campaign.recipient_count == 0:
                    campaign.status = CampaignStatus.finished
                    campaign.started_at = campaign.finished_at = utcnow()
                    campaign.status_reason = "nobody had a confirmed seat"
                else:
                    started.append(campaign.id)
                log.info(
                    "session %s: reminder %s made, campaign %s, %d recipients",
                    item.number,
                    item.occasion,
                    campaign.id,
                    campaign.recipient_count,
                )
        except IntegrityError:
            log.info("session %s: reminder %s made by another process", item.number, item.occasion)
        except InvalidStateError as exc:  # cancelled or over since it was read
            log.info("session %s: reminder %s not made: %s", item.number, item.occasion, exc)
    return started


def _record_cancelled(db: Session, session_id: int, occasion: str, reason: str) -> Campaign:
    """A campaign row for ``occasion`` that is cancelled with no deliveries: beat then never
    makes that reminder (IntegrityError if one exists already)."""
    salon = sessions_repo.get_by_id(db, session_id)
    assert salon is not None, "the caller read the session"
    now = utcnow()
    campaign = Campaign(
        session_id=session_id,
        kind=CampaignKind.reminder,
        occasion=occasion,
        subject=reminder_subject(sessions_repo.record_of(salon), salon.timezone),
        status=CampaignStatus.cancelled,
        status_reason=reason,
        recipient_count=0,
        created_at=now,
        finished_at=now,
    )
    db.add(campaign)
    db.flush()
    return campaign


def cancel(url: str, settings: Settings, number: int, occasion: str) -> None:
    """The organizer cancels the reminder at ``occasion`` of session ``number``: a planned
    one gets a cancelled campaign row (so beat never sends it), one that is being made or
    sent is cancelled as any campaign is. :class:`NotFoundError` for an unknown session or an
    occasion that is not among its offsets; :class:`InvalidStateError` once it was sent."""
    for attempt in (1, 2):
        try:
            with session_scope(url) as db:
                _cancel(db, settings, number, occasion)
            return
        except IntegrityError:
            if attempt == 2:
                raise
            # Beat made the reminder between our read and our insert: cancel that campaign.


def _cancel(db: Session, settings: Settings, number: int, occasion: str) -> None:
    salon = require_session(db, number)
    if occasion not in {iso_duration(o) for o in offsets_of(salon, settings)}:
        raise NotFoundError(f"session {number} has no reminder {occasion}")
    campaign = reminders_repo.reminder_for(db, salon.id, occasion)
    if campaign is None:
        _record_cancelled(db, salon.id, occasion, CANCELLED_BY_ORGANIZER)
    elif campaign.status == CampaignStatus.finished:
        raise InvalidStateError(f"the reminder {occasion} of session {number} was already sent")
    elif campaign.status != CampaignStatus.cancelled:
        service.cancel_campaign(db, campaign.id)
