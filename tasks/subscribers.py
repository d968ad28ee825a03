"""Subscriber tasks: sending the subscription-mail outbox, deleting expired sign-ups."""

from __future__ import annotations

import logging

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.outages import is_unavailable
from subscribers import mail_outbox
from subscribers.signup import expire_pending
from tasks.celery_app import app
from tasks.dispatch import enqueue
from tasks.faults import survives_database_outages
from tasks.outbox_delivery import deliver

log = logging.getLogger(__name__)


def send_soon() -> None:
    """After a commit that queued subscription mails: have a worker send them now.

    Never raises for a broker that is down: the rows are committed, and beat's
    ``subscriber-mails`` entry sends them later, so the person's request still succeeds.
    """
    try:
        enqueue(send_subscriber_mails)
    except Exception as error:
        if not is_unavailable(error):
            log.exception("could not ask for the subscription mails to be sent")
            return
        log.warning(
            "could not ask for the subscription mails to be sent (%s); they wait in the outbox",
            type(error).__name__,
        )


@app.task(name="subscribers.mails", acks_late=True)
@survives_database_outages("subscribers.mails")
def send_subscriber_mails() -> None:
    """Protocol: sends every due subscription mail in batches over one connection each,
    recording after each batch what was sent, what waits for a retry and what was given up.
    Idempotent: concurrent senders lease different rows."""
    settings = get_settings()
    while True:
        with session_scope(settings.database_url) as db:
            batch = mail_outbox.claim(db, settings)
        if not batch:
            return
        outcomes = deliver(batch, settings, what="subscription mail")
        with session_scope(settings.database_url) as db:
            mail_outbox.record(db, outcomes)


@app.task(name="subscribers.expire_pending", acks_late=True)
@survives_database_outages("subscribers.expire_pending")
def expire_pending_signups() -> None:
    """Delete sign-ups nobody confirmed within ``NEWSLETTER_PENDING_DAYS`` (run by beat)."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        deleted = expire_pending(db, settings)
    if deleted:
        log.info("deleted %s sign-ups that were not confirmed in time", deleted)
