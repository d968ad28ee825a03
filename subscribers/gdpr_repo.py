"""The SQL of the GDPR export and erasure (:mod:`subscribers.gdpr`), each query's why beside it.

Reads and writes of one person's rows: deliveries, rsvps and subscriber_mails through their
``subscriber_id`` indexes; rsvp_events and inbound_events (by id *or* address) are scanned,
as neither has an index that serves "one person": a request made by hand now and then does
not justify an index that every answer and every bounce would have to maintain.
Nothing here commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, Delivery
from newsletter.inbound.models import InboundEvent
from newsletter.rsvp.models import Rsvp, RsvpEvent
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber, SubscriberMail, SubscriberMailKind, subscriber_tags

# --- reading (export) --------------------------------------------------------------------------


def last_export_asked(db: Session, subscriber_id: int, since: datetime) -> datetime | None:
    """When this person last asked for their data, if that was after ``since``: the outbox
    rows are the count (sent, waiting or given up), so the limit survives a restart."""
    return db.scalar(
        select(func.max(SubscriberMail.created_at)).where(
            SubscriberMail.subscriber_id == subscriber_id,
            SubscriberMail.kind == SubscriberMailKind.export.value,
            SubscriberMail.created_at >= since,
        )
    )


def deliveries_of(db: Session, subscriber_id: int) -> list[Row[Any]]:
    """The person's deliveries with their campaign and session, oldest first."""
    return list(
        db.execute(
            select(
                Delivery.id,
                Delivery.campaign_id,
                Campaign.kind,
                Campaign.subject,
                SalonSession.number,
                Delivery.status,
                Delivery.attempts,
                Delivery.sent_at,
                Delivery.next_attempt_at,
                Delivery.last_error,
            )
            .join(Campaign, Campaign.id == Delivery.campaign_id)
            .join(SalonSession, SalonSession.id == Campaign.session_id)
            .where(Delivery.subscriber_id == subscriber_id)
            .order_by(Delivery.id)
        )
    )


def rsvps_of(db: Session, subscriber_id: int) -> list[Row[Any]]:
    """The person's current answers, by session number."""
    return list(
        db.execute(
            select(
                SalonSession.number,
                SalonSession.title,
                Rsvp.answer,
                Rsvp.guests,
                Rsvp.waitlisted,
                Rsvp.answered_at,
                Rsvp.updated_at,
            )
            .join(SalonSession, SalonSession.id == Rsvp.session_id)
            .where(Rsvp.subscriber_id == subscriber_id)
            .order_by(SalonSession.number)
        )
    )


def rsvp_history_of(db: Session, subscriber_id: int) -> list[Row[Any]]:
    """Every answer the person ever gave (or that was given up for them), in order."""
    return list(
        db.execute(
            select(
                SalonSession.number,
                RsvpEvent.answer,
                RsvpEvent.waitlisted,
                RsvpEvent.at,
                RsvpEvent.notice,
                RsvpEvent.notice_due_at,
                RsvpEvent.notice_error,
            )
            .join(SalonSession, SalonSession.id == RsvpEvent.session_id)
            .where(RsvpEvent.subscriber_id == subscriber_id)
            .order_by(RsvpEvent.at, RsvpEvent.id)
        )
    )


def subscription_mails_of(db: Session, subscriber_id: int) -> list[SubscriberMail]:
    """The confirmation, welcome and export mails queued for the person."""
    return list(
        db.scalars(
            select(SubscriberMail)
            .where(SubscriberMail.subscriber_id == subscriber_id)
            .order_by(SubscriberMail.id)
        )
    )


def _inbound_of(subscriber_id: int, email: str | None) -> Any:
    """Events matched to the person, and unmatched ones that name their address (a bounce
    whose delivery was pruned still carries it)."""
    mine = InboundEvent.subscriber_id == subscriber_id
    if not email:
        return mine
    return or_(mine, func.lower(InboundEvent.address) == email)


def inbound_events_of(db: Session, subscriber_id: int, email: str | None) -> list[InboundEvent]:
    """The returned mail about the person, oldest first."""
    return list(
        db.scalars(
            select(InboundEvent)
            .where(_inbound_of(subscriber_id, email))
            .order_by(InboundEvent.received_at, InboundEvent.id)
        )
    )


# --- erasing -----------------------------------------------------------------------------------


def clear_delivery_errors(db: Session, subscriber_id: int) -> None:
    """A relay's refusal often quotes the address (``550 5.1.1 <ann@…>: no such user``):
    the rows stay (their ids are Message-IDs, the campaign's counts are on the campaign),
    the text goes."""
    db.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.last_error.is_not(None))
        .values(last_error=None)
        .execution_options(synchronize_session=False)
    )


def clear_history_notes(db: Session, subscriber_id: int, note: str) -> None:
    """The answer history stays (the session's chart replays it), without the texts that may
    quote the person (a relay's refusal of a notice) and without notices still to send:
    those are given up with ``note``."""
    events = RsvpEvent.subscriber_id == subscriber_id
    db.execute(
        update(RsvpEvent)
        .where(events, RsvpEvent.notice_error.is_not(None))
        .values(notice_error=None)
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(RsvpEvent)
        .where(events, RsvpEvent.notice_due_at.is_not(None))
        .values(notice_due_at=None, notice_error=note)
        .execution_options(synchronize_session=False)
    )


def delete_subscription_mails(db: Session, subscriber_id: int) -> None:
    """The confirmation, welcome and export mails: their rows only say what was sent to an
    address that is no more; nothing counts them once the person is gone."""
    db.execute(delete(SubscriberMail).where(SubscriberMail.subscriber_id == subscriber_id))


def delete_tag_links(db: Session, subscriber_id: int) -> None:
    """The person's topics and tags (the tags themselves stay: they are the club's)."""
    db.execute(delete(subscriber_tags).where(subscriber_tags.c.subscriber_id == subscriber_id))


def anonymise_inbound(db: Session, subscriber_id: int, email: str) -> None:
    """Returned mail about the person loses the raw message, the address and the diagnostic
    (which quotes it); the row stays with its kind, time, status code and fingerprint, so
    the same bounce fed again is still recognised and not counted twice."""
    db.execute(
        update(InboundEvent)
        .where(_inbound_of(subscriber_id, email))
        .values(address=None, diagnostic=None, raw=None, raw_truncated=False)
        .execution_options(synchronize_session=False)
    )


def anonymise_subscriber(
    db: Session, subscriber_id: int, *, placeholder: str, locale: str, now: datetime
) -> None:
    """The row stays (deliveries, answers and their history point at it), holding nothing
    about the person: a placeholder address that cannot be mailed nor typed in (``.invalid``,
    RFC 2606), no name, the default locale, no dates of their own beyond when it was made."""
    db.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(
            email=placeholder,
            name="",
            locale=locale,
            status="erased",
            status_reason="erased on request (GDPR)",
            status_changed_at=now,
            source=None,
            confirmed_at=None,
            welcomed_at=None,
            paused_until=None,
            erased_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    db.expire_all()
