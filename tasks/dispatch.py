"""Enqueueing tasks the same way in both modes.

With a broker, ``enqueue`` hands the task to Redis (``countdown`` delays it). In-process,
tasks that enqueue follow-up tasks (a batch scheduling the next batch) would recurse once per
batch; instead follow-ups go onto a local queue drained by the outermost call, in order of
the time they are due, so a million-recipient campaign runs as a flat loop with the same
task code, and a back-off is a sleep.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

from tasks.celery_app import app

_local = threading.local()
_order = itertools.count()


def enqueue(task: Any, *args: Any, countdown: float | None = None) -> None:
    """Run ``task(*args)`` on a worker (after ``countdown`` seconds), or in this process."""
    if not app.conf.task_always_eager:
        task.apply_async(args=args, countdown=countdown)
        return
    due = time.monotonic() + (countdown or 0.0)
    pending: list[tuple[float, int, Any, tuple[Any, ...]]] | None = getattr(_local, "pending", None)
    if pending is not None:  # already draining: the loop below will run it
        heapq.heappush(pending, (due, next(_order), task, args))
        return
    _local.pending = pending = [(due, next(_order), task, args)]
    try:
        while pending:
            when, _, next_task, next_args = heapq.heappop(pending)
            wait = when - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            next_task.apply(args=next_args).get()
    finally:
        _local.pending = None
