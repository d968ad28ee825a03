"""Recording answers: idempotent, capacity and waitlist, promotion on a "no", the deadline,
and giving every answer up when a subscriber leaves the list.

The one home of these rules: the web app, the CLI and the subscribers service (on unsubscribe,
bounce, suppression or removal) all come here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rsvp import notice_repo, repo
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp
from newsletter.rsvp.unlimited import save_unlimited_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus


class AnswersClosed(InvalidStateError):
    """The deadline (or the session itself) has passed, or the session was cancelled."""


class SubscriberNotActive(InvalidStateError):
    """The subscriber unsubscribed, bounced or was suppressed: leaving the list gave up their
    answers, and an old link cannot take a seat for someone we may not mail."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What was recorded for the person who answered, and who moved up because of it."""

    answer: Answer
    guests: int
    waitlisted: bool
    position: int | None  # place on the waitlist, 1 = next in line
    changed: bool  # False when the same answer was recorded again (a scanner, a double click)
    promoted: list[int] = field(default_factory=list)  # subscriber ids given a seat


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What a subscriber who left the list gave up."""

    sessions: list[int]  # ids of the sessions whose answer became "no"
    promoted: dict[int, list[int]]  # session id -> subscriber ids given the freed seats
    notices_dropped: int  # their mails not sent yet, given up


def closes_at(salon: SalonSession) -> datetime:
    """When answers close: the registration deadline, else the start of the session."""
    return salon.deadline or salon.starts_at


def record_answer(
    session: Session,
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    *,
    guests: int = 0,
    now: datetime | None = None,
) -> Recorded:
    """Record (or change) a subscriber's answer; the caller commits.

    A "yes" takes seats (one plus guests) while there are any, else joins the waitlist in
    order of answering; a "maybe" or "no" from a confirmed "yes" frees its seats, and the
    first on the waitlist who fit are promoted. Answering the same again changes nothing.
    """
    now = now or utcnow()
    salon = sessions_repo.get_by_id(session, session_id)
    if salon is None:
        raise NotFoundError(f"session #{session_id} does not exist")
    person = subscribers_repo.get_by_id(session, subscriber_id)
    if person is None:
        raise NotFoundError(f"subscriber #{subscriber_id} does not exist")
    if person.status != SubscriberStatus.active:
        raise SubscriberNotActive(
            f"subscriber #{subscriber_id} is {person.status}: only people on the list can answer"
        )
    if salon.cancelled:
        raise AnswersClosed(f"session {salon.number} was cancelled")
    if now >= closes_at(salon):
        raise AnswersClosed(f"answers for session {salon.number} closed at {closes_at(salon)}")
    registration = sessions_repo.record_of(salon).registration
    allowed = registration.plus_ones if registration else 0
    if not 0 <= guests <= allowed:
        raise InvalidStateError(f"session {salon.number} allows at most {allowed} guests")
    if salon.capacity is None:
        changed = save_unlimited_answer(session, session_id, subscriber_id, answer, guests, now)
        if changed is None:  # cancelled or closed since it was read above
            raise AnswersClosed(f"answers for session {salon.number} are closed")
        return Recorded(answer, guests, waitlisted=False, position=None, changed=changed)
    return _record_locked(session, salon, subscriber_id, answer, guests, now)


def withdraw_answers(
    session: Session, subscriber_id: int, why: str, *, now: datetime | None = None
) -> Withdrawn:
    """A subscriber left the list: every answer for a session still ahead becomes "no"
    (whatever the deadline), each freed seat goes to the next active people on the waitlist
    (who are mailed, as after any "no"), and their own mails not sent yet are given up.

    ``why`` (e.g. "unsubscribed (removed by organizer)") is kept on the history rows and on
    the dropped notices. Idempotent; the caller commits, after making the subscriber not
    active in the same transaction. Sessions are locked in id order, so two people leaving
    at once cannot deadlock. (For sessions without a seat limit, an answer racing the
    departure may still be recorded; it holds no seat, and no mail goes to someone not
    active.)
    """
    now = now or utcnow()
    changed: list[int] = []
    promoted: dict[int, list[int]] = {}
    # Locked before the answers are read: an answer being recorded right now (its status
    # check passed before this departure committed) is then seen and withdrawn as well.
    repo.lock_sessions_ahead(session, now)
    for session_id in repo.answered_ahead(session, subscriber_id, now):
        salon = sessions_repo.get_by_id(session, session_id)
        assert salon is not None, "answered_ahead joins the session row"
        recorded = _record_locked(
            session, salon, subscriber_id, Answer.no, 0, now, note=f"withdrawn: subscriber {why}"
        )
        if recorded.changed:
            changed.append(session_id)
        if recorded.promoted:
            promoted[session_id] = recorded.promoted
    dropped = notice_repo.drop_pending(session, subscriber_id, reason=f"not sent: subscriber {why}")
    return Withdrawn(changed, promoted, dropped)


def _record_locked(
    session: Session,
    salon: SalonSession,
    subscriber_id: int,
    answer: Answer,
    guests: int,
    now: datetime,
    *,
    note: str | None = None,
) -> Recorded:
    """An answer under the session's lock: every answer for a session with a seat limit, and
    a withdrawal (for any session, as it is rare and the lock is cheap).

    Every statement here runs while all other answers for the session wait, so the seats are
    counted once, the fit is decided in Python, and the waitlist is read only when seats are
    free (after a "no", or when the room grew): this path is what a burst of answers for an
    offline session queues on. ``note`` says why the answer changed when the person did not
    give it (they left the list).
    """
    limit = salon.capacity
    repo.lock_session(session, salon.id)
    rsvp, status = repo.get_with_status(session, salon.id, subscriber_id)
    if note is None and status != SubscriberStatus.active:  # left while this answer waited
        raise SubscriberNotActive(
            f"subscriber #{subscriber_id} is {status or 'gone'}: only people on the list can answer"
        )
    if rsvp is not None and rsvp.answer == answer and rsvp.guests == guests:
        position = repo.waitlist_position(session, rsvp) if rsvp.waitlisted else None
        return Recorded(answer, guests, rsvp.waitlisted, position, changed=False)
    was_confirmed = rsvp is not None and rsvp.answer == Answer.yes and not rsvp.waitlisted
    held = 1 + rsvp.guests if rsvp is not None and was_confirmed else 0
    taken_by_others = repo.seats_taken(session, salon.id) - held if limit is not None else 0
    if rsvp is None:
        rsvp = Rsvp(session_id=salon.id, subscriber_id=subscriber_id, answered_at=now)
        session.add(rsvp)
    rsvp.answer, rsvp.guests, rsvp.updated_at = answer, guests, now
    if answer == Answer.yes:
        if not was_confirmed and not rsvp.waitlisted:
            rsvp.answered_at = now  # a new "yes" queues behind those who said yes before
        rsvp.waitlisted = limit is not None and taken_by_others + 1 + guests > limit
    else:
        rsvp.waitlisted = False
    confirmed = answer == Answer.yes and not rsvp.waitlisted
    repo.add_event(session, rsvp, now, NoticeKind.confirmed if confirmed else None, note=note)
    free = 0 if limit is None else limit - taken_by_others - (1 + guests if confirmed else 0)
    promoted = _promote(session, salon.id, free, now) if free > 0 else []
    position = repo.waitlist_position(session, rsvp) if rsvp.waitlisted else None
    return Recorded(answer, guests, rsvp.waitlisted, position, changed=True, promoted=promoted)


def _promote(session: Session, session_id: int, free: int, now: datetime) -> list[int]:
    """Give ``free`` seats to the waitlist in order; someone too big for the seats left waits
    on, and someone no longer on the list is passed over. The waitlist is read in pages and
    only until the seats are gone."""
    promoted = []
    waiting_list = repo.waitlist(session, session_id)
    try:
        for waiting in waiting_list:
            needed = 1 + waiting.guests
            if needed > free:
                continue
            waiting.waitlisted = False
            waiting.updated_at = now
            free -= needed
            repo.add_event(session, waiting, now, NoticeKind.promoted)
            promoted.append(waiting.subscriber_id)
            if free <= 0:
                break
    finally:
        waiting_list.close()
    session.flush()
    return promoted


def current_answer(session: Session, session_id: int, subscriber_id: int) -> Rsvp | None:
    """The subscriber's answer, if any."""
    return repo.get(session, session_id, subscriber_id)
