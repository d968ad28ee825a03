"""Campaign tasks. Each takes ids only, opens its own database session, calls one service."""

from __future__ import annotations

import logging

from newsletter.campaigns import repo, service
from newsletter.campaigns.sending import send_batch
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import InvalidStateError
from tasks.celery_app import app
from tasks.dispatch import enqueue

log = logging.getLogger(__name__)

# Parallel batch chains per campaign: enough to keep two worker processes busy.
CHAINS = 4


@app.task(name="campaigns.start", acks_late=True)
def start_campaign(campaign_id: int) -> None:
    """Protocol: marks the campaign ``sending`` (idempotent) and commits, then enqueues
    ``CHAINS`` batch tasks. Running it twice only adds chains; rows decide who is mailed."""
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            service.start_campaign(session, campaign_id)
    except InvalidStateError as exc:
        # Finished or cancelled: a repeated send is a no-op, never a second mailing.
        log.info("%s", exc)
        return
    for _ in range(CHAINS):
        enqueue(send_campaign_batch, campaign_id)


@app.task(name="campaigns.batch", acks_late=True)
def send_campaign_batch(campaign_id: int) -> None:
    """Protocol: claims one batch of queued deliveries (→ inflight), sends them, marks them
    sent/failed/queued, then re-enqueues itself while rows remain and the campaign is
    ``sending``. When a batch finds nothing to claim, it marks the campaign finished if no
    row is queued or in flight. A redelivered copy of this task is harmless: it claims rows
    afresh, and rows already sent are never claimed again."""
    settings = get_settings()
    result = send_batch(settings, campaign_id)
    if result.stopped_because and result.claimed == 0:
        return  # paused, cancelled, finished or gone: the chain ends here
    if result.more and result.stopped_because is None:
        enqueue(send_campaign_batch, campaign_id)
        return
    with session_scope(settings.database_url) as session:
        if repo.finish_if_done(session, campaign_id):
            log.info("campaign %s finished", campaign_id)
        elif result.stopped_because:
            service.halt_campaign(session, campaign_id, result.stopped_because)
