"""Recording answers: idempotent, capacity and waitlist, promotion on a "no", the deadline,
and giving every answer up when a subscriber leaves the list.

Every way an answer is recorded comes here: the web app (:func:`answer_alone` on
PostgreSQL, :func:`record_answer` on SQLite), the CLI and tests (:func:`record_answer`), the
subscribers service when someone leaves the list (:func:`withdraw_answers`). The rules
themselves are one definition, in SQL (:mod:`newsletter.rsvp.decision_repo`, with its writes
in ``record_repo`` and ``waitlist_repo``, and PostgreSQL's one statement in ``answer_repo``);
this module runs it on each database and says in words why an answer was refused. On
PostgreSQL the steps of an answer are written once (:func:`_answering`) and run by a thin
sync shell (a caller's transaction) or async shell (the web app's driver pool).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Executable, Result, Select
from sqlalchemy.orm import Session

from newsletter.cache import BoundedCache
from newsletter.db import (
    AloneStatement,
    SessionStatement,
    fetch_row_alone,
    is_postgresql,
    utcnow,
)
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rsvp import (
    answer_repo,
    decision_repo,
    notice_repo,
    record_repo,
    repo,
    waitlist_repo,
)
from newsletter.rsvp.decision_repo import Shape
from newsletter.rsvp.models import Answer, Rsvp
from newsletter.sessions.models import SalonSession
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
class Answered:
    """An answer recorded by :func:`answer_alone`, and the version of the session then (the
    page's view of the session is kept per version)."""

    recorded: Recorded
    revision: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What a subscriber who left the list gave up."""

    sessions: list[int]  # ids of the sessions whose answer became "no"
    promoted: dict[int, list[int]]  # session id -> subscriber ids given the freed seats
    notices_dropped: int  # their mails not sent yet, given up


def closes_at(salon: SalonSession) -> datetime:
    """When answers close: the registration deadline, else the start of the session."""
    return salon.deadline or salon.starts_at


# A decision can meet a row it could not see (the same person's first two answers racing):
# it then writes nothing and is made again, at most this many times in all.
_DECISIONS = 3

Row = Mapping[Any, Any]
# One statement to run on PostgreSQL and its parameters: what :func:`_answering` asks for.
Step = tuple[Select[Any], dict[str, Any]]
T = TypeVar("T")


def record_answer(
    db: Session,
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    *,
    guests: int = 0,
    now: datetime | None = None,
) -> Recorded:
    """Record (or change) a subscriber's answer in the caller's transaction; the caller
    commits. The session's seat counter stays locked until then (PostgreSQL).

    A "yes" takes seats (one plus guests) while there are any, else joins the waitlist in
    order of answering; a "maybe" or "no" from a confirmed "yes" frees its seats, and the
    first on the waitlist who fit are promoted. Answering the same again changes nothing.
    """
    values = decision_repo.parameters(session_id, subscriber_id, answer, guests, now or utcnow())
    return _record(db, values)


def _record(db: Session, values: dict[str, Any]) -> Recorded:
    if is_postgresql(db):
        return _in_transaction(db, _answering(values))[1]
    return _record_sqlite(db, values)


async def answer_alone(
    url: str, session_id: int, subscriber_id: int, answer: Answer, guests: int, now: datetime
) -> Answered:
    """Record an answer on PostgreSQL with the answer statement committed on its own: one
    round trip (plus one per further seat given when a party frees several, and one to count
    the place of a waiting answer that kept it). Raises as :func:`record_answer` does."""
    values = decision_repo.parameters(session_id, subscriber_id, answer, guests, now)
    row, recorded = await _alone(url, _answering(values))
    return Answered(recorded, row["revision"], row["updated_at"])


# --- PostgreSQL: the answer as the statements it takes, run by two thin shells ------------


def _answering(values: dict[str, Any]) -> Generator[Step, Row | None, tuple[Row, Recorded]]:
    """The answer on PostgreSQL, as the statements it runs one after another: each is
    yielded with its parameters and sent back the row it returned. The same steps for the
    web app's driver pool (:func:`_alone`) and a caller's transaction (:func:`_in_transaction`).

    The statement's shape is the one for the kind of session this one was at its last answer
    in this process (with or without a seat limit: fewer reads, same rules), else the one
    for any session. Should the session have changed kind since (an import gave it a limit,
    or lifted it), that statement finds no session and writes nothing, and the answer is
    decided again by the statement for any session.
    """
    session_id = values["session_id"]
    shape = _shape_for(session_id)
    attempts = 0
    while True:
        found = yield answer_repo.answer_statement(shape), values
        assert found is not None, "the answer statement returns one row"
        row = found
        if not _undecided(row):
            break
        if shape is not Shape.ANY and not row["session_found"]:
            shape = Shape.ANY  # the session changed kind: not an attempt lost
            continue
        attempts += 1
        if attempts == _DECISIONS:
            break
    if row["session_found"]:
        _remember_limit(session_id, row["capacity"] is not None)
    _refuse_unless_allowed(row, values)
    _undecidable(row)
    promoted = [int(row["promoted"])] if row["promoted"] is not None else []
    if row["wrote"] and row["free_left"] and promoted:  # a party freed several seats
        while (moved := (yield waitlist_repo.promote_statement(), values)) is not None:
            if moved["promoted"] is None:
                break
            promoted.append(int(moved["promoted"]))
    place = None
    if _needs_count(row):  # a waiting answer that kept its place: count who is ahead
        counted = yield waitlist_repo.place_statement(), _place_values(row, values)
        place = int(counted["place"]) if counted is not None else 1
    return row, _recorded(row, values, promoted, place)


def _in_transaction(db: Session, steps: Generator[Step, Row | None, T]) -> T:
    """Run ``steps`` in ``db``'s transaction; what they return."""
    try:
        step = next(steps)
        while True:
            statement, parameters = step
            step = steps.send(_session_statement(statement).first_row(db, parameters))
    except StopIteration as done:
        result: T = done.value
        return result


async def _alone(url: str, steps: Generator[Step, Row | None, T]) -> T:
    """Run ``steps`` on the driver pool, each statement committed on its own."""
    try:
        step = next(steps)
        while True:
            statement, parameters = step
            row = await fetch_row_alone(url, _alone_statement(statement), parameters)
            step = steps.send(row)
    except StopIteration as done:
        result: T = done.value
        return result


# The statements are built once (lru_cache) and hash by identity: compiled once each.
@lru_cache(maxsize=8)
def _session_statement(statement: Select[Any]) -> SessionStatement:
    return SessionStatement(statement)


@lru_cache(maxsize=8)
def _alone_statement(statement: Select[Any]) -> AloneStatement:
    return AloneStatement(statement)


# Whether each session had a seat limit at its last answer in this process: which shape of
# the statement to try first. Never trusted for the rules (see :func:`_answering`).
_limits: BoundedCache[int, bool] = BoundedCache(64)


def _shape_for(session_id: int) -> Shape:
    limited = _limits.get(session_id)
    if limited is None:
        return Shape.ANY
    return Shape.LIMITED if limited else Shape.NO_LIMIT


def _remember_limit(session_id: int, limited: bool) -> None:
    _limits.put(session_id, limited)


# --- SQLite: the same decision, then its writes one by one ---------------------------------


def _record_sqlite(db: Session, values: dict[str, Any]) -> Recorded:
    """The decision, then its writes one by one, under the database's write lock."""
    _run(db, decision_repo.lock_sqlite(), values)
    row = _run(db, decision_repo.decision(), values).mappings().one()
    _refuse_unless_allowed(row, values)
    promoted: list[int] = []
    if row["writes"]:
        decided = {f"d_{name}": row[name] for name in row.keys()}  # noqa: SIM118 (a RowMapping)
        both = values | decided
        _run(db, record_repo.write_answer_sqlite(), both)
        _run(db, record_repo.write_counters_sqlite(), both)
        _run(db, record_repo.write_event_sqlite(), both)
        while (moved := _promote_sqlite(db, values)) is not None:
            promoted.append(moved)
    place = None
    if _needs_count(row):
        place = int(
            _run(db, waitlist_repo.place_statement(), _place_values(row, values)).scalar_one()
        )
    return _recorded(row, values, promoted, place)


def _promote_sqlite(db: Session, values: dict[str, Any]) -> int | None:
    """The next freed seat to the first waiting person who fits, or None."""
    free = _run(db, waitlist_repo.free_seats_sqlite(), values).scalar()
    if not free or free <= 0:
        return None
    picked = _run(db, waitlist_repo.pick_next_sqlite(), values | {"free": free}).first()
    if picked is None:
        return None
    moved = values | {"picked": picked.id, "p_guests": picked.guests}
    moved["p_subscriber_id"] = picked.subscriber_id
    _run(db, waitlist_repo.promote_sqlite(), moved)
    _run(db, waitlist_repo.promoted_counters_sqlite(), moved)
    _run(db, waitlist_repo.promoted_event_sqlite(), moved)
    return int(picked.subscriber_id)


def _run(db: Session, statement: Executable, values: dict[str, Any]) -> Result[Any]:
    """``statement`` with the values it names: Core would take any other key that is also a
    column's name for one more column to set."""
    names = _bind_names(statement)
    return db.execute(statement, {name: values[name] for name in names if name in values})


@lru_cache(maxsize=32)
def _bind_names(statement: Executable) -> frozenset[str]:
    # Statements hash by identity; the SQLite ones are built once (lru_cache) and live as long.
    return frozenset(statement.compile().params)  # type: ignore[attr-defined]


# --- what a decided row means, on both databases -------------------------------------------


def _undecided(row: Row) -> bool:
    """The decision met a row it could not see: nothing was written, decide again."""
    if row["writes"] and not row["wrote"]:
        return True
    # The session changed its limit while this was read (an import): read it again.
    return not row["session_found"] and bool(row["session_exists"])


def _undecidable(row: Row) -> None:
    """Still undecided after every attempt (the row kept changing under it): say so rather
    than report an answer that was not written."""
    if _undecided(row):
        raise InvalidStateError("the answer could not be recorded now: please try again")


def _refuse_unless_allowed(row: Row, values: dict[str, Any]) -> None:
    """Raise, in words, what the rules refused (nothing was written)."""
    if row["writes"] or row["unchanged"]:
        return
    session_id, subscriber_id = values["session_id"], values["subscriber_id"]
    if not row["session_found"]:
        raise NotFoundError(f"session #{session_id} does not exist")
    if row["status"] is None:
        raise NotFoundError(f"subscriber #{subscriber_id} does not exist")
    if row["status"] != SubscriberStatus.active and values["note"] is None:
        raise SubscriberNotActive(
            f"subscriber #{subscriber_id} is {row['status']}: only people on the list can answer"
        )
    if not row["open"]:
        raise AnswersClosed(f"answers for session #{session_id} are closed")
    if not row["guests_ok"]:
        raise InvalidStateError(f"this session allows at most {row['plus_ones']} guests")
    raise InvalidStateError(f"the answer for session #{session_id} could not be recorded")


def _needs_count(row: Row) -> bool:
    """Whether the answer waits without being new at the back of the line (whose place the
    statement knows from the session's count of those waiting)."""
    waiting = row["waitlisted"] if row["writes"] else row["old_waitlisted"]
    return bool(waiting) and not (row["writes"] and row["place"])


def _place_values(row: Row, values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the place count for a waiting answer that kept its place."""
    queue_no = row["queue_no"] if row["writes"] else row["old_queue_no"]
    return values | {"queue_no": queue_no, "rsvp_id": row["old_id"]}


def _recorded(row: Row, values: dict[str, Any], promoted: list[int], place: int | None) -> Recorded:
    """What was recorded; ``place`` is the counted place of an answer that kept it."""
    answer, guests = Answer(values["answer"]), int(values["guests"])
    waitlisted = bool(row["waitlisted"] if row["writes"] else row["old_waitlisted"])
    position = None
    if waitlisted:
        position = place if place is not None else row["place"] - len(promoted)
    return Recorded(answer, guests, waitlisted, position, bool(row["writes"]), promoted)


def withdraw_answers(
    db: Session, subscriber_id: int, why: str, *, now: datetime | None = None
) -> Withdrawn:
    """A subscriber left the list: every answer for a session still ahead becomes "no"
    (whatever the deadline), each freed seat goes to the next active people on the waitlist
    (who are mailed, as after any "no"), and their own mails not sent yet are given up.

    ``why`` (e.g. "unsubscribed (removed by organizer)") is kept on the history rows and on
    the dropped notices. Idempotent; the caller commits, after making the subscriber not
    active in the same transaction. Sessions are locked in id order, so two people leaving
    at once cannot deadlock; an answer of theirs being recorded right now holds the
    subscriber's row (``FOR SHARE``), so the status change waited for it and its answer is
    seen here, or it sees the status and records nothing.
    """
    now = now or utcnow()
    changed: list[int] = []
    promoted: dict[int, list[int]] = {}
    repo.lock_sessions_ahead(db, now)
    note = f"withdrawn: subscriber {why}"
    for session_id in repo.answered_ahead(db, subscriber_id, now):
        values = decision_repo.parameters(session_id, subscriber_id, Answer.no, 0, now, note)
        recorded = _record(db, values)
        if recorded.changed:
            changed.append(session_id)
        if recorded.promoted:
            promoted[session_id] = recorded.promoted
    dropped = notice_repo.drop_pending(db, subscriber_id, reason=f"not sent: subscriber {why}")
    return Withdrawn(changed, promoted, dropped)


def give_up_answer(
    db: Session, session_id: int, subscriber_id: int, why: str, *, now: datetime
) -> Recorded:
    """The answer becomes "no" for the person (``why`` goes on the history row, which has no
    mail): a promoted seat not confirmed in time. Works until the start, whatever the
    deadline; the freed seats go on by the usual rules. The caller commits."""
    values = decision_repo.parameters(session_id, subscriber_id, Answer.no, 0, now, why)
    return _record(db, values)


def current_answer(db: Session, session_id: int, subscriber_id: int) -> Rsvp | None:
    """The subscriber's answer, if any."""
    return repo.get(db, session_id, subscriber_id)
