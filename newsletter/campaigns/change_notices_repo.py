"""The SQL of change notices: whether a session was announced, its pending and sent notices,
and who a notice reaches (see :mod:`newsletter.campaigns.change_notices`)."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.campaigns import recipients
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus, Delivery
from newsletter.campaigns.models import DeliveryStatus as Ds
from newsletter.db import is_postgresql, utcnow
from newsletter.rsvp.models import Answer, Rsvp
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber


class Audience(StrEnum):
    """Who a change notice goes to."""

    # Everyone with an answer of yes (confirmed or waiting) or maybe: they planned to come.
    answered = "answered"
    # Everyone the invitation reached, and everyone who answered.
    invited = "invited"


def occasion_of(revision: int) -> str:
    """The occasion of the notice about record revision ``revision``: one per revision."""
    return f"revision-{revision}"


def lock_session(db: Session, number: int) -> None:
    """Lock session ``number``'s row until the transaction ends, before anything is read:
    two sends of its notice at once (two clicks, the button and the command) then run one
    after the other, and the second finds the notice sent. PostgreSQL: ``FOR UPDATE``;
    SQLite ignores that, so a no-op UPDATE takes the database's write lock."""
    if is_postgresql(db):
        db.execute(select(SalonSession.id).where(SalonSession.number == number).with_for_update())
    else:
        db.execute(
            update(SalonSession)
            .where(SalonSession.number == number)
            .values(revision=SalonSession.revision)
            .execution_options(synchronize_session=False)
        )


def announced(db: Session, session_id: int) -> bool:
    """Whether an invitation of the session went out (a campaign of it started sending):
    before that, nobody holds anything a change could make wrong."""
    return bool(
        db.scalar(
            select(
                exists().where(
                    Campaign.session_id == session_id,
                    Campaign.kind == CampaignKind.invitation,
                    Campaign.started_at.is_not(None),
                )
            )
        )
    )


def pending(db: Session, session_id: int) -> Campaign | None:
    """The session's change notice not sent yet (a draft), if any: at most one exists."""
    return db.scalars(
        select(Campaign)
        .where(
            Campaign.session_id == session_id,
            Campaign.kind == CampaignKind.change,
            Campaign.status == CampaignStatus.draft,
        )
        .order_by(Campaign.id.desc())
    ).first()


def notice_for(db: Session, session_id: int, revision: int) -> Campaign | None:
    """The change notice made for record revision ``revision`` (draft or sent), if any."""
    return db.scalars(
        select(Campaign).where(
            Campaign.session_id == session_id,
            Campaign.kind == CampaignKind.change,
            Campaign.occasion == occasion_of(revision),
        )
    ).first()


def _audience(session_id: int, audience: Audience) -> ColumnElement[bool]:
    """The subscribers a notice of ``audience`` is for (before the mailable rule)."""
    answered = Subscriber.id.in_(
        select(Rsvp.subscriber_id).where(
            Rsvp.session_id == session_id, Rsvp.answer.in_((Answer.yes, Answer.maybe))
        )
    )
    if audience is Audience.answered:
        return answered
    # A delivery that went (or may have gone) out: a queued row of a cancelled invitation
    # never reached anyone. Pruned campaigns keep no rows: their recipients are not found.
    invited = Subscriber.id.in_(
        select(Delivery.subscriber_id)
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(
            Campaign.session_id == session_id,
            Campaign.kind == CampaignKind.invitation,
            Delivery.status.in_((Ds.sent, Ds.unconfirmed, Ds.inflight)),
        )
    )
    return or_(answered, invited)


def count_audience(db: Session, session_id: int, audience: Audience) -> int:
    """How many mailable subscribers a notice to ``audience`` would reach now."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(recipients.mailable(utcnow()), _audience(session_id, audience))
        )
        or 0
    )


def snapshot_audience(db: Session, campaign: Campaign, audience: Audience) -> int:
    """One queued delivery per mailable subscriber of ``audience``; returns how many."""
    rows = recipients._delivery_rows(campaign).where(_audience(campaign.session_id, audience))
    return recipients._insert_deliveries(db, campaign, rows)
