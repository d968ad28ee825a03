"""The waitlist's clock, run by beat (``newsletter worker --beat``, or without a broker the
embedded worker of ``newsletter serve``): promoted seats not confirmed in time pass on, and the
organizer is told of seats freed inside a session's promotion cutoff."""

from __future__ import annotations

import logging

from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import DeliveryError
from newsletter.mail.transports import transport_for
from newsletter.rsvp import promotion
from tasks.celery_app import app
from tasks.faults import survives_database_outages
from tasks.rsvp import send_rsvp_notices

log = logging.getLogger(__name__)


@app.task(name="waitlist.tick", acks_late=True)
@survives_database_outages("waitlist.tick", countdown=5.0)
def waitlist_tick() -> None:
    """Protocol (run by Celery beat): lapses every promoted seat whose ``confirm_by`` has
    passed, in one transaction (the next in line is promoted by the usual rules and both
    mails wait in the notice outbox, sent right after), then tells the organizer of seats
    held by a promotion cutoff. Idempotent: a seat lapses once, the organizer is told once per
    freed seat (``sessions.promotion_held_at``), however many beats run."""
    settings = get_settings()
    now = utcnow()
    with session_scope(settings.database_url) as db:
        lapsed = promotion.lapse_due(db, now)
    if lapsed:
        log.info("waitlist: %d promoted seats not confirmed in time passed on", len(lapsed))
        send_rsvp_notices()
    with session_scope(settings.database_url) as db:
        notices = promotion.organizer_notices(db, settings, now)
    if not notices:
        return
    # "Told" is claimed before the mail goes (two beats never both mail), and given back for
    # a mail the relay did not take, so the next beat tries again: the mail is never lost.
    unsent = list(notices)
    try:
        with transport_for(settings) as transport:
            for notice in notices:
                transport.send(notice.mail)
                unsent.remove(notice)
    except DeliveryError as exc:
        log.warning(
            "waitlist: could not tell the organizer of %d held seat(s), retried next beat: %s",
            len(unsent),
            exc,
        )
        with session_scope(settings.database_url) as db:
            for notice in unsent:
                promotion.release_held(db, notice)
