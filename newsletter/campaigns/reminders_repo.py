"""The SQL of automatic reminders (``campaigns.reminders``): which sessions may still get
one, and which reminder occasions each already has."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, CampaignKind
from newsletter.sessions.models import SalonSession


def upcoming(db: Session, now: datetime) -> Sequence[SalonSession]:
    """Sessions not started and not cancelled: the only ones a reminder may be for. Read by
    every beat run; the index on ``starts_at`` keeps it to the few upcoming rows, however
    long the archive grows."""
    return db.scalars(
        select(SalonSession)
        .where(SalonSession.starts_at > now, SalonSession.cancelled.is_(False))
        .order_by(SalonSession.starts_at)
    ).all()


def reminder_campaigns(db: Session, session_ids: Sequence[int]) -> dict[int, dict[str, Campaign]]:
    """Per session, its automatic reminders (campaigns of kind reminder with an occasion) by
    occasion: what is already sent, sending or cancelled. One query for all sessions."""
    found: dict[int, dict[str, Campaign]] = {session_id: {} for session_id in session_ids}
    if not session_ids:
        return found
    rows = db.scalars(
        select(Campaign).where(
            Campaign.session_id.in_(session_ids),
            Campaign.kind == CampaignKind.reminder,
            Campaign.occasion.is_not(None),
        )
    )
    for campaign in rows:
        assert campaign.occasion is not None
        found[campaign.session_id][campaign.occasion] = campaign
    return found


def reminder_for(db: Session, session_id: int, occasion: str) -> Campaign | None:
    """The automatic reminder of ``session_id`` at ``occasion``, locked (the organizer's
    cancel and beat's creation must not cross): the unique constraint's own index finds it."""
    return db.scalars(
        select(Campaign)
        .where(
            Campaign.session_id == session_id,
            Campaign.kind == CampaignKind.reminder,
            Campaign.occasion == occasion,
        )
        .with_for_update()
    ).one_or_none()
