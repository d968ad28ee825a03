"""Engine, sessions and the declarative base; schema changes go through Alembic migrations."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Dialect, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite keeps no offset, so without this a value written aware would come back naive and
    compare wrongly with aware values from records.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Base of every ORM model."""

    metadata = MetaData(naming_convention=NAMING)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web app read while a campaign writes; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _absolute(url: str) -> str:
    """The URL with a relative SQLite path made absolute against the current directory.

    Engines are cached per URL; ``sqlite:///var/newsletter.db`` must not keep pointing at the
    file of whichever directory the process was in when it first connected.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(str(parsed.database))
        if not path.is_absolute():
            return parsed.set(database=str(path.resolve())).render_as_string(hide_password=False)
    return url


def get_engine(url: str) -> Engine:
    """One engine per database URL for the life of the process."""
    return _engine(_absolute(url))


# Connections each process keeps open to PostgreSQL (the web app runs this many handler
# threads; see web/app.py). Up to 10 more are opened for a moment under a peak.
POOL_SIZE = 10


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=10)


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The session factory bound to ``url``'s engine."""
    return _sessionmaker(_absolute(url))


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A unit of work: commits when the block ends, rolls back if it raises."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


T = TypeVar("T")


async def run_unit(url: str, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` as one unit of work (committed at the end, rolled back if it
    raises) from async code, without blocking the event loop.

    PostgreSQL: on an asyncio connection, through SQLAlchemy's greenlet bridge
    (``AsyncSession.run_sync``): the same synchronous service code, with no hand-off to a
    thread. Under a burst of RSVP confirmations those hand-offs, and the threads taking turns
    at the GIL, cost more than the answer itself. SQLite (no asyncio driver): ``work`` runs in
    a worker thread inside :func:`session_scope`.
    """
    absolute = _absolute(url)
    if make_url(absolute).get_backend_name() != "postgresql":
        return await asyncio.to_thread(_run_in_scope, absolute, work)
    factory = _async_sessionmaker(absolute, asyncio.get_running_loop())
    async with factory() as session, session.begin():
        return await session.run_sync(work)


def _run_in_scope(url: str, work: Callable[[Session], T]) -> T:
    with session_scope(url) as session:
        return work(session)


# Keyed by the event loop too: an asyncio connection belongs to the loop that opened it (a
# test suite starts many servers, each with its own loop; a server process has one).
@lru_cache(maxsize=8)
def _async_sessionmaker(
    url: str, _loop: asyncio.AbstractEventLoop
) -> async_sessionmaker[AsyncSession]:
    # No overflow: with the synchronous pool beside it, a web process holds at most 36.
    engine = create_async_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=0)
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgresql(session: Session) -> bool:
    """Whether ``session`` talks to PostgreSQL (for SKIP LOCKED and bulk paths)."""
    return session.get_bind().dialect.name == "postgresql"
