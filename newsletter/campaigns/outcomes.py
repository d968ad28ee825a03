"""What one batch learnt about its deliveries, and how it is written down (see sending.py).

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

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from newsletter.campaigns import repo
from newsletter.campaigns.repo import ClaimedDelivery
from newsletter.db import utcnow
from subscribers.models import SubscriberStatus
from subscribers.service import suppress


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

    def clear(self) -> None:
        """Forget the written outcomes, remembering which deliveries they were."""
        self.reported |= self.ids()
        for pending in (
            self.sent,
            self.skipped,
            self.deferred,
            self.failed,
            self.unanswered,
            self.bounced,
        ):
            pending.clear()

    def refused(self, item: ClaimedDelivery, reason: str, delays: list[float]) -> bool:
        """File a temporary refusal of ``item``; True when it was its last allowed attempt."""
        attempts = item.attempts + 1
        if attempts > len(delays):
            self.failed.append(Failed(item, f"gave up after {attempts} attempts: {reason}", True))
            return True
        self.deferred.append(Deferred(item.delivery_id, attempts, reason, utcnow()))
        return False

    def write(self, session: Session, *, worker: str, delays: list[float]) -> None:
        """Write every outcome as this worker's (rows it no longer owns are left alone)."""
        repo.mark_sent(session, self.sent, worker=worker)
        repo.mark_skipped(session, self.skipped, "not subscribed any more", worker=worker)
        for failed in self.failed:
            reason = failed.reason
            if failed.item.maybe_sent:
                reason += " (an earlier copy may have been accepted before a worker stopped)"
            repo.mark_failed(
                session,
                [failed.item.delivery_id],
                reason,
                worker=worker,
                answered=failed.answered,
            )
        for deferred in self.deferred:
            repo.defer(
                session,
                deferred.delivery_id,
                worker=worker,
                reason=deferred.reason,
                not_before=deferred.refused_at + timedelta(seconds=delays[deferred.attempts - 1]),
            )
        handed_over = [delivery_id for delivery_id, maybe in self.unanswered if maybe]
        untried = [delivery_id for delivery_id, maybe in self.unanswered if not maybe]
        repo.give_back(session, handed_over, worker=worker, maybe_sent=True)
        repo.give_back(session, untried, worker=worker)
        for subscriber_id, reason in self.bounced:
            suppress(
                session,
                subscriber_id=subscriber_id,
                status=SubscriberStatus.bounced,
                reason=reason,
            )
