"""Campaign tasks. Each takes ids only, opens its own database session, calls one service."""

from __future__ import annotations

import logging
from datetime import timedelta

from newsletter.campaigns import repo, service
from newsletter.campaigns.sending import send_batch
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError
from tasks.celery_app import app
from tasks.dispatch import enqueue

log = logging.getLogger(__name__)

# Parallel batch chains per campaign: enough to keep two worker processes busy.
CHAINS = 4
# How often a chain with nothing to claim looks again while rows are in other hands.
POLL_SECONDS = 2.0


@app.task(name="campaigns.start", acks_late=True)
def start_campaign(campaign_id: int) -> None:
    """Protocol: marks the campaign ``sending`` (idempotent) and commits, then enqueues
    ``CHAINS`` batch tasks. Running it twice only adds chains; rows decide who is mailed,
    and a finished or cancelled campaign is left alone."""
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            service.start_campaign(session, campaign_id)
    except InvalidStateError as exc:
        log.info("%s", exc)
        return
    for _ in range(CHAINS):
        enqueue(send_campaign_batch, campaign_id)


@app.task(name="campaigns.batch", acks_late=True)
def send_campaign_batch(campaign_id: int) -> None:
    """Protocol: claims one batch of due, queued deliveries (→ inflight), sends them, marks
    them sent / failed / queued-with-back-off, then re-enqueues itself at once while rows are
    due and the campaign is ``sending``. With nothing to claim it re-queues rows whose worker
    died, and looks again when the next back-off ends or, while other workers hold rows, every
    ``POLL_SECONDS``; with nothing queued or in flight it marks the campaign finished. A
    redelivered copy of this task is harmless: rows already sent are never claimed again."""
    settings = get_settings()
    result = send_batch(settings, campaign_id)
    if result.stopped_because:
        return  # paused, cancelled or gone: the chain ends here; resume starts new chains
    if result.more or result.claimed:
        enqueue(send_campaign_batch, campaign_id)
        return
    with session_scope(settings.database_url) as session:
        repo.requeue_stale(
            session, campaign_id, older_than=timedelta(seconds=settings.inflight_timeout)
        )
        left = repo.pending(session, campaign_id)
        if not left.queued and not left.inflight:
            if repo.finish_if_done(session, campaign_id):
                log.info("campaign %s finished", campaign_id)
            return
    now = utcnow()
    waits = []
    if left.next_due is not None:
        waits.append(max((left.next_due - now).total_seconds(), 0.0))
    elif left.queued:
        waits.append(0.0)
    if left.inflight:
        waits.append(POLL_SECONDS)
    enqueue(send_campaign_batch, campaign_id, countdown=min(waits) + 0.05)


@app.task(name="campaigns.sweep", acks_late=True)
def sweep() -> None:
    """Protocol (run by Celery beat): starts scheduled campaigns whose time has come, and
    restarts sending campaigns that reported nothing for twice the in-flight timeout — their
    batch tasks were lost (a broker restart without persistence) — after re-queueing rows
    whose worker died. Idempotent: extra chains only compete for the same rows."""
    settings = get_settings()
    quiet = timedelta(seconds=2 * settings.inflight_timeout)
    with session_scope(settings.database_url) as session:
        due = repo.due_scheduled(session)
        stalled = repo.stalled_campaigns(session, quiet_for=quiet)
        for campaign_id in stalled:
            repo.requeue_stale(
                session, campaign_id, older_than=timedelta(seconds=settings.inflight_timeout)
            )
    for campaign_id in due:
        enqueue(start_campaign, campaign_id)
    for campaign_id in stalled:
        log.warning(
            "campaign %s made no progress for %s: restarting its batches", campaign_id, quiet
        )
        enqueue(send_campaign_batch, campaign_id)
