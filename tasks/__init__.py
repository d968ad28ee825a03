"""Celery tasks. ``celery -A tasks worker`` finds the app here; without a broker the
embedded worker of the process that hands them over runs them (:mod:`tasks.embedded`)."""

from tasks.celery_app import app

__all__ = ["app"]
