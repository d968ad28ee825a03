"""Sending one batch of a campaign: claim → personalise → send → mark, over one connection.

This is the only module that joins rendering, links, the rate limit and the mail transport;
tasks call it with ids. Outcomes are written every second (and every ``REPORT_EVERY``
messages), together with the worker's heartbeat, a renewed claim on the rows still in hand,
a fresh look at those people's statuses (someone who unsubscribes during a long batch is not
mailed), a look at the campaign's state (pause and cancel take effect within a second) and
the error budget. What counts as an attempt, when a retry is due and why an accepted message
is never failed: :mod:`newsletter.campaigns.outcomes`.

Faults, and what a batch does about them:

* the relay cannot be reached, or answers 421 → the rows in hand go back untouched and the
  campaign waits for the relay, probed on the back-off table (``service.wait_for_relay``);
  the same when the rate limiter (Redis) does not answer;
* one address cannot be sent (the message builder refuses it, or it needs SMTPUTF8 and the
  relay does not offer it) → that delivery fails with the reason, the batch goes on;
* the database goes away → the batch stops sending and keeps trying to write what it knows
  (:func:`outage.patiently`); if it cannot, its rows come back through the heartbeat rule;
* the mail URL or the From address is unusable → the campaign pauses with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.campaigns import repo, service, sweep_repo
from newsletter.campaigns.compiled import CompiledCampaign, build_message, compile_campaign
from newsletter.campaigns.heartbeat import Heartbeat, dead_after, stuck_after
from newsletter.campaigns.models import CampaignStatus
from newsletter.campaigns.outage import patiently
from newsletter.campaigns.outcomes import Failed, Outcomes
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.smtp import HandoverUnconfirmed, RelayUnavailable, SmtpRefused
from newsletter.mail.transports import Transport, transport_from_url
from newsletter.ratelimit import RateLimiter, RateLimiterUnavailable, limiter_for
from subscribers.models import SubscriberStatus

log = logging.getLogger(__name__)

# Outcomes are written at least this often (seconds) and every REPORT_EVERY messages: a
# worker that dies leaves at most a second of messages whose fate is unknown.
REPORT_SECONDS = 1.0
REPORT_EVERY = 100

# Messages per rate-limit request (see the loop in send_batch).
RATE_SLICE = 10

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class BatchResult:
    """What one batch did; ``more`` tells the caller to schedule another batch at once;
    ``probe_at`` when the campaign now waits for the relay, the time of its next probe."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    unconfirmed: int = 0
    given_back: int = 0
    more: bool = False
    stopped_because: str | None = None
    probe_at: datetime | None = None


class _Batch:
    """One claimed batch in the hands of one worker."""

    def __init__(
        self, settings: Settings, campaign_id: int, worker: str, *, probe_forever: bool
    ) -> None:
        self.settings = settings
        self.probe_forever = probe_forever
        self.campaign_id = campaign_id
        self.worker = worker
        self.result = BatchResult()
        self.todo = Outcomes()
        self.inactive: set[int] = set()  # subscribers found not active at a report

    def report(self, still_held: list[repo.ClaimedDelivery]) -> str | None:
        """Write outcomes, renew the claim on ``still_held`` and re-read those people's
        statuses; return why to stop, if so. Waits out a database outage (up to a minute)."""
        stop = patiently(
            lambda: self._write(still_held),
            what=f"campaign {self.campaign_id}",
            log=log,
        )
        todo, result = self.todo, self.result
        result.sent += len(todo.sent)
        result.skipped += len(todo.skipped)
        result.retried += len(todo.deferred)
        result.given_back += len(todo.unanswered)
        for failed in todo.failed:
            if failed.item.maybe_sent:
                result.unconfirmed += 1
            else:
                result.failed += 1
        todo.clear()
        return stop

    def _write(self, still_held: list[repo.ClaimedDelivery]) -> str | None:
        settings, todo = self.settings, self.todo
        with session_scope(settings.database_url) as session:
            sweep_repo.record_heartbeat(session, self.worker)
            todo.write(session, worker=self.worker, delays=settings.retry_delays)
            held = [item.delivery_id for item in still_held]
            repo.touch_claims(session, held, worker=self.worker)
            self.inactive = repo.inactive_subscribers(
                session, [item.subscriber_id for item in still_held]
            )
            streak = repo.record_progress(
                session,
                self.campaign_id,
                succeeded=len(todo.sent),
                refused_temporarily=len(todo.deferred),
            )
            stop, halt = self._verdict(session, streak)
            if halt and stop:
                service.halt_campaign(session, self.campaign_id, stop)
        return stop

    def _verdict(self, session: Session, streak: int) -> tuple[str | None, bool]:
        """Why the batch must stop, and whether it must pause the campaign itself.

        It stops when the campaign left ``sending`` (an organizer paused or cancelled it) or
        when the error budget is spent; in the second case it pauses the campaign.
        """
        settings, todo = self.settings, self.todo
        campaign = repo.get_campaign(session, self.campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            return (campaign.status if campaign else "missing"), False
        if streak >= settings.error_streak:
            last = todo.deferred[-1].reason if todo.deferred else "temporary refusals"
            return f"error budget: the relay refused {streak} messages in a row ({last})", True
        if todo.failed:
            sent, failed = repo.final_counts(session, self.campaign_id)
            done = sent + failed
            if done >= settings.error_budget_min and failed > settings.error_budget * done:
                return (
                    f"error budget: {failed} of {done} deliveries failed for good "
                    f"(more than {settings.error_budget:.0%}; last: {todo.failed[-1].reason})"
                ), True
        return None, False


def send_batch(
    settings: Settings,
    campaign_id: int,
    *,
    transport: Transport | None = None,
    limiter: RateLimiter | None = None,
    worker: str = WORKER_ID,
    probe_forever: bool = True,
) -> BatchResult:
    """Claim up to ``settings.batch_size`` due deliveries of a sending campaign and send them.

    Protocol: gives back the rows of dead workers, claims queued rows (→ inflight, owner =
    ``worker``, heartbeat written) and commits; beats while it holds them; sends each over
    one transport connection, within the shared rate limit; every second writes outcomes
    (see the module docstring). Permanent refusals → failed with the relay's answer (a 5.1.x
    bounce also suppresses the address); temporary ones → queued again after the next
    back-off step, failed after the last. Subscribers no longer active are skipped, never
    mailed. Rows never answered go back as they were. Logs one line per batch.
    ``probe_forever``: see :func:`service.wait_for_relay`.
    """
    started = time.monotonic()
    batch = _Batch(settings, campaign_id, worker, probe_forever=probe_forever)
    result = batch.result
    with session_scope(settings.database_url) as session:
        campaign = repo.get_campaign(session, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            result.stopped_because = campaign.status if campaign else "missing"
            return result
        sweep_repo.requeue_orphans(
            session,
            dead_after=dead_after(settings),
            stuck_after=stuck_after(settings),
            campaign_id=campaign_id,
        )
        claimed = repo.claim_batch(session, campaign_id, worker=worker, limit=settings.batch_size)
    result.claimed = len(claimed)
    if not claimed:
        return result
    with Heartbeat(settings, worker):
        _send_claimed(batch, claimed, transport, limiter)
    result.more = result.claimed == settings.batch_size and result.stopped_because is None
    log.info(
        "campaign %s batch: claimed %d, sent %d, failed %d, retried %d, skipped %d,"
        " unconfirmed %d, given back %d, %d ms",
        campaign_id,
        result.claimed,
        result.sent,
        result.failed,
        result.retried,
        result.skipped,
        result.unconfirmed,
        result.given_back,
        (time.monotonic() - started) * 1000,
    )
    return result


def _send_claimed(
    batch: _Batch,
    claimed: list[repo.ClaimedDelivery],
    transport: Transport | None,
    limiter: RateLimiter | None,
) -> None:
    """Send the claimed rows, report as it goes, and settle the batch (see send_batch)."""
    settings, campaign_id, result, todo = (
        batch.settings,
        batch.campaign_id,
        batch.result,
        batch.todo,
    )
    waiting: str | None = None
    halted: str | None = None
    zone = ZoneInfo(settings.timezone)
    try:
        compiled = _compiled(settings, campaign_id)
        active = transport or transport_from_url(settings.mail_url)
        pace = limiter or _shared_limiter(settings)
        keys = settings.secret_keys
        last_report, since_report = time.monotonic(), 0
        with active:
            for index, item in enumerate(claimed):
                if since_report >= REPORT_EVERY or (
                    since_report and time.monotonic() - last_report >= REPORT_SECONDS
                ):
                    stop = batch.report(claimed[index:])
                    last_report, since_report = time.monotonic(), 0
                    if stop:
                        result.stopped_because = stop
                        break
                if index % RATE_SLICE == 0:
                    # Tokens for a slice at a time: one Redis round trip per slice, not per
                    # message, while the shared bucket still caps the rate.
                    pace.acquire(min(RATE_SLICE, len(claimed) - index))
                since_report += 1
                if (
                    item.subscriber_status != SubscriberStatus.active
                    or item.subscriber_id in batch.inactive
                ):
                    todo.skipped.append(item.delivery_id)
                    continue
                _send_one(active, compiled, item, settings, keys, todo)
    except RelayUnavailable as exc:
        waiting = f"waiting for the relay ({exc})"
    except RateLimiterUnavailable as exc:
        waiting = f"waiting for the rate limiter ({exc})"
    except ConfigurationError as exc:
        halted = f"sending cannot start: {exc}"
    finally:
        stop = batch.report([])
        result.stopped_because = result.stopped_because or stop
        # Rows never answered (a pause, a stop, a dead relay) go back as they were.
        untouched = [c.delivery_id for c in claimed if c.delivery_id not in todo.reported]
        result.given_back += len(untouched)

        def settle() -> None:
            with session_scope(settings.database_url) as session:
                repo.give_back(session, untouched, worker=batch.worker)
                if waiting:
                    result.probe_at = service.wait_for_relay(
                        session,
                        campaign_id,
                        waiting,
                        delays=settings.retry_delays,
                        zone=zone,
                        probe_forever=batch.probe_forever,
                    )
                elif halted:
                    service.halt_campaign(session, campaign_id, halted)

        patiently(settle, what=f"campaign {campaign_id}", log=log)
    if waiting and result.probe_at:
        log.warning(
            "campaign %s: %s", campaign_id, service.next_try(waiting, result.probe_at, zone)
        )
    elif waiting or halted:  # another batch already made it wait, or the table is used up
        log.warning("campaign %s: %s", campaign_id, waiting or halted)
    result.stopped_because = waiting or halted or result.stopped_because


def _compiled(settings: Settings, campaign_id: int) -> CompiledCampaign:
    with session_scope(settings.database_url) as session:
        return compile_campaign(session, campaign_id, settings)


@lru_cache(maxsize=4)
def _shared_limiter(settings: Settings) -> RateLimiter:
    """One limiter (one Redis connection) per process, not one per batch."""
    return limiter_for(settings)


def _send_one(
    transport: Transport,
    compiled: CompiledCampaign,
    item: repo.ClaimedDelivery,
    settings: Settings,
    keys: list[str],
    todo: Outcomes,
) -> None:
    """Build and hand over one message; file its outcome in ``todo``.

    Anything about this one address fails this delivery only; :class:`RelayUnavailable`
    (about the relay, not the message) propagates and ends the batch.
    """
    try:
        message = build_message(
            compiled, item.delivery_id, item.subscriber_id, item.name, item.email, settings, keys
        )
    except Exception as exc:  # whatever the builder says about this address: this one only
        reason = str(exc) if isinstance(exc, DeliveryError | ValueError) else type(exc).__name__
        log.warning("delivery %s: the message cannot be built: %s", item.delivery_id, reason)
        todo.failed.append(Failed(item, f"the message cannot be built: {reason}", False))
        return
    try:
        transport.send(message)
    except RelayUnavailable:
        raise
    except HandoverUnconfirmed:
        todo.unanswered.append((item.delivery_id, True))
        return
    except DeliveryError as exc:
        answered = isinstance(exc, SmtpRefused) or exc.code is not None or not exc.permanent
        if not exc.permanent:
            todo.refused(item, str(exc), settings.retry_delays)
            return
        todo.failed.append(Failed(item, str(exc), answered))
        if isinstance(exc, SmtpRefused) and exc.is_hard_bounce:
            todo.bounced.append((item.subscriber_id, f"hard bounce: {exc.reply}"))
        return
    todo.sent.append(item.delivery_id)
