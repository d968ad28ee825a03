"""Joining the list by oneself: sign-up, the double opt-in confirmation, expiry.

The rules (SPEC "Joining and leaving"), in one place:

* **A sign-up never changes who is mailed.** A new address is stored ``pending`` (source
  "signup") and sent a confirmation mail; nothing else is ever sent to a pending person
  (campaigns and the send-time check take active people only).
* **What each address gets** (the page the person sees is the same for all of them, see
  ``newsletter.web.subscribe``): new or pending: a confirmation mail; unsubscribed: a
  confirmation mail too — they asked to come back, and confirming makes them active again
  (the one way back besides an organizer's explicit resubscribe); active: nothing (they are
  on the list; an active status is never touched); bounced, suppressed: nothing (a sign-up
  never resurrects an address the list was told to stop mailing); an erased address is not
  stored any more, so it is new: signing up again and confirming is the one way back after
  an erasure (:func:`subscribers.erased.forget_erasure`).
* **At most** :data:`MAX_CONFIRMS_PER_DAY` confirmation mails per address in any 24 hours,
  counted from the outbox rows; beyond, the sign-up is accepted silently and nothing is sent.
* **Confirming** (the POST of the page the link opens) makes a pending or unsubscribed
  person active with ``confirmed_at``; the first confirmation of a person ever queues the
  welcome mail (``welcomed_at``), later ones never do.
* **Expiry.** People still pending ``pending_days`` after their last confirmation mail are
  deleted (:func:`expire_pending`, run by beat); their links expire at the same age.

Topics and the name a form sends are stored only while the person is new or pending: a form
anyone can fill in must not change an existing subscriber's profile.

Functions take a Session and never commit; the caller's unit of work does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from subscribers import mail_outbox, mail_outbox_repo, repo
from subscribers.erased import forget_erasure
from subscribers.models import SubscriberMailKind, SubscriberStatus
from subscribers.topics import chosen_topics
from subscribers.validation import DEFAULT_LOCALE, normalise_email, normalise_name

log = logging.getLogger(__name__)

MAX_CONFIRMS_PER_DAY = 3
SOURCE = "signup"
PENDING_REASON = "signed up, not confirmed yet"
CONFIRMED_REASON = "confirmed sign-up"


@dataclass(frozen=True, slots=True)
class SignUp:
    """What a sign-up did (for the caller's log and tests: never shown to the visitor)."""

    subscriber_id: int
    queued: bool  # a confirmation mail was queued
    why: str  # "new", "pending", "unsubscribed", "active", "bounced", …, "limit"


class Confirmed(StrEnum):
    """What pressing the confirm button did."""

    confirmed = "confirmed"  # now active
    already = "already"  # was active already: nothing changed
    refused = "refused"  # bounced, suppressed or erased meanwhile: stays so
    gone = "gone"  # the sign-up expired (deleted) or the link names another mail


def sign_up(
    db: Session, settings: Settings, email: str, name: str | None, topics: list[str]
) -> SignUp:
    """Record a sign-up and queue its confirmation mail when the rules allow (see module).

    ``email`` is validated (``SubscriberDataError`` for an unusable address; the caller shows
    the form again); ``topics`` not offered are ignored.
    """
    address = normalise_email(email)
    clean_name = normalise_name(name)
    now = utcnow()
    existing = repo.get_by_email(db, address)
    created = False
    if existing is None:
        new_id = repo.insert_subscriber(
            db,
            email=address,
            name=clean_name,
            locale=DEFAULT_LOCALE,
            status=SubscriberStatus.pending,
            reason=PENDING_REASON,
            now=now,
        )
        if new_id is not None:
            mail_outbox_repo.set_joined_by(db, new_id, SOURCE)
            subscriber_id, created = new_id, True
        else:  # the same address signed up at this very moment: that row is the person
            raced = repo.get_by_email(db, address)
            assert raced is not None  # the insert found it
            subscriber_id = raced.id
    else:
        subscriber_id = existing.id
    person = mail_outbox_repo.lock_subscriber(db, subscriber_id)
    assert person is not None  # found or inserted in this transaction
    status = SubscriberStatus(person.status)
    if status not in (SubscriberStatus.pending, SubscriberStatus.unsubscribed):
        return SignUp(person.id, queued=False, why=status.value)
    if status is SubscriberStatus.pending:
        if clean_name and not created:
            mail_outbox_repo.set_name(db, person.id, clean_name)
        wanted = chosen_topics(db, settings, topics)
        if wanted:
            ids = repo.ensure_tags(db, wanted)
            repo.link_tags(db, [(person.id, ids[topic]) for topic in wanted])
    sent = mail_outbox_repo.confirms_since(db, person.id, now - timedelta(days=1))
    if sent >= MAX_CONFIRMS_PER_DAY:
        log.info("sign-up of subscriber %s: daily confirmation limit reached", person.id)
        return SignUp(person.id, queued=False, why="limit")
    mail_outbox.queue(db, person.id, SubscriberMailKind.confirm)
    return SignUp(person.id, queued=True, why="new" if created else status.value)


def confirm(db: Session, settings: Settings, subscriber_id: int, mail_id: int) -> Confirmed:
    """The person pressed the button of confirmation mail ``mail_id``: make them active and
    queue their welcome if they never had one (see module). Idempotent."""
    if not mail_outbox_repo.is_confirm_mail_of(db, mail_id, subscriber_id):
        return Confirmed.gone
    person = mail_outbox_repo.lock_subscriber(db, subscriber_id)
    if person is None:
        return Confirmed.gone
    if person.status == SubscriberStatus.active:
        return Confirmed.already
    now = utcnow()
    if not mail_outbox_repo.activate(db, person.id, CONFIRMED_REASON, now):
        return Confirmed.refused
    # Confirmed by the person: an import may include this address again (see erased.py).
    forget_erasure(db, person.email, settings.secret_keys)
    if mail_outbox_repo.claim_welcome(db, person.id, now):
        mail_outbox.queue(db, person.id, SubscriberMailKind.welcome)
    db.expire(person)
    return Confirmed.confirmed


def expire_pending(db: Session, settings: Settings) -> int:
    """Delete sign-ups not confirmed within ``pending_days`` of their last confirmation
    mail; how many."""
    cutoff = utcnow() - timedelta(days=settings.pending_days)
    return mail_outbox_repo.delete_expired_pending(db, cutoff)
