"""What one batch learnt about its deliveries, and how it is written down (see sending.py):
:class:`Outcomes` not yet written, and the :class:`Ledger` of a batch, into which its lanes
file outcomes from several threads and whose reports write them, one at a time.

The rules kept here, in one place:

* **An attempt is an answer.** ``attempts`` grows only when the relay answered a message's
  transaction: a 250 (sent), a 4xx (deferred) or a 5xx (failed). A claim, a worker that
  died, a connection that never opened or broke before the reply, a 421 (the service is
  closing, nothing said about the message) do not count: such rows go back as they were.
* **Retry waits follow the table, from the refusal.** A message refused for the n-th time
  is due again ``retry_delays[n - 1]`` seconds after that refusal; refused once more after
  the last step, it fails with "gave up after N attempts" (N = len(retry_delays) + 1).
* **Accepted is never failed.** A row taken back from a worker that stopped, or whose
  connection broke after the message was handed over, may already be at the relay: it is
  marked ``maybe_sent``. If its re-sends are refused it ends ``unconfirmed``, never
  ``failed`` (the SQL in :func:`repo.mark_failed` keeps that rule even against a stale
  worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from newsletter.campaigns import counts_repo, repo, service
from newsletter.campaigns.models import CampaignStatus
from newsletter.campaigns.outage import patiently
from newsletter.campaigns.repo import ClaimedDelivery
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from subscribers.models import SubscriberStatus
from subscribers.service import suppress

log = logging.getLogger(__name__)
#: Why a claimed delivery was not sent (campaigns.recipients.mailable said no).
SKIPPED_REASON = "not to be mailed any more (left the list, paused, or dropped the topic)"

# Lanes wait for a report when this many outcomes are unwritten (see Ledger.file). At the
# default batch size (500) no batch reaches it, so reports go by time alone.
REPORT_EVERY = 1000


@dataclass
class Deferred:
    """A 4xx answer: the delivery, its answered attempts including this one, why, when."""

    delivery_id: int
    attempts: int
    reason: str
    refused_at: datetime


@dataclass
class Failed:
    """A delivery that fails for good; ``answered`` when the relay refused it (an attempt)."""

    item: ClaimedDelivery
    reason: str
    answered: bool


@dataclass
class Outcomes:
    """Outcomes not yet written to the database."""

    sent: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    # Not answered: (delivery id, handed over so the relay may have it).
    unanswered: list[tuple[int, bool]] = field(default_factory=list)
    bounced: list[tuple[int, str]] = field(default_factory=list)  # subscriber id, reason
    reported: set[int] = field(default_factory=set)  # every delivery id written so far

    def ids(self) -> set[int]:
        """Deliveries with an outcome waiting to be written."""
        return (
            set(self.sent)
            | set(self.skipped)
            | {d.delivery_id for d in self.deferred}
            | {f.item.delivery_id for f in self.failed}
            | {delivery_id for delivery_id, _ in self.unanswered}
        )

    def take(self) -> Outcomes:
        """Move the outcomes not yet written into a new Outcomes (to write), remembering here
        which deliveries they were; senders go on filing into this one meanwhile."""
        taken = Outcomes(
            self.sent, self.skipped, self.deferred, self.failed, self.unanswered, self.bounced
        )
        self.reported |= taken.ids()
        self.sent, self.skipped, self.deferred = [], [], []
        self.failed, self.unanswered, self.bounced = [], [], []
        return taken

    def refused(self, item: ClaimedDelivery, reason: str, delays: list[float]) -> bool:
        """File a temporary refusal of ``item``; True when it was its last allowed attempt."""
        attempts = item.attempts + 1
        if attempts > len(delays):
            self.failed.append(Failed(item, f"gave up after {attempts} attempts: {reason}", True))
            return True
        self.deferred.append(Deferred(item.delivery_id, attempts, reason, utcnow()))
        return False

    def write(self, db: Session, *, worker: str, delays: list[float]) -> None:
        """Write every outcome as this worker's (rows it no longer owns are left alone)."""
        repo.mark_sent(db, self.sent, worker=worker)
        repo.mark_skipped(db, self.skipped, SKIPPED_REASON, worker=worker)
        for failed in self.failed:
            reason = failed.reason
            if failed.item.maybe_sent:
                reason += " (an earlier copy may have been accepted before a worker stopped)"
            repo.mark_failed(
                db,
                [failed.item.delivery_id],
                reason,
                worker=worker,
                answered=failed.answered,
            )
        for deferred in self.deferred:
            repo.defer(
                db,
                deferred.delivery_id,
                worker=worker,
                reason=deferred.reason,
                not_before=deferred.refused_at + timedelta(seconds=delays[deferred.attempts - 1]),
            )
        handed_over = [delivery_id for delivery_id, maybe in self.unanswered if maybe]
        untried = [delivery_id for delivery_id, maybe in self.unanswered if not maybe]
        repo.give_back(db, handed_over, worker=worker, maybe_sent=True)
        repo.give_back(db, untried, worker=worker)
        for subscriber_id, reason in self.bounced:
            suppress(
                db,
                subscriber_id=subscriber_id,
                status=SubscriberStatus.bounced,
                reason=reason,
            )


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


class Ledger:
    """One claimed batch in the hands of one worker: the outcomes its lanes file (from several
    threads, under ``filed``) and the reports that write them down (from one)."""

    def __init__(
        self,
        settings: Settings,
        campaign_id: int,
        worker: str,
        claimed: list[repo.ClaimedDelivery],
        *,
        probe_forever: bool,
    ) -> None:
        self.settings = settings
        self.probe_forever = probe_forever
        self.campaign_id = campaign_id
        self.worker = worker
        self.claimed = claimed
        self.result = BatchResult(claimed=len(claimed))
        self.todo = Outcomes()  # filed by the lanes, under `filed`
        self.filed = threading.Condition()
        self.unwritten = 0  # outcomes filed since the last report
        self.reports = 0  # reports written so far
        self.inactive: set[int] = set()  # subscribers found not active at a report
        self.stop = threading.Event()  # lanes take no more rows
        self.wake = threading.Event()  # the reporter: report now, or the lanes are done

    def file(self, filer: Callable[[Outcomes], None]) -> None:
        """File one message's outcome. When REPORT_EVERY are unwritten, wait for the next
        report to be written (statuses re-read included) before taking another row."""
        with self.filed:
            filer(self.todo)
            self.unwritten += 1
            if self.unwritten >= REPORT_EVERY:
                due = self.reports + 1
                self.wake.set()
                while self.reports < due and not self.stop.is_set():
                    self.filed.wait(0.5)

    def report(self, untaken: list[repo.ClaimedDelivery]) -> str | None:
        """Write the outcomes filed so far, renew the claim on the rows still in hand and
        re-read the statuses of ``untaken`` people; return why to stop, if so. Waits out a
        database outage (up to a minute)."""
        with self.filed:
            taken = self.todo.take()
            self.unwritten = 0
            reported = self.todo.reported
            held = [c.delivery_id for c in self.claimed if c.delivery_id not in reported]
        stop = patiently(
            lambda: self._write(taken, held, [c.subscriber_id for c in untaken]),
            what=f"campaign {self.campaign_id}",
            log=log,
        )
        with self.filed:
            self.reports += 1
            self.filed.notify_all()
        result = self.result
        result.sent += len(taken.sent)
        result.skipped += len(taken.skipped)
        result.retried += len(taken.deferred)
        result.given_back += len(taken.unanswered)
        for failed in taken.failed:
            if failed.item.maybe_sent:
                result.unconfirmed += 1
            else:
                result.failed += 1
        return stop

    def _write(self, todo: Outcomes, held: list[int], people: list[int]) -> str | None:
        settings = self.settings
        with session_scope(settings.database_url) as db:
            # No heartbeat here: this transaction may wait for the campaign row (other
            # workers' counts), and a heartbeat row it had written would stay locked that
            # long, stalling the Heartbeat thread until the sweeper took this worker for dead
            # and gave its rows to another one: the same mails sent twice.
            todo.write(db, worker=self.worker, delays=settings.retry_delays)
            still_held = repo.touch_claims(db, held, worker=self.worker)
            self.inactive = repo.inactive_subscribers(db, people, campaign_id=self.campaign_id)
            streak = repo.record_progress(
                db,
                self.campaign_id,
                succeeded=len(todo.sent),
                refused_temporarily=len(todo.deferred),
            )
            stop, halt = self._verdict(db, todo, streak)
            if stop is None and still_held < len(held):
                # Given away meanwhile: their new owner sends them; sending on would mail
                # those people twice.
                stop = f"{len(held) - still_held} rows of this batch were given to another worker"
            if halt and stop:
                service.halt_campaign(db, self.campaign_id, stop)
        return stop

    def _verdict(self, db: Session, todo: Outcomes, streak: int) -> tuple[str | None, bool]:
        """Why the batch must stop, and whether it must pause the campaign itself.

        It stops when the campaign left ``sending`` (an organizer paused or cancelled it) or
        when the error budget is spent; in the second case it pauses the campaign.
        """
        settings = self.settings
        campaign = repo.get_campaign(db, self.campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            return (campaign.status if campaign else "missing"), False
        if streak >= settings.error_streak:
            last = todo.deferred[-1].reason if todo.deferred else "temporary refusals"
            return f"error budget: the relay refused {streak} messages in a row ({last})", True
        if todo.failed:
            sent, failed = counts_repo.final_counts(db, self.campaign_id)
            done = sent + failed
            if done >= settings.error_budget_min and failed > settings.error_budget * done:
                return (
                    f"error budget: {failed} of {done} deliveries failed for good "
                    f"(more than {settings.error_budget:.0%}; last: {todo.failed[-1].reason})"
                ), True
        return None, False
