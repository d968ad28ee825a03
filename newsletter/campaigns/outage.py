"""The database went away under a worker (a PostgreSQL restart, a failover): told in one
line, waited out, never a traceback.

:func:`patiently` runs a unit of work again until the database answers or the patience
runs out; what counts as an outage is :mod:`newsletter.outages`'s rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from newsletter.outages import is_database_outage, outage_reason

T = TypeVar("T")

# How long a batch holding unwritten outcomes keeps trying before it gives up (its rows
# then come back through the heartbeat rule, marked "may have been sent").
PATIENCE_SECONDS = 60.0
# Pause between two tries.
RETRY_SECONDS = 1.0


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
