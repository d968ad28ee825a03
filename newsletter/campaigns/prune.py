"""Retention: ``newsletter campaign prune --older-than 180d`` removes the delivery rows of
campaigns that ended long ago and keeps the campaigns, with their counts.

Rules kept here:

* **Only what is over.** A campaign is pruned when it is finished or cancelled (states that
  never go back to sending) and ended before the cut-off; one a worker still holds rows of
  (a cancelled campaign whose batch has not reported yet) waits for a later run.
* **Short transactions.** Rows go in batches of :data:`BATCH_ROWS`, each committed on its
  own, so a campaign of a million rows never holds locks for minutes; an interrupted run
  leaves the campaign unmarked, and the next run removes the rest.
* **Ids are never reused.** A delivery's id makes its Message-ID and its VERP return path.
  PostgreSQL's sequence never goes back; on SQLite the table is AUTOINCREMENT (migration
  0007), so a new delivery never gets the id of a pruned one. Links in old mails carry no
  delivery id (RSVP: session and subscriber; unsubscribe: subscriber and campaign, whose row
  stays), so they keep working after a prune.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from newsletter.campaigns import prune_repo
from newsletter.campaigns.counts_repo import counts_of
from newsletter.campaigns.models import DeliveryStatus
from newsletter.db import session_scope, utcnow

# Rows deleted per transaction.
BATCH_ROWS = 10_000

_AGE = re.compile(r"(\d{1,6})([dh])")
_UNITS = {"d": "days", "h": "hours"}


def parse_age(text: str) -> timedelta:
    """``180d`` or ``12h`` as a timedelta; ValueError with a one-line reason otherwise."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"--older-than {text!r} is not an age: give a whole number of days or hours"
            " above 0, e.g. 180d or 12h"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True, slots=True)
class Candidate:
    """A campaign whose delivery rows would be removed."""

    id: int
    status: str
    finished_at: datetime
    rows: int  # its deliveries, by the counts kept on its row


@dataclass
class Plan:
    """What a prune would do: the campaigns it removes the rows of, the ones it leaves."""

    before: datetime
    candidates: list[Candidate] = field(default_factory=list)
    left: list[tuple[int, str]] = field(default_factory=list)  # campaign id, why

    @property
    def rows(self) -> int:
        """Delivery rows the prune removes."""
        return sum(c.rows for c in self.candidates)


def plan(database_url: str, older_than: timedelta) -> Plan:
    """The campaigns that ended more than ``older_than`` ago, and those left alone."""
    before = utcnow() - older_than
    result = Plan(before)
    with session_scope(database_url) as db:
        for campaign in prune_repo.ended_before(db, before):
            counts = counts_of(campaign)
            if counts[DeliveryStatus.inflight]:
                result.left.append(
                    (
                        campaign.id,
                        f"a worker still holds {counts[DeliveryStatus.inflight]} of its"
                        " deliveries; try again later",
                    )
                )
                continue
            assert campaign.finished_at is not None  # ended_before() selects on it
            result.candidates.append(
                Candidate(campaign.id, campaign.status, campaign.finished_at, sum(counts.values()))
            )
        for campaign in prune_repo.still_going(db, before):
            result.left.append((campaign.id, f"{campaign.status}, not over: left alone"))
    return result


def prune_campaign(
    database_url: str,
    campaign_id: int,
    *,
    on_batch: Callable[[int], None] = lambda removed: None,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Remove the campaign's delivery rows in batches of ``batch_rows`` (one transaction
    each, ``on_batch`` told how many went), status by status in id order, then mark it
    pruned. Returns the rows removed."""
    removed = 0
    for status in DeliveryStatus:
        after = 0
        while True:
            with session_scope(database_url) as db:
                gone = prune_repo.delete_some(db, campaign_id, status, after, batch_rows)
            if gone:
                removed += len(gone)
                after = max(gone)  # RETURNING promises no order
                on_batch(len(gone))
            if len(gone) < batch_rows:
                break
    with session_scope(database_url) as db:
        prune_repo.mark_pruned(db, campaign_id)
    return removed
