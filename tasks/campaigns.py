"""Campaign tasks. Each takes ids only, opens its own database session, calls one service.

They run on ``newsletter worker`` processes with a broker and on the embedded worker without
one (:mod:`tasks.embedded`), the same code either way. A database outage in any of them is
logged in one line and the task runs again a little later (:mod:`tasks.faults`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from newsletter.campaigns import repo, service, sweep_repo
from newsletter.campaigns.heartbeat import dead_after, give_back_orphans
from newsletter.campaigns.sending import REPORT_SECONDS, send_batch
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError
from tasks.celery_app import app
from tasks.dispatch import enqueue, probes_forever
from tasks.faults import survives_database_outages

log = logging.getLogger(__name__)

# Parallel batch chains per campaign: enough to keep two worker processes busy.
CHAINS = 4
# How often a chain with nothing to claim looks again while rows are in other hands.
POLL_SECONDS = 2.0
# Heartbeats of workers gone this long are deleted (every worker start adds one).
FORGET_WORKERS_AFTER = timedelta(days=1)


@app.task(name="campaigns.start", acks_late=True)
@survives_database_outages("campaigns.start")
def start_campaign(campaign_id: int) -> None:
    """Protocol: marks the campaign ``sending`` (idempotent) and commits, then enqueues
    ``CHAINS`` batch tasks. Running it twice only adds chains; rows decide who is mailed,
    and a finished or cancelled campaign is left alone."""
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as db:
            service.start_campaign(db, campaign_id)
    except InvalidStateError as exc:
        log.info("%s", exc)
        return
    _start_chains(campaign_id)


def _start_chains(campaign_id: int) -> None:
    for _ in range(CHAINS):
        enqueue(send_campaign_batch, campaign_id)


@app.task(name="campaigns.batch", acks_late=True)
@survives_database_outages("campaigns.batch")
def send_campaign_batch(campaign_id: int) -> None:
    """Protocol: claims one batch of due, queued deliveries (→ inflight), sends them, marks
    them sent / failed / queued-with-back-off, then re-enqueues itself at once while rows are
    due and the campaign is ``sending``. With nothing to claim it re-queues rows whose worker
    died, and looks again when the next back-off ends or, while other workers hold rows, every
    ``POLL_SECONDS``; with nothing queued or in flight it marks the campaign finished. When
    the batch found the relay down, the chain ends and one probe is scheduled
    (:func:`probe_relay`). A redelivered copy of this task is harmless: rows already sent are
    never claimed again."""
    settings = get_settings()
    # A command's own embedded worker ends with the command: it stops probing after the table.
    result = send_batch(settings, campaign_id, probe_forever=probes_forever())
    if result.probe_at is not None:
        wait = max((result.probe_at - utcnow()).total_seconds(), 0.0)
        enqueue(probe_relay, campaign_id, countdown=wait + 0.05)
    if result.stopped_because:
        return  # paused, cancelled, waiting or gone: resume or the probe starts new chains
    if result.more or result.claimed:
        enqueue(send_campaign_batch, campaign_id)
        return
    give_back_orphans(settings, campaign_id)
    with session_scope(settings.database_url) as db:
        left = repo.pending(db, campaign_id)
        if not left.queued and not left.inflight:
            if repo.finish_if_done(db, campaign_id):
                log.info("campaign %s finished", campaign_id)
            return
    now = utcnow()
    waits = []
    if left.next_due is not None:
        waits.append(max((left.next_due - now).total_seconds(), 0.0))
    elif left.queued:
        waits.append(0.0)
    if left.inflight:
        waits.append(min(POLL_SECONDS, settings.heartbeat_interval))
    enqueue(send_campaign_batch, campaign_id, countdown=min(waits) + 0.05)


@app.task(name="campaigns.probe_relay", acks_late=True)
@survives_database_outages("campaigns.probe_relay")
def probe_relay(campaign_id: int) -> None:
    """Protocol: if the campaign still waits for the relay and its probe is due, marks it
    ``sending`` and starts ``CHAINS`` batch chains: their first batch is the probe (the relay
    down again → waiting, one back-off step further). A paused or cancelled campaign, or a
    probe that is not due (an early copy), is left alone; beat's sweep runs due probes whose
    task was lost."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        due = service.probe_relay(db, campaign_id)
    if due:
        log.info("campaign %s: probing the relay", campaign_id)
        _start_chains(campaign_id)


@app.task(name="campaigns.sweep", acks_late=True)
@survives_database_outages("campaigns.sweep", countdown=5.0)
def sweep() -> None:
    """Protocol (run by Celery beat): gives back rows whose worker's heartbeat stopped;
    starts scheduled campaigns whose time has come; runs due relay probes; restarts sending
    campaigns with rows due and no report for a few heartbeats — their batch tasks were lost
    (a killed worker held them, a broker restart without persistence). Idempotent: extra
    chains only compete for the same rows."""
    settings = get_settings()
    quiet = dead_after(settings) + timedelta(seconds=2 * REPORT_SECONDS)
    reclaimed = give_back_orphans(settings)
    if reclaimed:
        log.warning("gave back %d deliveries held by workers that stopped", reclaimed)
    with session_scope(settings.database_url) as db:
        due = sweep_repo.due_scheduled(db)
        probes = sweep_repo.relay_probes_due(db)
        stalled = sweep_repo.stalled_campaigns(db, quiet_for=quiet)
        sweep_repo.forget_old_heartbeats(db, older_than=FORGET_WORKERS_AFTER)
    for campaign_id in due:
        enqueue(start_campaign, campaign_id)
    for campaign_id in probes:
        enqueue(probe_relay, campaign_id)
    for campaign_id in stalled:
        log.warning(
            "campaign %s has rows due and made no progress for %s: restarting its batches",
            campaign_id,
            quiet,
        )
        enqueue(send_campaign_batch, campaign_id)
