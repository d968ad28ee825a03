"""The database went away under a worker (a PostgreSQL restart, a failover): told in one
line, waited out, never a traceback.

:func:`is_database_outage` says whether an error is such an outage rather than a bug;
:func:`outage_reason` is its one-line description (the driver's first line: no SQL, no
parameters, so no address); :func:`patiently` runs a unit of work again until the database
answers or the patience runs out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

T = TypeVar("T")

# How long a batch holding unwritten outcomes keeps trying before it gives up (its rows
# then come back through the heartbeat rule, marked "may have been sent").
PATIENCE_SECONDS = 60.0
# Pause between two tries.
RETRY_SECONDS = 1.0


def is_database_outage(error: BaseException) -> bool:
    """Whether ``error`` means the database did not answer (refused, reset, shut down, no
    pooled connection in time), as opposed to a bug or a constraint."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


def outage_reason(error: BaseException) -> str:
    """A short reason for an outage: the driver's first line, without the statement."""
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__


def patiently(
    work: Callable[[], T],
    *,
    what: str,
    log: logging.Logger,
    patience: float = PATIENCE_SECONDS,
) -> T:
    """``work()``, tried again every second while the database is down, for ``patience``
    seconds; the outage is logged once (one line), and again when it is over."""
    deadline = time.monotonic() + patience
    failures = 0
    while True:
        try:
            result = work()
        except Exception as exc:
            if not is_database_outage(exc) or time.monotonic() >= deadline:
                raise
            if failures == 0:
                log.warning(
                    "%s: the database is unreachable (%s); trying again every %.0f s",
                    what,
                    outage_reason(exc),
                    RETRY_SECONDS,
                )
            failures += 1
            time.sleep(RETRY_SECONDS)
            continue
        if failures:
            log.info("%s: the database answers again (after %d tries)", what, failures + 1)
        return result
