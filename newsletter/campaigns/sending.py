"""Sending one batch of a campaign: claim → personalise → send → mark, over one connection.

This is the only module that joins rendering, links, the rate limit and the mail transport;
tasks call it with ids. Outcomes are written every ``REPORT_EVERY`` messages, together with a
heartbeat on the rows still in hand, a look at the campaign's state (so pause and cancel take
effect within one batch) and the error budget.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache

from sqlalchemy.orm import Session

from newsletter.campaigns import repo, service
from newsletter.campaigns.compiled import CompiledCampaign, build_message, compile_campaign
from newsletter.campaigns.models import CampaignStatus, DeliveryStatus
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import DeliveryError
from newsletter.mail.smtp import SmtpRefused
from newsletter.mail.transports import Transport, transport_from_url
from newsletter.ratelimit import RateLimiter, RateLimiterUnavailable, limiter_for
from subscribers.models import SubscriberStatus
from subscribers.service import suppress

log = logging.getLogger(__name__)

# How many messages between reports: few enough that a crash re-sends little and a pause
# lands quickly, many enough that bookkeeping is not a round trip per message.
REPORT_EVERY = 100

# Messages per rate-limit request (see the loop in send_batch).
RATE_SLICE = 10

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class BatchResult:
    """What one batch did; ``more`` tells the caller to schedule another batch at once."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    more: bool = False
    stopped_because: str | None = None


@dataclass
class _Outcomes:
    """Outcomes not yet written to the database."""

    sent: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retry: list[tuple[int, int, str]] = field(default_factory=list)  # id, attempts, reason
    failed: list[tuple[int, str]] = field(default_factory=list)
    bounced: list[tuple[int, str]] = field(default_factory=list)  # subscriber id, reason
    reported: set[int] = field(default_factory=set)  # every delivery id written so far

    def ids(self) -> set[int]:
        """Deliveries with an outcome waiting to be written."""
        return (
            set(self.sent)
            | set(self.skipped)
            | {delivery_id for delivery_id, _, _ in self.retry}
            | {delivery_id for delivery_id, _ in self.failed}
        )

    def clear(self) -> None:
        """Forget the written outcomes, remembering which deliveries they were."""
        self.reported |= self.ids()
        for pending in (self.sent, self.skipped, self.retry, self.failed, self.bounced):
            pending.clear()


class _Batch:
    """One claimed batch in the hands of one worker."""

    def __init__(self, settings: Settings, campaign_id: int, worker: str) -> None:
        self.settings = settings
        self.campaign_id = campaign_id
        self.worker = worker
        self.result = BatchResult()
        self.todo = _Outcomes()

    def report(self, still_held: list[int]) -> str | None:
        """Write outcomes, renew the claim on ``still_held``; return why to stop, if so."""
        settings, todo, worker = self.settings, self.todo, self.worker
        delays = settings.retry_delays
        now = utcnow()
        with session_scope(settings.database_url) as session:
            repo.mark_sent(session, todo.sent, worker=worker)
            repo.mark_final(
                session,
                todo.skipped,
                DeliveryStatus.skipped,
                "not subscribed any more",
                worker=worker,
            )
            for delivery_id, reason in todo.failed:
                repo.mark_final(
                    session, [delivery_id], DeliveryStatus.failed, reason, worker=worker
                )
            for delivery_id, attempts, reason in todo.retry:
                if attempts > len(delays):
                    repo.mark_final(
                        session,
                        [delivery_id],
                        DeliveryStatus.failed,
                        f"gave up after {attempts} attempts: {reason}",
                        worker=worker,
                    )
                else:
                    repo.requeue(
                        session,
                        [delivery_id],
                        worker=worker,
                        reason=reason,
                        not_before=now + timedelta(seconds=delays[attempts - 1]),
                    )
            for subscriber_id, reason in todo.bounced:
                suppress(
                    session,
                    subscriber_id=subscriber_id,
                    status=SubscriberStatus.bounced,
                    reason=reason,
                )
            repo.touch_claims(session, still_held, worker=worker)
            streak = repo.record_progress(
                session,
                self.campaign_id,
                succeeded=len(todo.sent),
                refused_temporarily=len(todo.retry),
            )
            stop, halt = self._verdict(session, streak)
            if halt and stop:
                service.halt_campaign(session, self.campaign_id, stop)
        self.result.sent += len(todo.sent)
        self.result.skipped += len(todo.skipped)
        self.result.failed += len(todo.failed)
        self.result.retried += len(todo.retry)
        todo.clear()
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
            last = todo.retry[-1][2] if todo.retry else "temporary refusals"
            return f"error budget: the relay refused {streak} messages in a row ({last})", True
        if todo.failed:
            sent, failed = repo.final_counts(session, self.campaign_id)
            done = sent + failed
            if done >= settings.error_budget_min and failed > settings.error_budget * done:
                return (
                    f"error budget: {failed} of {done} deliveries failed for good "
                    f"(more than {settings.error_budget:.0%}; last: {todo.failed[-1][1]})"
                ), True
        return None, False


def send_batch(
    settings: Settings,
    campaign_id: int,
    *,
    transport: Transport | None = None,
    limiter: RateLimiter | None = None,
    worker: str = WORKER_ID,
) -> BatchResult:
    """Claim up to ``settings.batch_size`` due deliveries of a sending campaign and send them.

    Protocol: claims queued rows (→ inflight, owner = ``worker``) and commits, so a crash
    leaves rows the sweeper re-queues; sends each over one transport connection, within the
    shared rate limit; every ``REPORT_EVERY`` messages writes outcomes and renews its claim.
    Permanent refusals → failed with the relay's answer (a 5.1.x bounce also suppresses the
    address); temporary ones → queued again after the next back-off step, failed after the
    last. Subscribers no longer active are skipped, never mailed. If the relay cannot be
    reached at all, the rows go back untouched and the campaign pauses with the reason.
    """
    batch = _Batch(settings, campaign_id, worker)
    result = batch.result
    with session_scope(settings.database_url) as session:
        campaign = repo.get_campaign(session, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            result.stopped_because = campaign.status if campaign else "missing"
            return result
        claimed = repo.claim_batch(session, campaign_id, worker=worker, limit=settings.batch_size)
        compiled = compile_campaign(session, campaign_id, settings) if claimed else None
    result.claimed = len(claimed)
    if compiled is None:
        return result
    todo = batch.todo
    keys = settings.secret_keys
    active = transport or transport_from_url(settings.mail_url)
    pace = limiter or _shared_limiter(settings)
    unreachable: str | None = None
    try:
        with active:
            for index, item in enumerate(claimed):
                if index and index % REPORT_EVERY == 0:
                    stop = batch.report([c.delivery_id for c in claimed[index:]])
                    if stop:
                        result.stopped_because = stop
                        break
                if index % RATE_SLICE == 0:
                    # Tokens for a slice at a time: one Redis round trip per slice, not per
                    # message, while the shared bucket still caps the rate.
                    pace.acquire(min(RATE_SLICE, len(claimed) - index))
                if item.subscriber_status != SubscriberStatus.active:
                    todo.skipped.append(item.delivery_id)
                    continue
                _send_one(active, compiled, item, settings, keys, todo)
    except DeliveryError as exc:
        # Not even a connection (or it broke for good): nothing happened to the rows left.
        unreachable = f"the mail server cannot be reached: {exc}"
        log.warning("campaign %s: %s", campaign_id, unreachable)
    except RateLimiterUnavailable as exc:
        unreachable = str(exc)
        log.warning("campaign %s: %s", campaign_id, unreachable)
    finally:
        stop = batch.report([])
        result.stopped_because = result.stopped_because or stop
        # Rows never attempted (a pause, a stop, a dead relay) go back as they were.
        untouched = [c.delivery_id for c in claimed if c.delivery_id not in todo.reported]
        with session_scope(settings.database_url) as session:
            repo.requeue(
                session, untouched, worker=worker, not_before=None, reason=None, refund_attempt=True
            )
            if unreachable:
                service.halt_campaign(session, campaign_id, unreachable)
                result.stopped_because = unreachable
    result.more = result.claimed == settings.batch_size and result.stopped_because is None
    return result


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
    todo: _Outcomes,
) -> None:
    """Build and hand over one message; file its outcome in ``todo``."""
    message = build_message(
        compiled, item.delivery_id, item.subscriber_id, item.name, item.email, settings, keys
    )
    try:
        transport.send(message)
    except DeliveryError as exc:
        if not exc.permanent:
            todo.retry.append((item.delivery_id, item.attempts, str(exc)))
            return
        todo.failed.append((item.delivery_id, str(exc)))
        if isinstance(exc, SmtpRefused) and exc.is_hard_bounce:
            todo.bounced.append((item.subscriber_id, f"hard bounce: {exc.reply}"))
        return
    todo.sent.append(item.delivery_id)
