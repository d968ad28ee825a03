"""Enqueueing tasks the same way in both modes.

With a broker, ``enqueue`` hands the task to Redis. In-process, tasks that enqueue follow-up
tasks (a batch scheduling the next batch) would recurse once per batch; instead follow-ups go
onto a local queue drained by the outermost call, so a million-recipient campaign runs as a
flat loop with the same task code.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from tasks.celery_app import app

_local = threading.local()


def enqueue(task: Any, *args: Any) -> None:
    """Run ``task(*args)`` on a worker, or in this process when no broker is configured."""
    if not app.conf.task_always_eager:
        task.apply_async(args=args)
        return
    pending: deque[tuple[Any, tuple[Any, ...]]] | None = getattr(_local, "pending", None)
    if pending is not None:  # already draining: the loop below will run it
        pending.append((task, args))
        return
    _local.pending = pending = deque([(task, args)])
    try:
        while pending:
            next_task, next_args = pending.popleft()
            next_task.apply(args=next_args).get()
    finally:
        _local.pending = None
