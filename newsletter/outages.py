"""Whether an error means a dependency did not answer (an outage) rather than a bug.

One home for the rule, used by the web app (503 with Retry-After), the workers and the
heartbeat (wait it out, one log line), the metrics and /readyz:

* :func:`is_database_outage`: the database refused, reset, shut down, timed out, or no
  pooled connection was free in time (SQLAlchemy's wrapping of any driver);
* :func:`is_unavailable`: that, or the same kinds of failure met below SQLAlchemy (the raw
  asyncpg pool, sockets) or at the broker (Redis, kombu).

:func:`outage_reason` is the one-line description: the driver's first line, without the
statement or its parameters, so no address reaches a log.
"""

from __future__ import annotations

import socket

import asyncpg
import kombu.exceptions
import redis.exceptions
from sqlalchemy import exc as sa_exc

# Lost connections met outside SQLAlchemy's wrapping, from every layer that talks to a
# dependency. SQLAlchemy's own errors are judged by is_database_outage.
DRIVER_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,  # refused or reset straight from a driver's socket
    TimeoutError,  # a connect, pool or command timeout of asyncpg or asyncio
    socket.gaierror,  # the host name does not resolve
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,  # a publish that found no broker
)

# Every class an outage can arrive as (the web app installs a handler for each).
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # psycopg: refused, reset, terminated, timed out, shut down
    sa_exc.InterfaceError,  # a connection that is already closed
    sa_exc.TimeoutError,  # no pooled connection free within pool_timeout
    sa_exc.DBAPIError,  # of these, only the disconnects (see is_database_outage)
    *DRIVER_UNAVAILABLE,
)


def is_database_outage(error: BaseException) -> bool:
    """Whether ``error``, raised through SQLAlchemy, means the database did not answer."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error.orig, DRIVER_UNAVAILABLE)
    return False


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database or the broker is unreachable (not a bug)."""
    return is_database_outage(error) or isinstance(error, DRIVER_UNAVAILABLE)


def outage_reason(error: BaseException) -> str:
    """A short reason for an outage: the driver's first line, without the statement."""
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
