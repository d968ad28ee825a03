"""The one rule about a campaign's delivery counts: they move with the rows, in the same
transaction as the UPDATE, INSERT or DELETE that moved the rows.

``campaigns.<status>_count`` holds how many of the campaign's deliveries are in each status,
so read paths (status, list, the API, the dashboard, the error budget, "is it done?") read
one row instead of counting millions. Every statement that changes a delivery's status
lives in :mod:`.repo`, :mod:`.sweep_repo` or :mod:`.recipients`, and each calls
:func:`shift` (or :func:`moved`) with what it moved (the rowcount of a status-conditioned
UPDATE, or the rows its RETURNING gave). Several workers move the same campaign's counts at
once, so the UPDATE adds to the column (``sent_count = sent_count + n``); it never writes a
value read earlier. No trigger: the rule would then be written twice, once per SQL dialect.

The one exception: ``campaign prune`` (:mod:`.prune_repo`) deletes the rows of a campaign
that is over and keeps its counts, which say what the campaign did.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import InstrumentedAttribute, Session

from newsletter.campaigns.models import Campaign, DeliveryStatus

COLUMNS: dict[str, InstrumentedAttribute[int]] = {
    DeliveryStatus.queued.value: Campaign.queued_count,
    DeliveryStatus.inflight.value: Campaign.inflight_count,
    DeliveryStatus.sent.value: Campaign.sent_count,
    DeliveryStatus.failed.value: Campaign.failed_count,
    DeliveryStatus.skipped.value: Campaign.skipped_count,
    DeliveryStatus.unconfirmed.value: Campaign.unconfirmed_count,
}


def shift(db: Session, campaign_id: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` (status → rows gained, negative for rows lost) to one campaign's counts.

    Objects of this campaign already loaded in ``db`` have their counts expired (``fetch``),
    so a progress read later in the same transaction sees the new numbers.
    """
    changes = {status: n for status, n in deltas.items() if n}
    if not changes:
        return
    values: dict[Any, Any] = {COLUMNS[s]: COLUMNS[s] + n for s, n in changes.items()}
    db.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(values)
        .execution_options(synchronize_session="fetch")
    )


def moved(db: Session, from_status: str, rows: Iterable[tuple[int, str]]) -> int:
    """Shift the counts for delivery rows that left ``from_status``: ``rows`` are the
    ``(campaign_id, new status)`` pairs an UPDATE … RETURNING gave. Returns how many moved."""
    per_campaign: dict[int, Counter[str]] = defaultdict(Counter)
    total = 0
    for campaign_id, status in rows:
        per_campaign[campaign_id][status] += 1
        total += 1
    # Campaign rows locked in id order: two sweeps giving back rows of the same campaigns
    # take their locks in the same order.
    for campaign_id in sorted(per_campaign):
        arrived = per_campaign[campaign_id]
        deltas = Counter(arrived)
        deltas[from_status] -= sum(arrived.values())
        shift(db, campaign_id, deltas)
    return total


def counts_of(campaign: Campaign) -> dict[str, int]:
    """The campaign's deliveries by status, as kept on its row."""
    return {status: int(getattr(campaign, column.key)) for status, column in COLUMNS.items()}


def delivery_counts(db: Session, campaign_id: int) -> dict[str, int]:
    """Deliveries by status, as kept on the campaign row (all 0 for an unknown campaign)."""
    campaign = db.get(Campaign, campaign_id)
    if campaign is None:
        return {status.value: 0 for status in DeliveryStatus}
    return counts_of(campaign)


def final_counts(db: Session, campaign_id: int) -> tuple[int, int]:
    """(sent, failed) so far: what the error budget is judged on."""
    counts = delivery_counts(db, campaign_id)
    return counts[DeliveryStatus.sent], counts[DeliveryStatus.failed]
