"""Every SQL statement about subscribers and tags, named and explained in one place.

Single-row operations use the ORM or one Core statement; the CSV import uses the bulk functions
at the end, which send one statement per chunk of rows, never one per row, so 100,000 rows take
seconds: on SQLite ``executemany`` and multi-row ``VALUES``; on PostgreSQL whole columns as
array parameters (``= ANY(:emails)``, ``INSERT … SELECT FROM unnest(…)``). ``INSERT … ON
CONFLICT`` comes from the dialect-specific ``insert()`` (both databases support it); it makes a
concurrent writer's row a no-op instead of a unique-constraint failure that would abort the
whole transaction.

Nothing here commits: the caller's unit of work (``session_scope``) decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Integer,
    Table,
    Text,
    any_,
    bindparam,
    column,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

from newsletter.db import is_postgresql
from subscribers.models import Subscriber, SubscriberStatus, Tag, subscriber_tags

# Core tables for the bulk paths: ORM-enabled statements would add per-row bookkeeping.
SUBSCRIBERS = cast(Table, Subscriber.__table__)
TAGS = cast(Table, Tag.__table__)

# Rows per statement. SQLite allows 32,766 bound parameters: 5,000 addresses in one IN list stay
# well below (SQLAlchemy pages multi-row VALUES itself). Large enough to amortise round trips,
# small enough to keep each statement's memory modest.
LOOKUP_CHUNK = 5_000
WRITE_CHUNK = 2_000

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert(db: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` with ``ON CONFLICT`` support for the session's database."""
    return postgresql.insert(table) if is_postgresql(db) else sqlite.insert(table)


# ---------------------------------------------------------------------------------------------
# One subscriber


def get_by_email(db: Session, email: str) -> Subscriber | None:
    """The subscriber with this (already normalised) address, if any."""
    return db.scalars(select(Subscriber).where(Subscriber.email == email)).one_or_none()


def get_by_id(db: Session, subscriber_id: int) -> Subscriber | None:
    """The subscriber with this id, if any."""
    return db.get(Subscriber, subscriber_id)


def insert_subscriber(
    db: Session,
    *,
    email: str,
    name: str,
    locale: str,
    status: SubscriberStatus,
    reason: str | None,
    now: datetime,
) -> int | None:
    """Insert one subscriber; its id, or None when the address exists already.

    ``ON CONFLICT DO NOTHING`` rather than check-then-insert: two organizers adding the same
    address at once get "already subscribed", not an integrity error.
    """
    stmt = (
        _insert(db, SUBSCRIBERS)
        .values(
            email=email,
            name=name,
            locale=locale,
            status=status.value,
            created_at=now,
            status_changed_at=None if status is SubscriberStatus.active else now,
            status_reason=reason,
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(SUBSCRIBERS.c.id)
    )
    return db.execute(stmt).scalar_one_or_none()


def set_status(
    db: Session,
    subscriber_id: int,
    status: SubscriberStatus,
    reason: str | None,
    now: datetime,
    *,
    only_from: Iterable[SubscriberStatus] | None = None,
) -> bool:
    """Change one subscriber's status; whether a row changed.

    ``only_from`` makes the change conditional in the same statement (e.g. unsubscribe only an
    *active* subscriber, so a web click can never turn "bounced" back into a softer status),
    which is race-free where read-then-write would not be.
    """
    stmt = (
        update(SUBSCRIBERS)
        .where(SUBSCRIBERS.c.id == subscriber_id)
        .values(status=status.value, status_changed_at=now, status_reason=reason)
    )
    if only_from is not None:
        stmt = stmt.where(SUBSCRIBERS.c.status.in_([s.value for s in only_from]))
    else:
        stmt = stmt.where(SUBSCRIBERS.c.status != status.value)
    result = cast(CursorResult[Any], db.execute(stmt))
    changed = result.rowcount > 0
    if changed:
        # The ORM may hold this row already (the service looked it up): expire it so that the
        # next read of its attributes shows the new status instead of the stale one.
        cached = db.identity_map.get(db.identity_key(Subscriber, subscriber_id))
        if cached is not None:
            db.expire(cached)
    return changed


def delete_subscriber(db: Session, subscriber_id: int) -> None:
    """Delete one subscriber and their tag links.

    Deliveries, RSVPs and RSVP events reference subscribers without ``ON DELETE``: the database
    itself refuses (IntegrityError) to delete someone with history, which is what we want, and
    saves this package from knowing about the tables of the packages above it.
    """
    db.execute(delete(SUBSCRIBERS).where(SUBSCRIBERS.c.id == subscriber_id))
    db.expire_all()


# ---------------------------------------------------------------------------------------------
# Listing and counting


def _filters(status: SubscriberStatus | None, tag: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(Subscriber.status == status.value)
    if tag is not None:
        # A semi-join (IN subquery), not a JOIN: a subscriber appears once whatever the tags.
        tagged = (
            select(subscriber_tags.c.subscriber_id)
            .join(TAGS, TAGS.c.id == subscriber_tags.c.tag_id)
            .where(TAGS.c.name == tag)
        )
        conditions.append(Subscriber.id.in_(tagged))
    return conditions


def list_subscribers(
    db: Session,
    *,
    status: SubscriberStatus | None,
    tag: str | None,
    limit: int,
    offset: int,
    after_id: int = 0,
) -> list[Subscriber]:
    """One page of subscribers in id order (tags are loaded in one extra query by selectin).

    ``after_id``: only ids above it, so a whole-list export pages by the primary key instead
    of an offset that rereads every row before it.
    """
    stmt = (
        select(Subscriber)
        .where(*_filters(status, tag), Subscriber.id > after_id)
        .order_by(Subscriber.id)
        .limit(limit)
        .offset(offset)
    )
    return list(db.scalars(stmt))


def count_subscribers(db: Session, *, status: SubscriberStatus | None, tag: str | None) -> int:
    """How many subscribers match the filters."""
    stmt = select(func.count()).select_from(Subscriber).where(*_filters(status, tag))
    return int(db.scalar(stmt) or 0)


def statuses(db: Session, subscriber_ids: Iterable[int]) -> dict[int, str]:
    """The current status of each of these subscribers (ids not found are absent), read
    from the database even when the ORM holds the rows: a sender asks right before mailing."""
    wanted = sorted(set(subscriber_ids))
    found: dict[int, str] = {}
    for chunk in chunked(wanted, LOOKUP_CHUNK):
        where = _one_of(db, SUBSCRIBERS.c.id, chunk, Integer())
        rows = db.execute(select(SUBSCRIBERS.c.id, SUBSCRIBERS.c.status).where(where))
        found.update({subscriber_id: status for subscriber_id, status in rows})
    return found


def count_by_status(db: Session) -> dict[str, int]:
    """Subscribers per status (statuses with none are absent)."""
    stmt = select(Subscriber.status, func.count()).group_by(Subscriber.status)
    return {status: int(n) for status, n in db.execute(stmt)}


# ---------------------------------------------------------------------------------------------
# Bulk helpers. On PostgreSQL a list travels as ONE array parameter (``= ANY(:a)``, ``unnest``):
# a statement with thousands of placeholders is slow to build and psycopg re-parses such long
# statements on every execution, while an array is one binary value and a short, cached query.


def _one_of(
    db: Session, column: ColumnElement[Any], values: Sequence[Any], item: TypeEngine[Any]
) -> ColumnElement[bool]:
    """``column IN (…)``, or ``column = ANY(:array)`` on PostgreSQL."""
    if is_postgresql(db):
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(item)))
    return column.in_(values)


def _unnest(**arrays: tuple[Sequence[Any], TypeEngine[Any]]) -> TableValuedAlias:
    """PostgreSQL ``unnest(:a, :b, …) AS src(a, b, …)``: parallel arrays as rows."""
    binds = [bindparam(None, list(v), type_=postgresql.ARRAY(t)) for v, t in arrays.values()]
    names = [column(name, t) for name, (_, t) in arrays.items()]
    return func.unnest(*binds).table_valued(*names).render_derived(name="src")


# ---------------------------------------------------------------------------------------------
# Tags


def ensure_tags(db: Session, names: Iterable[str]) -> dict[str, int]:
    """Ids for these (normalised) tag names, creating the missing ones in bulk."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    for chunk in chunked(wanted, WRITE_CHUNK):
        # DO NOTHING then SELECT: RETURNING would skip tags that already existed.
        stmt = _insert(db, TAGS).on_conflict_do_nothing(index_elements=["name"])
        db.execute(stmt, [{"name": name} for name in chunk])
    ids: dict[str, int] = {}
    for chunk in chunked(wanted, LOOKUP_CHUNK):
        where = _one_of(db, TAGS.c.name, chunk, Text())
        rows = db.execute(select(TAGS.c.name, TAGS.c.id).where(where))
        ids.update({name: tag_id for name, tag_id in rows})
    return ids


def link_tags(db: Session, links: Sequence[tuple[int, int]]) -> None:
    """Attach tags to subscribers: ``(subscriber_id, tag_id)`` pairs; existing pairs are kept."""
    for chunk in chunked(links, WRITE_CHUNK):
        if is_postgresql(db):
            src = _unnest(
                subscriber_id=([sid for sid, _ in chunk], Integer()),
                tag_id=([tid for _, tid in chunk], Integer()),
            )
            pg_stmt = postgresql.insert(subscriber_tags).from_select(
                ["subscriber_id", "tag_id"], select(src.c.subscriber_id, src.c.tag_id)
            )
            db.execute(pg_stmt.on_conflict_do_nothing())
        else:
            rows = [{"subscriber_id": sid, "tag_id": tid} for sid, tid in chunk]
            db.execute(sqlite.insert(subscriber_tags).on_conflict_do_nothing(), rows)


def unlink_tags(db: Session, subscriber_id: int, tag_ids: Iterable[int]) -> None:
    """Detach these tags from one subscriber (the preference page's topics: one statement)."""
    wanted = sorted(set(tag_ids))
    if wanted:
        db.execute(
            delete(subscriber_tags).where(
                subscriber_tags.c.subscriber_id == subscriber_id,
                subscriber_tags.c.tag_id.in_(wanted),
            )
        )
        db.expire_all()  # a loaded Subscriber.tags must not show the detached tags


def set_paused_until(db: Session, subscriber_id: int, until: datetime | None) -> None:
    """Pause all campaign mail to one subscriber until ``until`` (None: not paused).

    Read by ``campaigns.recipients.mailable`` both when a campaign picks its recipients and
    when a worker claims a queued delivery, so a pause stops mail already queued too.
    """
    db.execute(
        update(SUBSCRIBERS).where(SUBSCRIBERS.c.id == subscriber_id).values(paused_until=until)
    )
    cached = db.identity_map.get(db.identity_key(Subscriber, subscriber_id))
    if cached is not None:
        db.expire(cached)


def tag_ids_of(db: Session, subscriber_ids: Sequence[int]) -> dict[int, set[int]]:
    """The tag ids each of these subscribers has (subscribers without tags are absent)."""
    found: dict[int, set[int]] = {}
    owner = subscriber_tags.c.subscriber_id
    for chunk in chunked(subscriber_ids, LOOKUP_CHUNK):
        stmt = select(owner, subscriber_tags.c.tag_id).where(_one_of(db, owner, chunk, Integer()))
        for sid, tid in db.execute(stmt):
            found.setdefault(sid, set()).add(tid)
    return found


# ---------------------------------------------------------------------------------------------
# Bulk paths for the CSV import


@dataclass(frozen=True, slots=True)
class NewRow:
    """A subscriber to insert: values already normalised."""

    email: str
    name: str
    locale: str


@dataclass(frozen=True, slots=True)
class ExistingRow:
    """What the import needs to know about an address that is already stored."""

    id: int
    name: str
    locale: str
    status: str


def find_existing(db: Session, emails: Sequence[str]) -> dict[str, ExistingRow]:
    """Stored subscribers among these normalised addresses, keyed by address.

    One query per 5,000 addresses, using the unique index on ``email``.
    """
    found: dict[str, ExistingRow] = {}
    s = SUBSCRIBERS.c
    for chunk in chunked(emails, LOOKUP_CHUNK):
        stmt = select(s.email, s.id, s.name, s.locale, s.status).where(
            _one_of(db, s.email, chunk, Text())
        )
        for email, sid, name, locale, status in db.execute(stmt):
            found[email] = ExistingRow(sid, name, locale, status)
    return found


def insert_many(
    db: Session,
    rows: Sequence[NewRow],
    now: datetime,
    *,
    status: SubscriberStatus = SubscriberStatus.active,
    source: str | None = None,
) -> dict[str, int]:
    """Insert new subscribers in bulk (*active*, or ``pending`` for an import that asks them
    to confirm); the ids of those inserted, keyed by address. ``source`` is how they joined.

    An address that another transaction inserted meanwhile is skipped by ``ON CONFLICT DO
    NOTHING`` and is missing from the result, so the caller can treat it as existing instead of
    failing the whole import.
    """
    s = SUBSCRIBERS.c
    status_value = status.value
    ids: dict[str, int] = {}
    for chunk in chunked(rows, WRITE_CHUNK):
        if is_postgresql(db):
            src = _unnest(
                email=([r.email for r in chunk], Text()),
                name=([r.name for r in chunk], Text()),
                locale=([r.locale for r in chunk], Text()),
            )
            values = select(
                src.c.email,
                src.c.name,
                src.c.locale,
                literal(status_value, Text()),
                literal(now, s.created_at.type),
                literal(source, Text()),
            )
            pg_stmt = postgresql.insert(SUBSCRIBERS).from_select(
                ["email", "name", "locale", "status", "created_at", "source"], values
            )
            result = db.execute(
                pg_stmt.on_conflict_do_nothing(index_elements=["email"]).returning(s.email, s.id)
            )
        else:
            params = [
                {
                    "email": r.email,
                    "name": r.name,
                    "locale": r.locale,
                    "status": status_value,
                    "created_at": now,
                    "source": source,
                }
                for r in chunk
            ]
            # A list of parameter sets with RETURNING: SQLAlchemy sends multi-row VALUES
            # ("insertmanyvalues") and still yields every new id.
            lite_stmt = sqlite.insert(SUBSCRIBERS).on_conflict_do_nothing(index_elements=["email"])
            result = db.execute(lite_stmt.returning(s.email, s.id), params)
        ids.update({email: sid for email, sid in result})
    return ids


def update_profiles(db: Session, changes: Sequence[tuple[int, str, str]]) -> None:
    """Set ``(id, name, locale)`` on existing subscribers in bulk.

    The status column is deliberately not written: an import never changes who may be mailed.
    """
    s = SUBSCRIBERS.c
    for chunk in chunked(changes, WRITE_CHUNK):
        if is_postgresql(db):
            src = _unnest(
                id=([sid for sid, _, _ in chunk], Integer()),
                name=([name for _, name, _ in chunk], Text()),
                locale=([locale for _, _, locale in chunk], Text()),
            )
            # UPDATE … FROM unnest(…): one statement for the whole chunk.
            stmt = (
                update(SUBSCRIBERS)
                .where(s.id == src.c.id)
                .values(name=src.c.name, locale=src.c.locale)
            )
            db.execute(stmt)
        else:
            params = [{"b_id": sid, "b_name": n, "b_locale": loc} for sid, n, loc in chunk]
            stmt = (
                update(SUBSCRIBERS)
                .where(s.id == bindparam("b_id"))
                .values(name=bindparam("b_name"), locale=bindparam("b_locale"))
            )
            db.execute(stmt, params)  # executemany
