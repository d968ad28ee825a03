"""The SQL that decides who a campaign mails: one queued delivery row per recipient.

Part of the campaigns repository (split from ``repo.py`` to keep each module small). Every
audience is built from the same eligibility rule, :func:`_eligible`, so an invitation and a
reminder can never disagree about who may be mailed at all.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, func, insert, literal, select
from sqlalchemy.orm import Session

from newsletter.campaigns.counts_repo import shift
from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.rsvp.models import Answer, Rsvp
from subscribers.models import Subscriber, SubscriberStatus, Tag, subscriber_tags


def _eligible() -> ColumnElement[bool]:
    """Who may be mailed at all: active subscribers (not unsubscribed, bounced or suppressed).

    Checked again at send time (see ``claim_batch``); here it keeps such people out of the
    snapshot in the first place.
    """
    return Subscriber.status == SubscriberStatus.active


def _confirmed(session_id: int) -> ColumnElement[bool]:
    """Subscribers holding a seat for the session: answered yes and not on the waitlist.

    A subquery on ``rsvps`` (its (session_id, subscriber_id) unique index covers it), so the
    audience stays one statement whatever the number of answers.
    """
    return Subscriber.id.in_(
        select(Rsvp.subscriber_id).where(
            Rsvp.session_id == session_id,
            Rsvp.answer == Answer.yes,
            Rsvp.waitlisted.is_(False),
        )
    )


def _delivery_rows(campaign: Campaign) -> Select[int, int, str, int]:
    """``(campaign_id, subscriber_id, status, attempts)`` for every eligible subscriber."""
    return select(
        literal(campaign.id), Subscriber.id, literal(DeliveryStatus.queued.value), literal(0)
    ).where(_eligible())


def _insert_deliveries(
    db: Session, campaign: Campaign, audience: Select[int, int, str, int]
) -> int:
    """INSERT … SELECT the audience as queued deliveries; returns the campaign's row count.

    The recipient list never passes through Python, so a campaign of a million subscribers
    is created in one statement inside the caller's transaction.
    """
    db.execute(
        insert(Delivery).from_select(
            ["campaign_id", "subscriber_id", "status", "attempts"], audience
        )
    )
    # Counted afterwards (an index-only scan of the new campaign's rows, once, at creation):
    # psycopg reports no rowcount for INSERT … SELECT. The counts move with the rows.
    created = int(
        db.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.campaign_id == campaign.id)
        )
        or 0
    )
    shift(db, campaign.id, {DeliveryStatus.queued: created})
    return created


def snapshot_recipients(db: Session, campaign: Campaign) -> int:
    """Create one queued delivery per active subscriber (optionally with the campaign's tag)."""
    audience = _delivery_rows(campaign)
    if campaign.tag:
        audience = audience.where(
            Subscriber.id.in_(
                select(subscriber_tags.c.subscriber_id)
                .join(Tag, Tag.id == subscriber_tags.c.tag_id)
                .where(Tag.name == campaign.tag)
            )
        )
    return _insert_deliveries(db, campaign, audience)


def snapshot_confirmed(db: Session, campaign: Campaign) -> int:
    """Create one queued delivery per active subscriber with a confirmed seat for the
    campaign's session (a reminder's audience): "maybe", "no" and the waitlist are left out."""
    return _insert_deliveries(
        db, campaign, _delivery_rows(campaign).where(_confirmed(campaign.session_id))
    )


def count_confirmed(db: Session, session_id: int) -> int:
    """How many active subscribers hold a confirmed seat: who a reminder would reach now."""
    return int(
        db.scalar(
            select(func.count()).select_from(Subscriber).where(_eligible(), _confirmed(session_id))
        )
        or 0
    )
