"""The subscription-mail outbox: confirmation, welcome and data-export mails to one person.

Whoever asks for a mail calls :func:`queue` in the transaction of the change that calls for
it (a sign-up, a confirmation, a "send me my data" press), so the two commit together; then,
after the commit, ``tasks.subscribers.send_soon()`` asks a worker to send it, and beat's
``subscriber-mails`` entry sends whatever a lost request or a crash left. The sender claims due
rows with a lease (:func:`claim`), builds each mail from the rows as they are at that moment,
sends it through the configured transport and records sent / retry / given up
(:func:`record`), with the RSVP notice outbox's back-off and outcome types
(:mod:`newsletter.rsvp.outbox`).

Who gets which mail, checked when the row is claimed (so a person who left meanwhile gets
nothing, and the row says why):

* confirm: pending or unsubscribed people (an unsubscribed person asked to come back);
  never an active one (nothing to confirm), never a bounced, suppressed or erased address;
* welcome: active people;
* export: anyone whose address is still held (every status but erased).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.mail.message import OutgoingMessage
from newsletter.rsvp.outbox import Outcome, PreparedNotice, after_failure
from subscribers import mail_outbox_repo
from subscribers.models import Subscriber, SubscriberMailKind, SubscriberStatus
from subscribers.subscription_mails import build_confirm_mail, build_welcome_mail

__all__ = ["BATCH", "Outcome", "PreparedNotice", "after_failure", "claim", "queue", "record"]

BATCH = 100
log = logging.getLogger(__name__)

_MAY_RECEIVE: dict[SubscriberMailKind, set[SubscriberStatus]] = {
    SubscriberMailKind.confirm: {SubscriberStatus.pending, SubscriberStatus.unsubscribed},
    SubscriberMailKind.welcome: {SubscriberStatus.active},
    SubscriberMailKind.export: {s for s in SubscriberStatus if s is not SubscriberStatus.erased},
}


def queue(db: Session, subscriber_id: int, kind: SubscriberMailKind) -> None:
    """Queue one mail of ``kind`` to this subscriber, due now; the caller commits, then calls
    ``tasks.subscribers.send_soon()`` (beat sends it later otherwise)."""
    mail_outbox_repo.add(db, subscriber_id, kind, utcnow())


def _build(
    db: Session, settings: Settings, person: Subscriber, kind: SubscriberMailKind, mail_id: int
) -> OutgoingMessage:
    """The finished mail of one row: one builder per kind."""
    if kind is SubscriberMailKind.confirm:
        return build_confirm_mail(db, settings, person, mail_id)
    if kind is SubscriberMailKind.welcome:
        return build_welcome_mail(db, settings, person)
    # Imported here: the export is built by the GDPR module, which depends on far more of
    # the project than the sign-up mails do.
    # (The ignore is for a tree where that module is not written yet.)
    from subscribers.gdpr import build_export_mail  # type: ignore[import-not-found,unused-ignore]

    export: OutgoingMessage = build_export_mail(db, settings, person)
    return export


def claim(db: Session, settings: Settings) -> list[PreparedNotice]:
    """Lease a batch of due rows and build their mails; the caller commits the lease."""
    now = utcnow()
    due = mail_outbox_repo.claim_due(
        db,
        now=now,
        lease_until=now + timedelta(seconds=settings.inflight_timeout),
        limit=BATCH,
    )
    prepared = []
    for mail in due:
        # Read in the claiming transaction, after the lease: a person who left before this
        # moment (a bounce, an erasure) is never mailed, however long the row waited.
        person = db.get(Subscriber, mail.subscriber_id, populate_existing=True)
        if person is None:
            prepared.append(
                PreparedNotice([mail.id], mail.subscriber_id, mail.attempts, None, "not sent: gone")
            )
            continue
        if SubscriberStatus(person.status) not in _MAY_RECEIVE[mail.kind]:
            reason = f"not sent: subscriber {person.status}"
            prepared.append(PreparedNotice([mail.id], person.id, mail.attempts, None, reason))
            continue
        try:
            message = _build(db, settings, person, mail.kind, mail.id)
        except Exception as exc:  # a broken template must not hold up every mail behind it
            log.exception("subscription mail %s (%s) could not be built", mail.id, mail.kind)
            failed = f"not sent: the mail could not be built ({type(exc).__name__})"
            prepared.append(PreparedNotice([mail.id], person.id, mail.attempts, None, failed))
            continue
        prepared.append(PreparedNotice([mail.id], person.id, mail.attempts, message))
    return prepared


def record(db: Session, outcomes: list[Outcome]) -> None:
    """Store the outcomes of a batch; the caller commits."""
    now = utcnow()
    for outcome in outcomes:
        mail_outbox_repo.settle(
            db, outcome.ids, now=now, error=outcome.error, retry_at=outcome.retry_at
        )
