"""The mail answers trigger, sent from the outbox that the answers' history rows keep.

An answer commits its notice with itself (see ``RsvpEvent``); a sender claims due notices,
builds each mail from the rows as they are now, and records the outcome. A person who said
yes, then no before the mail went out, gets no confirmation; two quick "yes" clicks that
each changed something get one mail; someone who is no longer active (unsubscribed, bounced,
suppressed) when the sender claims the notice gets nothing, and the row says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.errors import DeliveryError
from newsletter.mail.message import OutgoingMessage
from newsletter.rsvp import notice_repo
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp
from newsletter.rsvp.notice_repo import DueNotice
from newsletter.rsvp.notices import build_rsvp_notice
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus

# A temporary refusal is retried after 1, 5, 15 and 60 minutes, then given up.
RETRY_DELAYS_S = (60, 300, 900, 3600)
BATCH = 100


@dataclass(frozen=True, slots=True)
class PreparedNotice:
    """One mail to send, or the reason there is none, and the outbox rows it settles."""

    ids: list[int]
    subscriber_id: int
    attempts: int
    message: OutgoingMessage | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to record for some outbox rows: done (with an error if given up) or retry later."""

    ids: list[int]
    error: str | None = None
    retry_at: datetime | None = None


def claim(
    db: Session, settings: Settings, *, session_id: int | None = None
) -> list[PreparedNotice]:
    """Lease a batch of due notices and build their mails; the caller commits the lease."""
    now = utcnow()
    due = notice_repo.claim_due(
        db,
        now=now,
        lease_until=now + timedelta(seconds=settings.inflight_timeout),
        session_id=session_id,
        limit=BATCH,
    )
    grouped: dict[tuple[int, int, NoticeKind], list[DueNotice]] = {}
    for notice in due:
        grouped.setdefault((notice.session_id, notice.subscriber_id, notice.kind), []).append(
            notice
        )
    # Read in the claiming transaction, after the lease: whoever left the list before this
    # moment is never mailed, whatever the notice and however long it waited for a retry.
    status = subscribers_repo.statuses(db, (notice.subscriber_id for notice in due))
    prepared = []
    for (salon_id, person_id, kind), notices in grouped.items():
        ids = [notice.id for notice in notices]
        attempts = max(notice.attempts for notice in notices)
        now_status = status.get(person_id, "gone")
        if now_status != SubscriberStatus.active:
            left = f"not sent: subscriber {now_status}"
            prepared.append(PreparedNotice(ids, person_id, attempts, None, left))
            continue
        current = rsvp_repo.get(db, salon_id, person_id)
        if not _still_true(kind, current):
            changed = "not sent: the answer changed before the mail went out"
            prepared.append(PreparedNotice(ids, person_id, attempts, None, changed))
            continue
        message = build_rsvp_notice(db, settings, salon_id, person_id, kind)
        gone = None if message else "not sent: the session or the subscriber is gone"
        prepared.append(PreparedNotice(ids, person_id, attempts, message, gone))
    return prepared


def _still_true(kind: NoticeKind, current: Rsvp | None) -> bool:
    """Whether what the notice says is still so: a seat (confirmed, promoted), a place on
    the waitlist (waitlisted), or no seat any more (lapsed)."""
    if kind is NoticeKind.lapsed:
        return current is None or current.answer != Answer.yes
    if current is None or current.answer != Answer.yes:
        return False
    return current.waitlisted == (kind is NoticeKind.waitlisted)


def after_failure(notice: PreparedNotice, error: DeliveryError) -> Outcome:
    """Retry a temporary failure after the next back-off step; give up on a permanent one."""
    if error.permanent or notice.attempts > len(RETRY_DELAYS_S):
        return Outcome(notice.ids, error=f"not sent: {error}")
    delay = RETRY_DELAYS_S[notice.attempts - 1]
    return Outcome(notice.ids, error=str(error), retry_at=utcnow() + timedelta(seconds=delay))


def record(db: Session, outcomes: list[Outcome]) -> None:
    """Store the outcomes of a batch; the caller commits."""
    for outcome in outcomes:
        notice_repo.settle(db, outcome.ids, error=outcome.error, retry_at=outcome.retry_at)
