"""The embedded worker: with no broker, this process runs its own tasks on one thread of it.

``enqueue`` (:mod:`tasks.dispatch`) hands a task over and returns at once in both modes;
with no ``NEWSLETTER_BROKER_URL`` the task goes onto this worker's due-time queue.

Protocol of the worker thread: it takes the task due first (ties in the order they were
handed over), runs it through Celery's ``Task.apply`` — the same task function, in a task
request, as a worker process runs it — and takes the next; a countdown is a due time on the
queue, never a sleep of the caller. Arguments go through JSON as they would through Redis,
so a task that could not travel through a broker fails here too. A task that raises is
logged in one line and the worker goes on with the next one. Progress lives in rows, so a
task that failed half-way leaves nothing that a retry or the sweep cannot find.

With beat (a long-lived process: the web app of ``newsletter serve`` or ``newsletter demo``)
the worker also runs celery_app's beat schedule on the same queue: the sweep and the RSVP
notices, each one interval after the start and then at that interval, as Celery beat does.

One thread, not a pool: SQLite takes one writer at a time, so a second thread would mostly
wait for the first one's lock; a campaign is a chain of bounded batch tasks, so notices and
the sweep take turns with a long campaign instead of waiting for its end; and a workload
that needs more is what the broker and ``newsletter worker`` processes are for.

Who starts it: the first ``enqueue`` of a process (a command that sends, an API call), or
:func:`start` with beat (the web app's lifespan). :func:`stop` ends it: the task in hand
finishes (within a timeout), tasks still queued are dropped. Their rows stay as they are:
the sweep of the next long-lived process, or ``campaign send`` again, picks them up.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery
from celery.schedules import maybe_schedule

from newsletter.config import get_settings
from tasks.celery_app import app, beat_schedule

log = logging.getLogger(__name__)

#: Seconds :func:`stop` waits by default for the task in hand: a batch notices a pause
#: within a second, but one message to a slow relay can take the SMTP timeout.
STOP_TIMEOUT_S = 10.0


@dataclass
class _BeatEntry:
    """One entry of the beat schedule: its task and when it last ran."""

    name: str
    task: str
    schedule: Any  # a celery.schedules.schedule: is_due(last_run_at) -> (due, next in s)
    last_run_at: datetime


@dataclass(order=True)
class _Job:
    """A task on the queue, ordered by due time (``time.monotonic``), then by hand-over."""

    due: float
    order: int
    name: str = field(compare=False)
    args: list[Any] = field(compare=False)
    beat: _BeatEntry | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(repr(arg) for arg in self.args)})"


class EmbeddedWorker:
    """One worker thread and its due-time queue (see the module doc). Started once, stopped
    once: :func:`stop` replaces the process's worker rather than restarting it."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._order = itertools.count()
        self._queued = 0  # jobs on the queue that are not beat entries
        self._running: _Job | None = None
        self._stopping = False
        self._beat = False
        self._thread = threading.Thread(target=self._work, name="embedded-worker", daemon=True)

    def start(self) -> None:
        """Start the thread; the tasks of celery_app's ``include`` are registered first, so
        that beat's entries, named by task name, find their task."""
        self._celery.loader.import_default_modules()
        self._thread.start()

    @property
    def runs_beat(self) -> bool:
        """Whether this worker runs the beat schedule (it lives as long as a web app)."""
        return self._beat

    def submit(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        """Queue the task ``name`` to run after ``countdown`` seconds; returns at once."""
        job = _Job(time.monotonic() + (countdown or 0.0), next(self._order), name, args)
        with self._cond:
            if self._stopping:
                # Only a task of a worker that is stopping gets here (its follow-up): the rows
                # it would have moved stay as they are, for the sweep.
                log.info("%s not run: the embedded worker is stopping", job)
                return
            heapq.heappush(self._queue, job)
            self._queued += 1
            self._cond.notify_all()

    def add_beat(self, schedule: dict[str, dict[str, Any]]) -> None:
        """Run ``schedule`` (celery_app's ``beat_schedule`` format) from now on; once only."""
        with self._cond:
            if self._beat or self._stopping:
                return
            self._beat = True
            for name, entry in schedule.items():
                every = maybe_schedule(entry["schedule"], app=self._celery)
                self._push_beat(_BeatEntry(name, entry["task"], every, self._celery.now()))

    def _push_beat(self, entry: _BeatEntry) -> None:
        # Called with the lock held.
        _, next_in = entry.schedule.is_due(entry.last_run_at)
        due = time.monotonic() + max(float(next_in), 0.0)
        heapq.heappush(self._queue, _Job(due, next(self._order), entry.task, [], beat=entry))
        self._cond.notify_all()

    def _idle(self) -> bool:
        return self._running is None and self._queued == 0

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task is running or queued (beat's next runs do not count); False if
        ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(self._idle, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Drop the queued tasks, let the one in hand finish (up to ``timeout`` seconds) and
        end the thread; False if the task in hand was still running at the timeout."""
        with self._cond:
            self._stopping = True
            dropped = Counter(job.name for job in self._queue if job.beat is None)
            self._queue.clear()
            self._queued = 0
            running = self._running
            self._cond.notify_all()
        if dropped:
            log.info(
                "embedded worker stopping; not run: %s (their rows wait for the sweep)",
                ", ".join(f"{name} ×{count}" for name, count in sorted(dropped.items())),
            )
        if self._thread.ident is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "embedded worker: %s still running after %.0f s; the rows it holds come back"
                " once its heartbeat stops",
                running,
                timeout,
            )
            return False
        return True

    def _work(self) -> None:
        _local.worker = self
        while (job := self._take()) is not None:
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    if job.beat is not None and not self._stopping:
                        job.beat.last_run_at = self._celery.now()
                        self._push_beat(job.beat)
                    self._cond.notify_all()

    def _take(self) -> _Job | None:
        """The next due job (waiting for it), or None once the worker stops."""
        with self._cond:
            while not self._stopping:
                if not self._queue:
                    self._cond.wait()
                    continue
                wait = self._queue[0].due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                job = heapq.heappop(self._queue)
                if job.beat is None:
                    self._queued -= 1
                self._running = job
                return job
            return None

    def _run(self, job: _Job) -> None:
        try:
            self._celery.tasks[job.name].apply(args=job.args, throw=True)
        except Exception as exc:  # one task's failure is not the worker's: log, go on
            log.error("task %s failed: %s", job, describe_failure(exc))
            log.debug("task %s failed", job, exc_info=True)


def describe_failure(exc: BaseException) -> str:
    """One line for a task's exception: its type, the first line of its message, and where
    it was raised (file:line of the innermost frame)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = frames[-1]
        text += f" (at {'/'.join(where.filename.split('/')[-2:])}:{where.lineno})"
    return text


_local = threading.local()  # .worker: set in a worker's own thread
_lock = threading.Lock()
_current: EmbeddedWorker | None = None


def active() -> bool:
    """Whether this process runs its tasks itself (no broker configured)."""
    return bool(app.conf.newsletter_embedded)


def _worker() -> EmbeddedWorker:
    own: EmbeddedWorker | None = getattr(_local, "worker", None)
    if own is not None:  # a task handing over its follow-ups: to its own worker, even stopping
        return own
    global _current
    with _lock:
        if _current is None:
            _current = EmbeddedWorker(app)
            _current.start()
        return _current


def submit(name: str, args: list[Any], countdown: float | None = None) -> None:
    """Hand the task ``name`` to this process's embedded worker (started if need be).

    ``args`` go through JSON, as through a broker: a TypeError for anything else."""
    _worker().submit(name, json.loads(json.dumps(args)), countdown)


def start(*, beat: bool) -> None:
    """Start this process's embedded worker, with the beat schedule (as the current settings
    give it) when ``beat``; a worker already running gains beat. No-op with a broker."""
    if not active():
        return
    worker = _worker()
    if beat:
        worker.add_beat(beat_schedule(get_settings()))


def stop(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop this process's embedded worker (see :meth:`EmbeddedWorker.stop`); the next
    hand-over starts a new one. True at once with no worker or with a broker."""
    global _current
    with _lock:
        worker, _current = _current, None
    return True if worker is None else worker.stop(timeout)


def wait_until_idle(timeout: float | None = None) -> bool:
    """Wait until this process's embedded worker has nothing running or queued (beat's next
    runs aside); False after ``timeout`` seconds. True at once with a broker: what remote
    workers do is read from the database, not from here."""
    with _lock:
        worker = _current
    return True if worker is None else worker.wait_until_idle(timeout)


def runs_beat() -> bool:
    """Whether the embedded worker asking (or else this process's) runs the beat schedule."""
    worker: EmbeddedWorker | None = getattr(_local, "worker", None) or _current
    return worker is not None and worker.runs_beat
