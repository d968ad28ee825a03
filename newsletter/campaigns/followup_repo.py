"""The SQL of a follow-up's audience: who was at the session, or everyone who answered yes
or maybe. Part of the campaigns repository; the eligibility rule is still
:func:`recipients.mailable` (active, not paused), checked again at send time."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, CampaignKind
from newsletter.campaigns.recipients import _delivery_rows, _insert_deliveries, mailable
from newsletter.db import utcnow
from newsletter.rsvp.models import Answer, Rsvp
from subscribers.models import Subscriber

#: The occasion of a session's one follow-up (unique per session and kind, see Campaign).
OCCASION = "followup"


def _audience(session_id: int, everyone: bool) -> ColumnElement[bool]:
    """Checked in at the door; with ``everyone``, whoever answered yes or maybe (the
    waitlist included: they wanted to come and may want the recording)."""
    answered = select(Rsvp.subscriber_id).where(Rsvp.session_id == session_id)
    if everyone:
        answered = answered.where(Rsvp.answer.in_([Answer.yes, Answer.maybe]))
    else:
        answered = answered.where(Rsvp.checked_in_at.is_not(None))
    return Subscriber.id.in_(answered)


def count_audience(db: Session, session_id: int, *, everyone: bool) -> int:
    """How many mailable subscribers a follow-up would reach now."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(mailable(utcnow()), _audience(session_id, everyone))
        )
        or 0
    )


def snapshot_audience(db: Session, campaign: Campaign, *, everyone: bool) -> int:
    """One queued delivery per mailable subscriber of the audience; the row count."""
    rows = _delivery_rows(campaign).where(_audience(campaign.session_id, everyone))
    return _insert_deliveries(db, campaign, rows)


def followup_of(db: Session, session_id: int) -> Campaign | None:
    """The session's follow-up campaign, if one was made."""
    return db.scalar(
        select(Campaign).where(
            Campaign.session_id == session_id,
            Campaign.kind == CampaignKind.followup,
            Campaign.occasion == OCCASION,
        )
    )
