"""RSVP tasks: the mails an answer triggers."""

from __future__ import annotations

import logging

from celery import Task

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import DeliveryError
from newsletter.mail.transports import transport_from_url
from newsletter.rsvp.notices import NoticeKind, build_rsvp_notice
from tasks.celery_app import app

log = logging.getLogger(__name__)

RETRY_DELAYS = (60, 300, 900, 3600)


@app.task(name="rsvp.notice", bind=True, acks_late=True, max_retries=len(RETRY_DELAYS))
def send_rsvp_notice(self: Task, session_id: int, subscriber_id: int, kind: str) -> None:
    """Protocol: builds the confirmation or promotion mail from the current rows and sends it
    over one connection. A temporary refusal is retried after 1, 5, 15 and 60 minutes (with a
    broker; in-process it is logged), a permanent one is logged. The answer itself was
    committed before this task was enqueued, so a mail problem never loses an answer."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        message = build_rsvp_notice(session, settings, session_id, subscriber_id, NoticeKind(kind))
    if message is None:
        return
    try:
        with transport_from_url(settings.mail_url) as transport:
            transport.send(message)
    except DeliveryError as exc:
        retries = self.request.retries or 0
        if exc.permanent or app.conf.task_always_eager or retries >= len(RETRY_DELAYS):
            log.warning("rsvp notice for subscriber %s not sent: %s", subscriber_id, exc)
            return
        raise self.retry(countdown=RETRY_DELAYS[retries]) from None
