"""Change notices: telling people that a session changed after its invitation went out.

When an import changes a session that was announced (an invitation of it started sending),
the notice-worthy part of the change (:func:`newsletter.sessions.changes.diff_records`) is
kept in a *pending* notice: a draft change campaign whose occasion is ``revision-N`` (the
record's revision now) and whose ``details`` hold the change lines. The record before the
import is overwritten, so the draft is where "what changed" survives until someone sends it.
A second change before the notice went out is merged into the same draft
(:meth:`ChangeSet.then`: the oldest value and the newest; a value changed back drops out),
so people get one notice saying what is different from what they were told.

Sending (``sessions import --notify``, the dashboard's button) snapshots the audience and
starts the draft. The unique index on (session, kind, occasion) makes "one notice per record
revision" a database fact: once revision N's notice went out, nothing more is sent for it,
however often the command runs; the next change makes revision N+1 and a new draft.

A change notice is the one campaign a cancelled session may have: it says 已取消 and its
calendar part is ``METHOD:CANCEL`` (see ``campaigns.compiled``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from newsletter.campaigns import change_notices_repo as repo
from newsletter.campaigns import service
from newsletter.campaigns.change_notices_repo import Audience, occasion_of
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus
from newsletter.db import utcnow
from newsletter.errors import InvalidStateError
from newsletter.rendering import change_subject
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.changes import ChangeSet, diff_records
from newsletter.sessions.models import SalonSession
from newsletter.sessions.schema import SessionRecord
from newsletter.sessions.service import require_session

__all__ = ["Audience", "NoticeState", "SendOutcome", "record_change", "send_pending", "state"]

PENDING_REASON = "变更通知待发送（sessions import --notify 或管理页面的按钮）"


def record_change(
    db: Session, salon: SalonSession, before: SessionRecord, *, timezone: str
) -> ChangeSet:
    """After an import changed ``salon`` (its record was ``before``): keep what is worth
    telling in the session's pending notice. Returns the changes the pending notice now
    announces (empty: nothing to tell, and no pending notice is left).

    Nothing is kept for a session that was never announced: nobody was told anything.
    """
    if not repo.announced(db, salon.id):
        return ChangeSet(())
    record = sessions_repo.record_of(salon)
    draft = repo.pending(db, salon.id)
    earlier = ChangeSet.from_json(draft.details) if draft is not None else ChangeSet(())
    changes = earlier.then(diff_records(before, record, timezone=timezone))
    if not changes:
        if draft is not None:  # changed back to what people were told: nothing to say
            db.delete(draft)
            db.flush()
        return changes
    if draft is None:
        draft = Campaign(
            session_id=salon.id,
            kind=CampaignKind.change,
            status=CampaignStatus.draft,
            status_reason=PENDING_REASON,
            created_at=utcnow(),
        )
        db.add(draft)
    draft.occasion = occasion_of(salon.revision)
    draft.subject = change_subject(record)
    draft.details = changes.to_json()
    db.flush()
    return changes


@dataclass(frozen=True, slots=True)
class NoticeState:
    """A session's change notice as the import and the dashboard show it."""

    number: int
    revision: int
    # What the pending notice would announce (empty: nothing pending).
    changes: ChangeSet
    # Who it would reach now: answered yes, maybe or waitlist; and everyone invited.
    answered: int
    invited: int
    # The notice already made for the current revision and sent (or sending), if any.
    sent_id: int | None

    @property
    def can_send(self) -> bool:
        """Whether there is a notice to send for the current revision."""
        return bool(self.changes) and self.sent_id is None


def state(db: Session, salon: SalonSession) -> NoticeState | None:
    """The session's change notice now; None when it was never announced (nothing to tell)."""
    if not repo.announced(db, salon.id):
        return None
    current = repo.notice_for(db, salon.id, salon.revision)
    sent_id = current.id if current is not None and current.status != CampaignStatus.draft else None
    draft = repo.pending(db, salon.id)
    changes = ChangeSet.from_json(draft.details) if draft is not None else ChangeSet(())
    return NoticeState(
        number=salon.number,
        revision=salon.revision,
        changes=changes,
        answered=repo.count_audience(db, salon.id, Audience.answered),
        invited=repo.count_audience(db, salon.id, Audience.invited),
        sent_id=sent_id,
    )


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What :func:`send_pending` did: ``campaign_id`` to start sending after the commit
    (None: nothing to send), ``already_sent`` the notice of this revision that went out."""

    number: int
    revision: int
    campaign_id: int | None = None
    recipients: int = 0
    already_sent: int | None = None
    # False: the session's invitation never went out, so there is nobody to tell.
    announced: bool = True

    @property
    def start(self) -> bool:
        """Whether the caller must enqueue the sending after the commit."""
        return self.campaign_id is not None and self.recipients > 0


def send_pending(
    db: Session, number: int, audience: Audience, *, revision: int | None = None
) -> SendOutcome:
    """Make session ``number``'s pending notice ready to send to ``audience``: deliveries
    snapshotted, status sending. Nothing when the current revision's notice went out already
    (``already_sent``) or nothing is pending. With nobody to tell, the notice is finished at
    once (it was due, and is not due again). :class:`NotFoundError` for an unknown number;
    :class:`InvalidStateError` when ``revision`` (what the organizer saw) is no longer the
    record's: the notice would say more than they were shown."""
    repo.lock_session(db, number)
    salon = require_session(db, number)
    if not repo.announced(db, salon.id):
        return SendOutcome(number, salon.revision, announced=False)
    if revision is not None and revision != salon.revision:
        raise InvalidStateError(
            f"session {number} was re-imported since (revision {salon.revision}, not {revision})"
        )
    current = repo.notice_for(db, salon.id, salon.revision)
    if current is not None and current.status != CampaignStatus.draft:
        return SendOutcome(number, salon.revision, already_sent=current.id)
    draft = repo.pending(db, salon.id)
    if draft is None:
        return SendOutcome(number, salon.revision)
    locked = draft  # read under the session's lock: nobody else is sending it
    locked.recipient_count = repo.snapshot_audience(db, locked, audience)
    if locked.recipient_count == 0:
        locked.status = CampaignStatus.finished
        locked.started_at = locked.finished_at = utcnow()
        locked.status_reason = "nobody to tell"
    else:
        service.start_campaign(db, locked.id)
    return SendOutcome(number, salon.revision, locked.id, locked.recipient_count)
