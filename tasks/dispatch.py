"""Handing tasks over, the same way in both modes: ``enqueue`` always returns at once.

With a broker the task is published to Redis (``countdown`` delays it) and a ``newsletter
worker`` runs it; without one it goes onto this process's embedded worker
(:mod:`tasks.embedded`), which runs the same task on its own thread when it is due. Nothing
runs in the caller's thread, so an HTTP request or a command never sends a campaign itself.
"""

from __future__ import annotations

from typing import Any

from tasks import embedded
from tasks.celery_app import app


def enqueue(task: Any, *args: Any, countdown: float | None = None) -> None:
    """Have ``task(*args)`` run (after ``countdown`` seconds) by a worker; returns at once.

    With a broker a publish that fails raises (the caller tells the user, rows stay as they
    are); without one the hand-over cannot fail short of arguments that are not JSON."""
    enqueue_by_name(task.name, list(args), countdown)


def enqueue_by_name(name: str, args: list[Any], countdown: float | None = None) -> None:
    """:func:`enqueue` for a task known by its name only (a task re-enqueueing itself from a
    wrapper that runs before Celery's task object exists)."""
    if embedded.active():
        embedded.submit(name, args, countdown)
        return
    app.send_task(name, args=args, countdown=countdown)


def probes_forever() -> bool:
    """Whether a campaign waiting for the relay is probed for as long as it takes.

    Yes with a broker, and on the embedded worker of a long-lived process (one that runs
    beat: the web app). A command's own embedded worker ends with the command, which waits
    for the campaign: there the campaign pauses once the back-off table is used up, so that
    the command ends and says so (``service.wait_for_relay``)."""
    return not embedded.active() or embedded.runs_beat()
