"""Automatic reminders, run by beat (``newsletter worker --beat``, or without a broker the
embedded worker of ``newsletter serve``): the reminders whose moment has come are made and
their sending started. What is made once is a database fact (``campaigns.reminders``), so two
beats, or a beat and a web process, send each reminder once."""

from __future__ import annotations

import logging

from newsletter.campaigns import reminders
from newsletter.config import get_settings
from tasks.campaigns import start_campaign
from tasks.celery_app import app
from tasks.dispatch import enqueue
from tasks.faults import survives_database_outages

log = logging.getLogger(__name__)


@app.task(name="reminders.due", acks_late=True)
@survives_database_outages("reminders.due", countdown=5.0)
def send_due_reminders() -> None:
    """Protocol (run by Celery beat): makes each due reminder campaign in its own transaction
    (a second one for the same session and offset is refused by the database), then enqueues
    its start. A start lost after the commit is not lost for good: the campaign is a draft
    with queued rows, and ``campaign send`` or the dashboard sends it."""
    settings = get_settings()
    started = reminders.make_due(settings.database_url, settings)
    log.debug("reminders: %d started", len(started))
    for campaign_id in started:
        enqueue(start_campaign, campaign_id)
