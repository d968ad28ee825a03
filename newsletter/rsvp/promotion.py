"""The waitlist's timing rules around a promotion (the record's ``registration``):

- ``promotion_cutoff``: inside it before the start nobody moves up on their own (the rule is
  in the promotion statement, :func:`.waitlist_repo.held`); the organizer is told instead,
  once per freed seat (:func:`organizer_notices`, ``sessions.promotion_held_at``), and the
  dashboard's session page says so (:func:`held_line`);
- ``confirm_within``: a promoted person holds the seat until ``confirm_by`` and confirms it on
  their RSVP page (:func:`confirm_seat`); after that the seat passes to the next in line and
  they are told (:func:`lapse_due`).

Without these settings a promotion is as it always was: the seat is the person's at once.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.installation import installation_token
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.notice import build_notice
from newsletter.rsvp import promotion_repo, service
from newsletter.rsvp.models import Rsvp
from newsletter.rsvp.promotion_repo import Lapsed
from newsletter.sessions.models import SalonSession
from newsletter.sessions.offsets import iso_duration

log = logging.getLogger(__name__)


def held_now(salon: SalonSession, now: datetime) -> bool:
    """Whether ``now`` is inside the session's promotion cutoff (and before its start)."""
    if salon.promotion_cutoff_s is None:
        return False
    cutoff = salon.starts_at - timedelta(seconds=salon.promotion_cutoff_s)
    return cutoff <= now < salon.starts_at


def free_seats(salon: SalonSession) -> int:
    """Seats not taken (0 without a seat limit)."""
    return max(salon.capacity - salon.seats_taken, 0) if salon.capacity is not None else 0


def held_line(salon: SalonSession, now: datetime) -> str | None:
    """The dashboard's line about seats that wait for the organizer, or None."""
    if not held_now(salon, now) or not free_seats(salon) or not salon.waiting:
        return None
    assert salon.promotion_cutoff_s is not None
    cutoff = iso_duration(timedelta(seconds=salon.promotion_cutoff_s))
    return (
        f"距开始已不足 {cutoff}（promotion_cutoff）：空出的 {free_seats(salon)} 个名额不会"
        f"自动递补，候补名单上有 {salon.waiting} 人，请直接联系候补者。"
    )


def seat_deadline(answer: Rsvp | None, zone: str, now: datetime) -> str | None:
    """When ``answer``'s promoted seat must be confirmed by, in the session's time zone, or
    None when there is nothing to confirm (any more: past its time, the seat is passing on)."""
    if answer is None or not promotion_repo.pending(answer) or answer.confirm_by is None:
        return None
    if answer.confirm_by <= now:
        return None
    return answer.confirm_by.astimezone(ZoneInfo(zone)).strftime("%m月%d日 %H:%M")


def confirm_seat(db: Session, session_id: int, subscriber_id: int, now: datetime) -> bool:
    """The promoted person confirms their seat in time: True if it was theirs to confirm."""
    return promotion_repo.confirm(db, session_id, subscriber_id, now)


def lapse_due(db: Session, now: datetime) -> list[Lapsed]:
    """Every promoted seat not confirmed by its ``confirm_by`` passes on: the answer becomes
    "no" (the same rules as any "no": the next in line who fits is promoted, unless the
    session is inside its cutoff) and the person gets a mail saying so. The caller commits."""
    done: list[Lapsed] = []
    for lapsed in promotion_repo.due_lapses(db, now):
        try:
            with db.begin_nested():  # one seat that cannot pass on does not stop the others
                if not promotion_repo.claim_lapse(db, lapsed, now):
                    continue  # confirmed just now, or lapsed by another worker
                why = "lapsed: the promoted seat was not confirmed in time"
                service.give_up_answer(db, lapsed.session_id, lapsed.subscriber_id, why, now=now)
                promotion_repo.add_lapsed_notice(db, lapsed, now)
        except (InvalidStateError, NotFoundError) as refused:
            log.warning("waitlist: the seat of %s could not pass on: %s", lapsed, refused)
            continue
        done.append(lapsed)
    return done


@dataclass(frozen=True, slots=True)
class HeldNotice:
    """A mail telling the organizer of a seat held by the cutoff, and the session's
    ``promotion_held_at`` before it was claimed (to give the claim back if the mail fails)."""

    session_id: int
    told_before: datetime | None
    told_at: datetime
    mail: OutgoingMessage


def organizer_notices(db: Session, settings: Settings, now: datetime) -> list[HeldNotice]:
    """Mails to the organizer (``FROM_ADDRESS``, the club's own mailbox: there is no
    separate organizer address) for each session with a seat freed inside its promotion
    cutoff since they were last told; the caller commits, then sends, and gives a claim
    back with :func:`release_held` for a mail the relay did not take."""
    notices: list[HeldNotice] = []
    for salon in promotion_repo.held_candidates(db, now):
        if not held_now(salon, now):
            continue
        freed = promotion_repo.last_freed_at(db, salon.id)
        told = salon.promotion_held_at
        if told is not None and (freed is None or freed <= told):
            continue  # told about this seat already
        if promotion_repo.claim_held(db, salon, now):
            mail = _organizer_mail(db, settings, salon, now)
            notices.append(HeldNotice(salon.id, told, now, mail))
    return notices


def release_held(db: Session, notice: HeldNotice) -> None:
    """The organizer was not told after all (the relay refused or was down): the session's
    ``promotion_held_at`` goes back to what it was, so the next beat tries again; a beat that
    has claimed it since keeps its own claim."""
    promotion_repo.unclaim_held(db, notice.session_id, notice.told_at, notice.told_before)


def _organizer_mail(
    db: Session, settings: Settings, salon: SalonSession, now: datetime
) -> OutgoingMessage:
    line = held_line(salon, now) or "有名额空出，候补名单未自动递补。"
    page = f"{settings.base_url.rstrip('/')}/admin/sessions/{salon.number}"
    text = f"第 {salon.number} 期：{salon.title}\n\n{line}\n\n活动页面：{page}\n"
    body = (
        f"<p>第 {salon.number} 期：{html.escape(salon.title)}</p><p>{html.escape(line)}</p>"
        f'<p><a href="{html.escape(page)}">活动页面</a></p>'
    )
    name, address = parseaddr(settings.from_address)
    return build_notice(
        from_address=settings.from_address,
        mail_domain=settings.sender_domain,
        installation=installation_token(db),
        recipient_name=name,
        recipient_address=address,
        subject=f"候补未自动递补：第 {salon.number} 期有名额空出",
        text=text,
        html=body,
    )
