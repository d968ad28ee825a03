"""A worker process's heartbeat: "I am alive and hold rows", written every few seconds.

Rows in flight name their worker (``claimed_by``). While a batch holds rows, a thread of
the process upserts the worker's ``worker_heartbeats`` row every ``heartbeat_interval``
seconds, in a transaction of its own that no other statement waits behind (a report that
waits for the campaign row must not hold it up). The claim loop and the sweeper give back rows whose
worker's heartbeat is :data:`DEAD_AFTER_BEATS` intervals old (:func:`repo.requeue_orphans`):
a killed worker's rows are sending again within seconds, not after a timeout of minutes.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType

from newsletter.campaigns import sweep_repo
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.outages import is_database_outage, outage_reason

log = logging.getLogger(__name__)

# A worker whose heartbeat is this many intervals old is taken for dead: one missed beat
# (a slow database) is not enough, three are.
DEAD_AFTER_BEATS = 3


def dead_after(settings: Settings) -> timedelta:
    """How old a heartbeat may be before the worker's rows are given back."""
    return timedelta(seconds=DEAD_AFTER_BEATS * settings.heartbeat_interval)


def stuck_after(settings: Settings) -> timedelta:
    """How long a claim may go unrenewed, heartbeat or not (a worker stuck in one send)."""
    return timedelta(seconds=settings.inflight_timeout)


def give_back_orphans(settings: Settings, campaign_id: int | None = None) -> int:
    """Re-queue the rows of dead or stuck workers (of one campaign, or of all)."""
    with session_scope(settings.database_url) as db:
        return sweep_repo.requeue_orphans(
            db,
            dead_after=dead_after(settings),
            stuck_after=stuck_after(settings),
            campaign_id=campaign_id,
        )


class Heartbeat:
    """``with Heartbeat(settings, worker):`` beats in a daemon thread for the block's length."""

    def __init__(self, settings: Settings, worker: str) -> None:
        self.settings = settings
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        quiet = False  # log an outage once, not every beat
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                with session_scope(self.settings.database_url) as db:
                    sweep_repo.record_heartbeat(db, self.worker)
                quiet = False
            except Exception as exc:
                if not is_database_outage(exc):
                    log.warning("heartbeat of %s failed: %s", self.worker, exc)
                elif not quiet:
                    log.warning("heartbeat: the database is unreachable (%s)", outage_reason(exc))
                quiet = True
