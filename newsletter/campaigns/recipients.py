"""The SQL that decides who a campaign mails: one queued delivery row per recipient.

Part of the campaigns repository (split from ``repo.py`` to keep each module small). Every
audience is built from the same eligibility rule, :func:`mailable`, so an invitation and a
reminder can never disagree about who may be mailed at all; and the send-time check of queued
deliveries (``repo.claim_batch``, ``repo.inactive_subscribers``) is that same rule, so a
person who unsubscribes, pauses or drops a campaign's topic after the campaign was created
is skipped when the worker claims the row (the preference page: "changes apply to deliveries
already queued").
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from newsletter.campaigns.counts_repo import shift
from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.db import utcnow
from newsletter.rsvp.models import Answer, Rsvp
from subscribers.models import Subscriber, SubscriberStatus, Tag, subscriber_tags


def mailable(now: datetime, tag: str | None = None) -> ColumnElement[bool]:
    """Who a campaign may mail at ``now``: the one rule, at creation and at send time.

    * active (not pending, unsubscribed, bounced, suppressed or erased);
    * not paused: no ``paused_until``, or that moment has come (a pause stops every
      campaign, whatever its topic, until the date the person chose);
    * for a campaign sent to a tag: still having that tag. A topic the person removed on the
      preference page stops the queued deliveries of campaigns for that topic too: they
      said they no longer want that kind of mail, and the campaign was chosen by it.
    """
    rule = and_(
        Subscriber.status == SubscriberStatus.active,
        or_(Subscriber.paused_until.is_(None), Subscriber.paused_until <= now),
    )
    if tag:
        rule = and_(rule, Subscriber.id.in_(_tagged(tag)))
    return rule


def _tagged(tag: str) -> Select[tuple[int]]:
    """The ids of the subscribers holding ``tag`` (a semi-join: once each, whatever the tags)."""
    return (
        select(subscriber_tags.c.subscriber_id)
        .join(Tag, Tag.id == subscriber_tags.c.tag_id)
        .where(Tag.name == tag)
    )


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


def _delivery_rows(campaign: Campaign, tag: str | None = None) -> Select[int, int, str, int]:
    """``(campaign_id, subscriber_id, status, attempts)`` for every mailable subscriber."""
    return select(
        literal(campaign.id), Subscriber.id, literal(DeliveryStatus.queued.value), literal(0)
    ).where(mailable(utcnow(), tag))


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
    """Create one queued delivery per mailable subscriber (with the campaign's tag, if any)."""
    return _insert_deliveries(db, campaign, _delivery_rows(campaign, campaign.tag))


def snapshot_confirmed(db: Session, campaign: Campaign) -> int:
    """Create one queued delivery per mailable subscriber with a confirmed seat for the
    campaign's session (a reminder's audience): "maybe", "no" and the waitlist are left out."""
    return _insert_deliveries(
        db, campaign, _delivery_rows(campaign).where(_confirmed(campaign.session_id))
    )


def count_confirmed(db: Session, session_id: int) -> int:
    """How many mailable subscribers hold a confirmed seat: who a reminder would reach now."""
    return int(
        db.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(mailable(utcnow()), _confirmed(session_id))
        )
        or 0
    )
