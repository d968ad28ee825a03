"""Personal data: everything held about one person (export), and removing it (erasure).

One export, :func:`export_subscriber`, serves ``newsletter subscribers export``, the API
(``POST /api/subscribers/export``) and the "send me my data" mail (:func:`build_export_mail`,
which the subscription-mail outbox calls for kind ``export``). It holds the profile and its
status history fields, tags and topics, every delivery (campaign, status, times, Message-ID),
the answers and their whole history, the subscription mails, and the returned mail about
the person with its raw message: a bounce or complaint about their address is data about
them, and the stored raw message is already bounded (64 KB, ``raw_truncated`` says when
cut), so it is included whole, decoded as text.

Erasure, :func:`erase_subscriber`, removes the personal data and keeps what the club's
figures are made of. Table by table, delete or anonymise, and why:

* ``subscribers``: **anonymised**, not deleted. Deliveries, answers and the answer history
  point at the row (a delete would have to take them too, changing campaign and session
  figures). It keeps no address (a unique ``.invalid`` placeholder), no name, the default
  locale, no dates of its own but ``created_at``; status ``erased`` and ``erased_at``.
* ``erased_addresses``: the keyed hash of the address (:mod:`subscribers.erased`), so an
  import does not bring the person back; only signing up again (and confirming) does.
* ``subscriber_tags``: **deleted** (topics are preferences, and nothing counts them).
* ``deliveries``: **kept** (their ids are the Message-IDs a later bounce is matched by, and
  the campaign's counts move with their statuses); ``last_error`` is cleared, since a relay's
  refusal quotes the address. Queued ones are skipped at claim (an erased person is not
  mailable).
* ``rsvps`` and ``rsvp_events``: **kept** (a session's answer counts and its chart are made
  of them; tied to an anonymous row they say only "someone answered yes at 10:02"). Answers
  for sessions still ahead are given up first, as when anyone leaves (freeing seats for the
  waitlist); notice texts are cleared and notices not yet sent are given up.
* ``subscriber_mails``: **deleted** (what was mailed to an address that is no more; no
  figure counts them).
* ``inbound_events``: **anonymised** (raw message, address and diagnostic cleared; kind,
  time, status code and fingerprint kept: the campaign's bounce and complaint figures, and
  the same bounce fed twice must still count once). Events not matched to the person but
  naming their address are anonymised too. Raw messages of *other* events are not searched
  for the address (a binary scan of every stored bounce), so an unmatched bounce that quotes
  it only in its body stays until its own row is removed.

The CLI asks before erasing (``--yes`` skips the question); the API erases at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from newsletter.config import Settings, get_settings
from newsletter.db import utcnow
from newsletter.errors import NotFoundError
from newsletter.installation import installation_token
from newsletter.mail.message import OutgoingMessage, format_message_id
from newsletter.rsvp.service import withdraw_answers
from subscribers import gdpr_repo, repo
from subscribers.erased import record_erasure
from subscribers.gdpr_mail import export_mail
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.topics import offered_topics
from subscribers.validation import DEFAULT_LOCALE, normalise_email

EXPORT_FORMAT = "salon-newsletter/personal-data"
EXPORT_VERSION = 1
ERASED_NOTE = "not sent: subscriber erased"


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def find_by_email(db: Session, email: str) -> Subscriber:
    """The subscriber with this address (normalised first); NotFoundError otherwise. An
    erased person is not found: their address is no longer held."""
    address = normalise_email(email)
    person = repo.get_by_email(db, address)
    if person is None:
        raise NotFoundError(f"{address} is not on the subscriber list")
    return person


def export_subscriber(
    db: Session, subscriber: Subscriber, *, settings: Settings | None = None
) -> dict[str, Any]:
    """Everything held about ``subscriber``, as JSON-ready data (strings, numbers, lists).

    ``settings`` (default: the process's) gives the mail domain of the Message-IDs and the
    offered topics.
    """
    settings = settings or get_settings()
    erased = subscriber.status == SubscriberStatus.erased
    email = None if erased else subscriber.email
    tags = sorted(tag.name for tag in subscriber.tags)
    offered = offered_topics(db, settings)
    installation = installation_token(db)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": utcnow().isoformat(),
        "subscriber": {
            "id": subscriber.id,
            "email": email,
            "name": subscriber.name,
            "locale": subscriber.locale,
            "status": subscriber.status,
            "status_reason": subscriber.status_reason,
            "status_changed_at": _when(subscriber.status_changed_at),
            "created_at": _when(subscriber.created_at),
            "source": subscriber.source,
            "confirmed_at": _when(subscriber.confirmed_at),
            "welcomed_at": _when(subscriber.welcomed_at),
            "paused_until": _when(subscriber.paused_until),
            "erased_at": _when(subscriber.erased_at),
        },
        "tags": tags,
        "topics": [name for name in offered if name in tags],
        "deliveries": [
            {
                "delivery_id": row.id,
                "campaign_id": row.campaign_id,
                "campaign_kind": row.kind,
                "subject": row.subject,
                "session_number": row.number,
                "status": row.status,
                "attempts": row.attempts,
                "sent_at": _when(row.sent_at),
                "next_attempt_at": _when(row.next_attempt_at),
                "last_error": row.last_error,
                "message_id": format_message_id(row.id, settings.sender_domain, installation),
            }
            for row in gdpr_repo.deliveries_of(db, subscriber.id)
        ],
        "rsvps": [
            {
                "session_number": row.number,
                "session_title": row.title,
                "answer": row.answer,
                "guests": row.guests,
                "waitlisted": row.waitlisted,
                "answered_at": _when(row.answered_at),
                "updated_at": _when(row.updated_at),
            }
            for row in gdpr_repo.rsvps_of(db, subscriber.id)
        ],
        "rsvp_history": [
            {
                "session_number": row.number,
                "answer": row.answer,
                "waitlisted": row.waitlisted,
                "at": _when(row.at),
                "notice": row.notice,
                "notice_pending": row.notice_due_at is not None,
                "note": row.notice_error,
            }
            for row in gdpr_repo.rsvp_history_of(db, subscriber.id)
        ],
        "subscription_mails": [
            {
                "kind": mail.kind,
                "created_at": _when(mail.created_at),
                "due_at": _when(mail.due_at),
                "sent_at": _when(mail.sent_at),
                "attempts": mail.attempts,
                "error": mail.error,
            }
            for mail in gdpr_repo.subscription_mails_of(db, subscriber.id)
        ],
        "inbound_events": [
            {
                "kind": event.kind,
                "source": event.source,
                "received_at": _when(event.received_at),
                "campaign_id": event.campaign_id,
                "delivery_id": event.delivery_id,
                "matched_by": event.matched_by,
                "address": event.address,
                "status_code": event.status_code,
                "diagnostic": event.diagnostic,
                "raw": event.raw.decode("utf-8", "replace") if event.raw is not None else None,
                "raw_truncated": event.raw_truncated,
            }
            for event in gdpr_repo.inbound_events_of(db, subscriber.id, email)
        ],
    }


def export_json(db: Session, subscriber: Subscriber, *, settings: Settings | None = None) -> str:
    """:func:`export_subscriber` as indented UTF-8 JSON (Chinese kept readable)."""
    data = export_subscriber(db, subscriber, settings=settings)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


@dataclass(frozen=True)
class Erased:
    """What :func:`erase_subscriber` did."""

    subscriber_id: int
    answers_given_up: int  # answers for sessions ahead turned into "no"


def erase_subscriber(db: Session, settings: Settings, subscriber: Subscriber) -> Erased:
    """Remove the person's data everywhere, keep the anonymous figures (module docstring);
    idempotent. The caller commits."""
    person_id = subscriber.id
    if subscriber.status == SubscriberStatus.erased:
        return Erased(person_id, 0)
    email = subscriber.email
    now = utcnow()
    record_erasure(db, email, settings.secret_keys)
    gdpr_repo.anonymise_subscriber(
        db,
        person_id,
        placeholder=f"erased-{person_id}@erased.invalid",
        locale=DEFAULT_LOCALE,
        now=now,
    )
    # After the status change, in the same transaction, as withdraw_answers asks.
    withdrawn = withdraw_answers(db, person_id, SubscriberStatus.erased.value, now=now)
    gdpr_repo.clear_history_notes(db, person_id, ERASED_NOTE)
    gdpr_repo.clear_delivery_errors(db, person_id)
    gdpr_repo.delete_subscription_mails(db, person_id)
    gdpr_repo.delete_tag_links(db, person_id)
    gdpr_repo.anonymise_inbound(db, person_id, email)
    return Erased(person_id, len(withdrawn.sessions))


def build_export_mail(db: Session, settings: Settings, subscriber: Subscriber) -> OutgoingMessage:
    """The "send me my data" mail: a short note and the export attached as JSON (never
    shown on a page). Called by the subscription-mail outbox for kind ``export``."""
    return export_mail(db, settings, subscriber, export_json(db, subscriber, settings=settings))
