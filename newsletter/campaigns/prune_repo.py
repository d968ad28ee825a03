"""SQL of ``campaign prune``: which campaigns' delivery rows may go, and their removal in
batches (see :mod:`.prune`).

The delivery rows go; the campaign row stays, with its counts (:mod:`.counts_repo`), which
therefore do not move here: they describe what the campaign did, and that stays true.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from newsletter.campaigns.models import Campaign, CampaignStatus, Delivery
from newsletter.db import utcnow

# A campaign is only pruned once it is over: these states never go back to sending.
OVER = (CampaignStatus.finished, CampaignStatus.cancelled)


def ended_before(db: Session, before: datetime) -> list[Campaign]:
    """Campaigns that ended (finished or cancelled) before ``before`` and still have their
    delivery rows, oldest first."""
    return list(
        db.scalars(
            select(Campaign)
            .where(
                Campaign.status.in_(OVER),
                Campaign.finished_at < before,
                Campaign.pruned_at.is_(None),
            )
            .order_by(Campaign.finished_at, Campaign.id)
        )
    )


def still_going(db: Session, before: datetime) -> list[Campaign]:
    """Campaigns created before ``before`` that are not over: prune leaves them alone."""
    return list(
        db.scalars(
            select(Campaign)
            .where(
                Campaign.status.not_in(OVER),
                Campaign.created_at < before,
                or_(Campaign.queued_count > 0, Campaign.inflight_count > 0),
            )
            .order_by(Campaign.id)
        )
    )


def delete_some(db: Session, campaign_id: int, status: str, after: int, limit: int) -> list[int]:
    """Delete the campaign's next ``limit`` delivery rows in ``status`` with ids above
    ``after``, lowest first; returns their ids.

    Keyset order on the (campaign_id, status, id) index: each batch starts where the last one
    ended, rather than scanning again past the index entries of the rows already deleted."""
    some = (
        select(Delivery.id)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == status, Delivery.id > after)
        .order_by(Delivery.id)
        .limit(limit)
        .scalar_subquery()
    )
    return list(
        db.scalars(
            delete(Delivery)
            .where(Delivery.id.in_(some))
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
    )


def mark_pruned(db: Session, campaign_id: int) -> None:
    """Note that the campaign's delivery rows are gone (its counts stay)."""
    db.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(pruned_at=utcnow())
        .execution_options(synchronize_session=False)
    )
