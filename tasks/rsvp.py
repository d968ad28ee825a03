"""RSVP tasks: sending the mails answers trigger, from the notice outbox."""

from __future__ import annotations

import logging
import math
import time

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.rsvp import outbox
from tasks.celery_app import app
from tasks.dispatch import enqueue
from tasks.faults import survives_database_outages
from tasks.outbox_delivery import deliver

log = logging.getLogger(__name__)

# Answers to one session within this many seconds share one sender task.
KICK_DELAY_S = 1.0
_last_kick: dict[int, float] = {}


def would_notify(session_id: int) -> bool:
    """Whether :func:`notify_answers` would do anything now: once per session per second
    (the web app asks first, to skip a thread hop for the rest of a burst)."""
    return time.monotonic() - _last_kick.get(session_id, -math.inf) >= KICK_DELAY_S


def notify_answers(session_id: int) -> None:
    """After an answer with a mail was committed: see that a sender goes through the outbox.

    A burst of answers right after a send would otherwise hand over one task per answer;
    instead each process asks for one sender per session per second, delayed by that
    second, so the sender sees every answer committed before it runs. The same with a broker
    and on the embedded worker. A lost request costs only time: beat's rsvp-notices entry
    sends whatever is still due.
    """
    now = time.monotonic()
    if now - _last_kick.get(session_id, -math.inf) < KICK_DELAY_S:
        return
    _last_kick[session_id] = now
    enqueue(send_rsvp_notices, session_id, countdown=KICK_DELAY_S)


@app.task(name="rsvp.notices", acks_late=True)
@survives_database_outages("rsvp.notices")
def send_rsvp_notices(session_id: int | None = None) -> None:
    """Protocol: sends every due notice (of one session, or all when run by beat) in
    batches over one connection each, recording after each batch what was sent, what waits
    for a retry and what was given up. Idempotent: concurrent senders lease different rows."""
    settings = get_settings()
    while True:
        with session_scope(settings.database_url) as db:
            batch = outbox.claim(db, settings, session_id=session_id)
        if not batch:
            return
        outcomes = deliver(batch, settings, what="rsvp notice")
        with session_scope(settings.database_url) as db:
            outbox.record(db, outcomes)
