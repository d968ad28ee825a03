"""Database outages in tasks: one log line and the task again later, never a traceback.

``@survives_database_outages(countdown)`` wraps a task body: when the database does not
answer (a PostgreSQL restart, a failover; see :func:`newsletter.outages.is_database_outage`)
the task logs one line and enqueues itself again after ``countdown`` seconds with the same
arguments, on the broker or on the embedded worker alike. Nothing is lost: progress lives in
rows, and a task that ran half-way is idempotent. Any other exception goes to the worker,
which logs it (the embedded one in one line) and goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

from newsletter.outages import is_database_outage, outage_reason
from tasks.dispatch import enqueue_by_name

log = logging.getLogger(__name__)

P = ParamSpec("P")

# Seconds before a task that met a database outage runs again.
DATABASE_RETRY_SECONDS = 2.0


def survives_database_outages(
    name: str, countdown: float = DATABASE_RETRY_SECONDS
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Make the task ``name`` re-enqueue itself after a database outage (see module doc)."""

    def decorate(body: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                body(*args, **kwargs)
            except Exception as exc:
                if not is_database_outage(exc):
                    raise
                _again(name, args, countdown, outage_reason(exc))

        return run

    return decorate


def _again(name: str, args: tuple[Any, ...], countdown: float, reason: str) -> None:
    shown = ", ".join(str(arg) for arg in args)
    try:
        enqueue_by_name(name, list(args), countdown)
    except Exception as exc:  # the broker is gone too: beat's sweep restarts what is stalled
        log.warning(
            "%s(%s): the database is unreachable (%s) and the broker refused the retry (%s);"
            " the sweeper will pick it up",
            name,
            shown,
            reason,
            type(exc).__name__,
        )
        return
    log.warning(
        "%s(%s): the database is unreachable (%s); trying again in %.0f s",
        name,
        shown,
        reason,
        countdown,
    )
