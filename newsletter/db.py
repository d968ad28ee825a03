"""Engine, sessions and the declarative base; schema changes go through Alembic migrations.

How the web process reaches the database: two mechanisms, two pools, each for a reason.

* The RSVP confirmation (``POST /rsvp/…``, the burst after every send) on PostgreSQL: the
  driver pool (:func:`fetch_row_alone`, asyncpg, on the event loop). An answer is one
  statement committed on its own; through SQLAlchemy's asyncio layer a statement costs about
  500 µs of CPU, through a thread hand-off more, straight on the driver 50-100 µs: at a
  thousand answers a second the difference is the whole budget.
* Everything else (the RSVP page's GET, unsubscribe, the dashboard, the API, the calendar,
  and every answer on SQLite, which has no asyncio driver): a synchronous ORM
  :class:`~sqlalchemy.orm.Session` from :func:`session_scope`, in the thread FastAPI runs
  synchronous routes in. These are a person's clicks, not a burst, and the ORM and its
  services are the code's one way of saying everything else.

Both compile their SQL from the same SQLAlchemy statements (:class:`AloneStatement`); the
asyncio ORM engine (``AsyncSession.run_sync``) and its third pool are gone.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import asyncpg
from sqlalchemy import DateTime, Dialect, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from newsletter.config import get_settings

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
# threads; see web/app.py). Up to 10 more are opened for a moment under a peak. With the
# driver pool beside it a web process holds at most 10 + 10 + 16 connections.
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
    wait = _dependency_timeout()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=10,
        # An unreachable server fails the request within seconds (the web app answers 503)
        # rather than after the kernel's TCP timeout; a pool that is all in use, too.
        pool_timeout=wait,
        connect_args={"connect_timeout": max(2, math.ceil(wait))},  # libpq: whole seconds, ≥ 2
    )


def _dependency_timeout() -> float:
    """Seconds to wait for a connection (``NEWSLETTER_DEPENDENCY_TIMEOUT``)."""
    return get_settings().dependency_timeout


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The session factory bound to ``url``'s engine."""
    return _sessionmaker(_absolute(url))


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A unit of work: commits when the block ends, rolls back if it raises."""
    db = get_sessionmaker(url)()
    try:
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


_ASYNCPG = make_url("postgresql+asyncpg://").get_dialect()()


class AloneStatement:
    """A SQLAlchemy statement compiled once for asyncpg, to run in a transaction of its own
    with :func:`fetch_row_alone`.

    For the one statement a burst of requests runs: through SQLAlchemy's asyncio layer a
    statement costs about 500 µs of CPU (pool checkout, greenlet, BEGIN and COMMIT, result
    objects), straight on the driver 50-100 µs. The statement is still written once, in
    SQLAlchemy; only its execution skips the layers. Parameters reach the driver as they
    are (asyncpg encodes Python values itself): pass aware datetimes.
    """

    def __init__(self, statement: ClauseElement) -> None:
        self._compiled = cast(SQLCompiler, statement.compile(dialect=_ASYNCPG))
        self.sql = str(self._compiled)
        order = list(self._compiled.positiontup or ())
        # The constants a statement carries (literal()s, the 1 of "1 + guests") are the same
        # every time: worked out once, so that a call only places the caller's values.
        required = {name for name, bind in self._compiled.binds.items() if bind.required}
        constants = self._compiled.construct_params(dict.fromkeys(required)) or {}
        self._template = [None if name in required else constants[name] for name in order]
        self._places = [(index, name) for index, name in enumerate(order) if name in required]

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        """The positional arguments of the SQL for these named parameters."""
        values = list(self._template)
        for index, name in self._places:
            values[index] = parameters[name]
        return values


class SessionStatement:
    """A SQLAlchemy statement compiled once for the session's own driver, run in the
    session's transaction by :meth:`first_row`: for the answer statement, whose CTEs read
    one CTE several times, which SQLAlchemy's statement cache does not key correctly."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[str, SQLCompiler] = {}

    def first_row(self, db: Session, parameters: dict[str, Any]) -> Mapping[str, Any] | None:
        """The statement's first row (as a mapping) in ``session``'s transaction, or None."""
        dialect = db.get_bind().dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = cast(
                SQLCompiler, self._statement.compile(dialect=dialect)
            )
        values = compiled.construct_params(parameters)
        result = db.connection().exec_driver_sql(str(compiled), values)
        row = result.mappings().first()
        result.close()
        return cast(Mapping[str, Any] | None, row)


async def fetch_row_alone(
    url: str, statement: AloneStatement, parameters: dict[str, Any]
) -> Mapping[str, Any] | None:
    """Run ``statement`` on PostgreSQL in autocommit (one statement is atomic by itself, and
    needs no BEGIN or COMMIT round trip); its first row, or None."""
    pool = await _driver_pool(url)  # PostgreSQL: no relative path to resolve
    # No timeout on the wait for a free connection (a task per call, for a wait that only a
    # busy moment causes): opening one is bounded by the pool's connect timeout.
    async with pool.acquire() as connection:
        row: Mapping[str, Any] | None = await connection.fetchrow(
            statement.sql, *statement.arguments(parameters)
        )
        return row


# A statement of the driver pool that has not finished after this long is cancelled.
STATEMENT_TIMEOUT_S = 10.0

_driver_pools: dict[tuple[str, asyncio.AbstractEventLoop], asyncio.Task[asyncpg.Pool]] = {}


async def _driver_pool(url: str) -> asyncpg.Pool:
    """The process's asyncpg pool for ``url`` on the running loop, opened on first use (and
    again after a failed opening, e.g. while the database was down)."""
    key = (url, asyncio.get_running_loop())
    opening = _driver_pools.get(key)
    if opening is None or (opening.done() and not _opened(opening)):
        opening = _driver_pools[key] = asyncio.ensure_future(_open_driver_pool(url))
    return await asyncio.shield(opening)


def _opened(opening: asyncio.Task[asyncpg.Pool]) -> bool:
    """Whether a finished opening gave a pool (not an error, nor a cancellation)."""
    return not opening.cancelled() and opening.exception() is None


async def _open_driver_pool(url: str) -> asyncpg.Pool:
    _args, connect = _ASYNCPG.create_connect_args(make_url(url))
    # Statements run alone and change no session state, so a released connection needs no
    # reset (by default a round trip: RESET ALL, UNLISTEN *, …).
    wait = _dependency_timeout()
    return await asyncpg.create_pool(
        min_size=1,
        max_size=16,
        reset=_no_reset,
        # Connecting and each statement are bounded: the statements of this pool are the
        # single-row answers of web requests (milliseconds), so one that takes longer than
        # this is waiting on a server that is not answering; the request gets 503.
        timeout=wait,
        command_timeout=STATEMENT_TIMEOUT_S,
        # The answer statement is large (CTEs over one decision): planned once per
        # connection, not again for each answer's values (custom plans would be re-planned on
        # every execution, and a plan is all primary-key lookups whatever the values).
        server_settings={"plan_cache_mode": "force_generic_plan"},
        **connect,
    )


async def _no_reset(_connection: asyncpg.Connection) -> None:
    return None


async def close_async_connections() -> None:
    """Close this event loop's driver pools: a server calls it when it stops, so that its
    connections do not outlive the loop they belong to."""
    loop = asyncio.get_running_loop()
    for key in [key for key in _driver_pools if key[1] is loop]:
        opening = _driver_pools.pop(key)
        if opening.done() and _opened(opening):
            await opening.result().close()


@lru_cache(maxsize=8)
def is_postgresql_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (kept: asked on every answer)."""
    return make_url(url).get_backend_name() == "postgresql"


def is_postgresql(db: Session) -> bool:
    """Whether ``session`` talks to PostgreSQL (for SKIP LOCKED and bulk paths)."""
    return db.get_bind().dialect.name == "postgresql"
