"""The follow-up: after a session, one mail thanking those who came, with the record's links
(recordings, slides) and each person's signed feedback form.

Once per session: the campaign's occasion is ``followup``, so the unique index on (session,
kind, occasion) makes a second one impossible whichever process tries (the check before it
only gives the clear message). Its audience is those checked in at the door, or with
``everyone`` all who answered yes or maybe; a session nobody was checked in at is refused
rather than mailing nobody, with a hint at ``--all``. The mail is ``email/followup`` (see
``campaigns.compiled``), sent, paused and watched as any campaign.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.campaigns import followup_repo
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus
from newsletter.db import utcnow
from newsletter.errors import InvalidStateError
from newsletter.rendering import followup_subject
from newsletter.rendering.environment import cn_datetime_range, cn_deadline
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import require_session


class FollowupExists(InvalidStateError):
    """The session already has its follow-up."""


class NobodyCheckedIn(InvalidStateError):
    """Nobody was checked in, so a follow-up to those present would reach nobody."""


def _already(number: int, campaign: Campaign, zone: ZoneInfo) -> FollowupExists:
    return FollowupExists(
        f"session {number} already has its follow-up (campaign {campaign.id}, made"
        f" {cn_deadline(campaign.created_at, zone)}); only one is sent per session"
        f" (see `newsletter campaign status {campaign.id}`)"
    )


def create_followup(
    db: Session, number: int, *, everyone: bool = False, subject: str | None = None
) -> Campaign:
    """Create the draft follow-up of session ``number``: one queued delivery per mailable
    person who was checked in (``everyone``: who answered yes or maybe).

    Refused with :class:`InvalidStateError` for a cancelled session, one that has not ended,
    one whose follow-up exists (:class:`FollowupExists`) or an empty audience;
    :class:`NotFoundError` for an unknown number.
    """
    salon = require_session(db, number)
    zone = ZoneInfo(salon.timezone)
    if salon.cancelled:
        raise InvalidStateError(f"session {number} was cancelled; there is nothing to follow up")
    if salon.ends_at > utcnow():
        held = cn_datetime_range(salon.starts_at, salon.ends_at, zone)
        raise InvalidStateError(
            f"session {number} has not ended yet (it is held {held}); the follow-up goes"
            " out once it is over"
        )
    existing = followup_repo.followup_of(db, salon.id)
    if existing is not None:
        raise _already(number, existing, zone)
    if followup_repo.count_audience(db, salon.id, everyone=everyone) == 0:
        if everyone:
            raise InvalidStateError(
                f"nobody answered yes or maybe for session {number}; there is nobody to thank"
            )
        raise NobodyCheckedIn(
            f"nobody was checked in at session {number}, so a follow-up to those present"
            " would reach nobody; to thank everyone who answered yes or maybe, use"
            f" `newsletter campaign followup {number} --all`"
        )
    record = sessions_repo.record_of(salon)
    campaign = Campaign(
        session_id=salon.id,
        kind=CampaignKind.followup,
        subject=(subject or "").strip() or followup_subject(record),
        occasion=followup_repo.OCCASION,
        status=CampaignStatus.draft,
        created_at=utcnow(),
    )
    try:
        with db.begin_nested():
            db.add(campaign)
            db.flush()
    except IntegrityError:  # another process made it between our check and this insert
        made = followup_repo.followup_of(db, salon.id)
        assert made is not None, "the unique index refused ours for this one"
        raise _already(number, made, zone) from None
    campaign.recipient_count = followup_repo.snapshot_audience(db, campaign, everyone=everyone)
    return campaign
