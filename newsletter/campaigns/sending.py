"""Sending a campaign: claim → personalise → send → mark, over several connections at once.

This is the only module that joins rendering, links, the rate limit and the mail transport;
tasks call it with ids. A claimed batch is sent over ``NEWSLETTER_SMTP_CONNECTIONS``
connections, one thread (lane) each (:mod:`newsletter.mail.lanes`); the lanes take rows one
at a time from one feed, paced by the shared rate limit. The batch's own thread is the
reporter: by time, every :func:`report_interval` seconds (a second, or less when the claim
timeout is short, so a slow relay never lets a claim go stale), it writes the outcomes filed
so far together with the worker's heartbeat, a renewed claim on the rows still in hand, a
fresh look at the statuses of the people not mailed yet (someone who unsubscribes during a
long batch is not mailed), a look at the campaign's state (pause and cancel take effect
within a second) and the error budget. So the writes per second stay the same at any rate;
only when ``REPORT_EVERY`` outcomes wait unwritten (a very fast transport) do the lanes wait
for a report first, which bounds what a worker that dies leaves unknown. What counts as an
attempt, when a retry is due and why an accepted message is never failed:
:mod:`newsletter.campaigns.outcomes`.

Faults, and what a batch does about them:

* the relay cannot be reached, or answers 421 (see :mod:`newsletter.mail.smtp` for when a
  421 ends one connection and when it means the relay) → every lane stops after its message
  in hand, the rows not answered go back untouched and the campaign waits for the relay,
  probed on the back-off table (``service.wait_for_relay``); the same when the rate limiter
  (Redis) does not answer. What the other connections had sent stays sent;
* one address cannot be sent (the message builder refuses it, or it needs SMTPUTF8 and the
  relay does not offer it) → that delivery fails with the reason, the batch goes on;
* the database goes away → the batch stops sending and keeps trying to write what it knows
  (:func:`outage.patiently`); if it cannot, its rows come back through the heartbeat rule;
* the mail URL or the From address is unusable → the campaign pauses with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from zoneinfo import ZoneInfo

from newsletter.campaigns import repo, service, sweep_repo
from newsletter.campaigns.compiled import CompiledCampaign, build_message, compile_campaign
from newsletter.campaigns.heartbeat import Heartbeat, dead_after, stuck_after
from newsletter.campaigns.models import CampaignStatus
from newsletter.campaigns.outage import patiently
from newsletter.campaigns.outcomes import REPORT_EVERY, BatchResult, Failed, Ledger, Outcomes
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.dkim import signer_for
from newsletter.mail.lanes import Lanes, transports_for
from newsletter.mail.smtp import HandoverUnconfirmed, RelayUnavailable, SmtpRefused
from newsletter.mail.transports import Transport
from newsletter.ratelimit import RateLimiter, RateLimiterUnavailable, limiter_for

log = logging.getLogger(__name__)

__all__ = ["REPORT_EVERY", "REPORT_SECONDS", "BatchResult", "report_interval", "send_batch"]

# Outcomes are written this often (seconds; see report_interval), whatever the rate; lanes
# wait for a report only when REPORT_EVERY outcomes are unwritten (outcomes.Ledger.file).
REPORT_SECONDS = 1.0

# Messages per rate-limit request (see _Feed).
RATE_SLICE = 10

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

# What a lane does with the outcome of one message, under the batch's lock.
Filer = Callable[[Outcomes], None]


def report_interval(settings: Settings) -> float:
    """Seconds between two reports: ``REPORT_SECONDS``, or a third of the claim timeout when
    that is shorter, so that a claim is renewed several times before the sweeper may take it
    for stuck (a relay slow enough that one message outlasts the timeout)."""
    return min(REPORT_SECONDS, settings.inflight_timeout / 3)


class _Feed:
    """The claimed rows, handed to the lanes one at a time within the shared rate limit."""

    def __init__(
        self, claimed: list[repo.ClaimedDelivery], pace: RateLimiter, stop: threading.Event
    ) -> None:
        self._claimed = claimed
        self._pace = pace
        self._stop = stop
        self._lock = threading.Lock()
        self._next = 0
        self._tokens = 0

    def take(self) -> repo.ClaimedDelivery | None:
        """The next row to send, or None when there is none or the batch stops."""
        with self._lock:
            if self._stop.is_set() or self._next >= len(self._claimed):
                return None
            if not self._tokens:
                # Tokens for a slice at a time: one Redis round trip per slice, not per
                # message, while the shared bucket still caps the rate. Waiting for them
                # under the lock paces every lane of the batch.
                wanted = min(RATE_SLICE, len(self._claimed) - self._next)
                self._pace.acquire(wanted)
                if self._stop.is_set():  # paused or cancelled while waiting for the tokens
                    return None
                self._tokens = wanted
            self._tokens -= 1
            self._next += 1
            return self._claimed[self._next - 1]

    def untaken(self) -> list[repo.ClaimedDelivery]:
        """Rows no lane has taken yet."""
        with self._lock:
            return self._claimed[self._next :]


def send_batch(
    settings: Settings,
    campaign_id: int,
    *,
    worker: str = WORKER_ID,
    probe_forever: bool = True,
) -> BatchResult:
    """Claim up to ``settings.batch_size`` due deliveries of a sending campaign and send them.

    Protocol: gives back the rows of dead workers, claims queued rows (→ inflight, owner =
    ``worker``, heartbeat written) and commits; beats while it holds them; sends them over
    ``settings.smtp_connections`` connections at once, within the shared rate limit;
    reports by time (see the module docstring).
    Permanent refusals → failed with the relay's answer (a 5.1.x bounce also suppresses the
    address); temporary ones → queued again after the next back-off step, failed after the
    last. Subscribers no longer active are skipped, never mailed. Rows never answered go back
    as they were. Logs one line per batch. ``probe_forever``: see
    :func:`service.wait_for_relay`.
    """
    started = time.monotonic()
    with session_scope(settings.database_url) as db:
        campaign = repo.get_campaign(db, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            return BatchResult(stopped_because=campaign.status if campaign else "missing")
    try:
        # Compiled before the claim (once per process; premailer takes a while): a claim's
        # age must be the time spent sending, not the time spent getting ready.
        compiled = _compiled(settings, campaign_id)
    except ConfigurationError as exc:
        return _halt(settings, campaign_id, f"sending cannot start: {exc}")
    with session_scope(settings.database_url) as db:
        sweep_repo.requeue_orphans(
            db,
            dead_after=dead_after(settings),
            stuck_after=stuck_after(settings),
            campaign_id=campaign_id,
        )
        claimed = repo.claim_batch(db, campaign_id, worker=worker, limit=settings.batch_size)
    batch = Ledger(settings, campaign_id, worker, claimed, probe_forever=probe_forever)
    result = batch.result
    if not claimed:
        return result
    with Heartbeat(settings, worker):
        _send_claimed(batch, compiled)
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


def _halt(settings: Settings, campaign_id: int, reason: str) -> BatchResult:
    """Pause the campaign with ``reason`` before claiming anything."""
    with session_scope(settings.database_url) as db:
        service.halt_campaign(db, campaign_id, reason)
    log.warning("campaign %s: %s", campaign_id, reason)
    return BatchResult(stopped_because=reason)


def _send_claimed(batch: Ledger, compiled: CompiledCampaign) -> None:
    """Send the claimed rows over the lanes, report as they go, settle the batch."""
    settings, campaign_id, result = batch.settings, batch.campaign_id, batch.result
    waiting: str | None = None
    halted: str | None = None
    zone = ZoneInfo(settings.timezone)
    try:
        transports = transports_for(
            settings.mail_url, settings.smtp_connections, signer=signer_for(settings)
        )
        feed = _Feed(batch.claimed, _shared_limiter(settings), batch.stop)
        keys = settings.secret_keys

        def lane(connection: Transport) -> None:
            while (item := feed.take()) is not None:
                if not item.mailable or item.subscriber_id in batch.inactive:
                    batch.file(_skipped(item))
                    continue
                batch.file(_send_one(connection, compiled, item, settings, keys))

        lanes = Lanes(transports[: len(batch.claimed)], lane, stop=batch.stop, finished=batch.wake)
        _report_while_sending(batch, lanes, feed, report_interval(settings))
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
        reported = batch.todo.reported
        untouched = [c.delivery_id for c in batch.claimed if c.delivery_id not in reported]
        result.given_back += len(untouched)

        def settle() -> None:
            with session_scope(settings.database_url) as db:
                repo.give_back(db, untouched, worker=batch.worker)
                if waiting:
                    result.probe_at = service.wait_for_relay(
                        db,
                        campaign_id,
                        waiting,
                        delays=settings.retry_delays,
                        zone=zone,
                        probe_forever=batch.probe_forever,
                    )
                elif halted:
                    service.halt_campaign(db, campaign_id, halted)

        patiently(settle, what=f"campaign {campaign_id}", log=log)
    if waiting and result.probe_at:
        log.warning(
            "campaign %s: %s", campaign_id, service.next_try(waiting, result.probe_at, zone)
        )
    elif waiting or halted:  # another batch already made it wait, or the table is used up
        log.warning("campaign %s: %s", campaign_id, waiting or halted)
    result.stopped_because = waiting or halted or result.stopped_because


def _report_while_sending(batch: Ledger, lanes: Lanes, feed: _Feed, interval: float) -> None:
    """Start the lanes and report every ``interval`` seconds (or when they ask) until they
    are done; re-raise what stopped a lane. A report that says stop stops the lanes."""
    lanes.start()
    try:
        while lanes.running:
            batch.wake.wait(interval)
            batch.wake.clear()
            if not lanes.running:
                break
            stop = batch.report(feed.untaken())
            if stop:
                batch.result.stopped_because = stop
                batch.stop.set()
    except BaseException:
        batch.stop.set()  # the lanes finish the message in hand; the last report files it
        with batch.filed:
            batch.filed.notify_all()
        with contextlib.suppress(Exception):  # the reporter's own error is the one to tell
            lanes.join()
        raise
    lanes.join()


def _compiled(settings: Settings, campaign_id: int) -> CompiledCampaign:
    with session_scope(settings.database_url) as db:
        return compile_campaign(db, campaign_id, settings)


@lru_cache(maxsize=4)
def _shared_limiter(settings: Settings) -> RateLimiter:
    """One limiter (one Redis connection) per process, not one per batch."""
    return limiter_for(settings)


def _skipped(item: repo.ClaimedDelivery) -> Filer:
    """A person no longer active: skipped, never mailed."""
    return lambda todo: todo.skipped.append(item.delivery_id)


def _send_one(
    transport: Transport,
    compiled: CompiledCampaign,
    item: repo.ClaimedDelivery,
    settings: Settings,
    keys: list[str],
) -> Filer:
    """Build and hand over one message; return how to file its outcome.

    Anything about this one address fails this delivery only; :class:`RelayUnavailable`
    (about the relay, not the message) propagates and ends the lane, and so the batch.
    """
    try:
        message = build_message(
            compiled, item.delivery_id, item.subscriber_id, item.name, item.email, settings, keys
        )
    except Exception as exc:  # whatever the builder says about this address: this one only
        reason = str(exc) if isinstance(exc, DeliveryError | ValueError) else type(exc).__name__
        log.warning("delivery %s: the message cannot be built: %s", item.delivery_id, reason)
        failed = Failed(item, f"the message cannot be built: {reason}", False)
        return lambda todo: todo.failed.append(failed)
    try:
        transport.send(message)
    except RelayUnavailable:
        raise
    except HandoverUnconfirmed:
        return lambda todo: todo.unanswered.append((item.delivery_id, True))
    except DeliveryError as exc:
        return _refused(item, exc, settings.retry_delays)
    return lambda todo: todo.sent.append(item.delivery_id)


def _refused(item: repo.ClaimedDelivery, exc: DeliveryError, delays: list[float]) -> Filer:
    """A refusal: temporary → retried after the back-off; permanent → failed (a hard bounce
    also suppresses the address)."""
    answered = isinstance(exc, SmtpRefused) or exc.code is not None or not exc.permanent

    def file(todo: Outcomes) -> None:
        if not exc.permanent:
            todo.refused(item, str(exc), delays)
            return
        todo.failed.append(Failed(item, str(exc), answered))
        if isinstance(exc, SmtpRefused) and exc.is_hard_bounce:
            todo.bounced.append((item.subscriber_id, f"hard bounce: {exc.reply}"))

    return file
