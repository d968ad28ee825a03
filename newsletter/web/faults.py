"""The database or the broker is unreachable: 503 with Retry-After, never a 500.

Connections are opened with short timeouts (``dependency_timeout``, see ``newsletter.db``), so
a request meets one of the errors below within seconds of an outage and gets a page saying
to try again shortly (JSON under /api). Nothing is kept broken: the next request opens new
connections, so service resumes by itself when the database or the broker is back.
"""

from __future__ import annotations

import logging
import socket

import asyncpg
import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc

from newsletter.web.pages import error_page

log = logging.getLogger(__name__)

# Seconds a client is asked to wait before trying again: a database restart takes a few.
RETRY_AFTER_S = 5

# Errors that mean "a dependency did not answer", from every layer that talks to one.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # psycopg: refused, reset, terminated, timed out, shut down
    sa_exc.InterfaceError,  # a connection that is already closed
    sa_exc.TimeoutError,  # no pooled connection free within pool_timeout
    sa_exc.DBAPIError,  # of these, only the disconnects (see is_unavailable)
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


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database or the broker is unreachable (not a bug)."""
    if isinstance(error, sa_exc.DBAPIError) and not isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return bool(error.connection_invalidated) or is_unavailable_cause(error.orig)
    return isinstance(error, UNAVAILABLE)


def is_unavailable_cause(error: BaseException | None) -> bool:
    """Whether a driver's error wrapped by SQLAlchemy is one of a lost connection."""
    if error is None or isinstance(error, sa_exc.DBAPIError):
        return False
    return isinstance(error, UNAVAILABLE)


def unavailable_response(request: Request) -> Response:
    """503 with Retry-After: JSON under /api, a page for people elsewhere."""
    headers = {"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"}
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"detail": "the database or the message broker is unavailable; try again shortly"},
            status_code=503,
            headers=headers,
        )
    response = error_page(
        503, "暂时无法服务", "服务暂时不可用，您的操作没有完成。请稍后几秒再试一次。"
    )
    response.headers.update(headers)
    return response


def install(app: FastAPI) -> None:
    """Answer the dependency errors of every route with 503 (others stay errors)."""

    async def unavailable(request: Request, error: Exception) -> Response:
        if not is_unavailable(error):
            raise error
        # One line, no traceback: an outage is an operational event, not a bug.
        log.warning(
            "%s %s: 503, a dependency is unavailable: %s: %s",
            request.method,
            getattr(request.scope.get("route"), "path", "?"),  # the template: no token
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return unavailable_response(request)

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)
