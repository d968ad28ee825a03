"""The /metrics registry of a process, and the separate listener of ``metrics_listen``."""

from __future__ import annotations

import os
from functools import lru_cache

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from newsletter.config import Settings, get_settings
from newsletter.errors import ConfigurationError
from newsletter.metrics.collector import DatabaseCollector
from newsletter.metrics.http import REQUEST_SECONDS

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def build_registry(settings: Settings) -> CollectorRegistry:
    """A registry with the database counts and the request latency of this process (or, under
    ``serve --workers N``, of every worker: prometheus-client's multiprocess files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings))
    if os.environ.get(MULTIPROCESS_DIR):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REQUEST_SECONDS)
    return registry


@lru_cache(maxsize=1)
def _process_registry() -> CollectorRegistry:
    return build_registry(get_settings())


def render() -> bytes:
    """The exposition of this process's registry (queries the database now)."""
    return generate_latest(_process_registry())


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) of ``NEWSLETTER_METRICS_LISTEN``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"NEWSLETTER_METRICS_LISTEN={value!r}: give host:port, e.g. 127.0.0.1:9100"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def start_listener(settings: Settings) -> tuple[str, int]:
    """Serve /metrics without a token on ``settings.metrics_listen`` (a thread of this
    process); the address it listens on."""
    assert settings.metrics_listen, "only called with a listen address configured"
    host, port = parse_listen(settings.metrics_listen)
    start_http_server(port, addr=host, registry=_process_registry())
    return host, port
