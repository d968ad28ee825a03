"""Celery tasks. ``celery -A tasks worker`` finds the app here."""

from tasks.celery_app import app

__all__ = ["app"]
