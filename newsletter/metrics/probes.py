"""Asking the database and the broker whether they answer, within ``dependency_timeout``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.connection import Connection

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.metrics import repo


def is_redis(url: str | None) -> bool:
    """Whether ``url`` names a Redis broker (``redis://``, ``rediss://``, ``unix://``)."""
    return bool(url) and str(url).split("://", 1)[0] in ("redis", "rediss", "unix")


@contextmanager
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """A Redis connection to the broker that gives up after ``dependency_timeout``."""
    assert settings.broker_url, "only called with a broker configured"
    wait = settings.dependency_timeout
    client = redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=wait, socket_timeout=wait
    )
    try:
        yield client
    finally:
        client.close()


def ping_database(settings: Settings) -> None:
    """One round trip to the database; raises when it does not answer."""
    with session_scope(settings.database_url) as db:
        repo.ping(db)


def ping_broker(settings: Settings) -> None:
    """A PING to a Redis broker (another broker: a connection); raises when it fails."""
    if is_redis(settings.broker_url):
        with redis_client(settings) as client:
            client.ping()
        return
    connection = Connection(  # type: ignore[no-untyped-call]
        settings.broker_url, connect_timeout=settings.dependency_timeout
    )
    with connection as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.dependency_timeout)


def broker_queue_length(settings: Settings, queue: str) -> int:
    """Tasks waiting in ``queue`` of a Redis broker (the length of its list)."""
    with redis_client(settings) as client:
        return int(client.llen(queue))
