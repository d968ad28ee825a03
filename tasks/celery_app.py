"""The Celery app, configured from ``newsletter.config``.

With ``NEWSLETTER_BROKER_URL`` tasks are published to the broker and run by ``newsletter
worker`` processes (``--beat`` runs the schedule below). Without one, this process runs them
itself on its embedded worker (:mod:`tasks.embedded`): the same task functions and the same
beat schedule, only the transport differs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from newsletter.config import Settings, get_settings

# Longer than the longest retry back-off, so Redis does not hand an unacknowledged task
# (acks_late) to a second worker while the first is still legitimately on it.
VISIBILITY_TIMEOUT_S = 2 * 60 * 60


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """What Celery beat runs, and how often: with a broker ``newsletter worker --beat``
    runs it, without one the embedded worker of a long-lived process (``newsletter serve``)."""
    return {
        "sweep": {"task": "campaigns.sweep", "schedule": settings.sweep_interval},
        # Mails of answers whose sender was never asked for (the broker was down, a crash).
        "rsvp-notices": {"task": "rsvp.notices", "schedule": settings.sweep_interval},
        # Confirmation, welcome and export mails whose sender was never asked for.
        "subscriber-mails": {"task": "subscribers.mails", "schedule": settings.sweep_interval},
        # Sign-ups not confirmed within NEWSLETTER_PENDING_DAYS: hourly is precise enough.
        "expire-pending": {"task": "subscribers.expire_pending", "schedule": 3600.0},
        # Automatic reminders whose moment has come: at the sweep's pace, so one is at most
        # an interval late; the database makes each one once, however many beats run.
        "reminders": {"task": "reminders.due", "schedule": settings.sweep_interval},
        # Promoted seats not confirmed in time pass on; seats held by a promotion cutoff are
        # told to the organizer: at the sweep's pace, each once, however many beats run.
        "waitlist": {"task": "waitlist.tick", "schedule": settings.sweep_interval},
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``: JSON only, late acks, one task per prefetch.

    ``conf.newsletter_embedded`` says whether tasks run on the embedded worker (no broker).
    """
    celery = Celery(
        "newsletter",
        include=[
            "tasks.campaigns",
            "tasks.rsvp",
            "tasks.subscribers",
            "tasks.reminders",
            "tasks.waitlist",
        ],
    )
    celery.conf.update(
        # Never used without a broker: tasks then go to the embedded worker, not to Celery.
        broker_url=settings.broker_url or "memory://",
        newsletter_embedded=settings.broker_url is None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A broker that does not answer must not hold a web thread or a command for long:
        # connect and socket timeouts of the dependency timeout, and a publish is retried
        # briefly (two more tries within about a second), then fails: the web app answers
        # 503, the campaign rows stay as they are, and beat's sweep or a resend picks up.
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_connect_timeout": settings.dependency_timeout,
            "socket_timeout": settings.dependency_timeout,
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.4,
            "interval_max": 1.0,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
    )
    return celery


app = make_celery(get_settings())
