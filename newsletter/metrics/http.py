"""Request latency, measured in each web process, labelled by route template.

Labels are the route's template (``/rsvp/{token}``), never the raw path: tokens are in
paths, and one series per token would both leak them and grow without bound.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Under ``serve --workers N`` the values live in PROMETHEUS_MULTIPROC_DIR (set by serve
# before the workers start) and every process's /metrics reports their sum.
REQUEST_SECONDS = Histogram(
    "newsletter_http_request_duration_seconds",
    "Time from a request's arrival in the app to the end of its response.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)

UNMATCHED = "unmatched"
# Methods named in the labels; any other a client makes up is "other" (bounded series).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The histogram's series by (method, route template, status): a bounded set, as routes are
# templates, methods the ones above and statuses the app's.
_series: dict[tuple[str, str, int], Histogram] = {}


class RequestTimer:
    """ASGI middleware observing :data:`REQUEST_SECONDS` for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            method = scope["method"] if scope["method"] in METHODS else "other"
            key = (method, getattr(route, "path", None) or UNMATCHED, status)
            series = _series.get(key)
            if series is None:  # labels() takes a lock and builds a key: once per series
                series = _series[key] = REQUEST_SECONDS.labels(key[0], key[1], str(status))
            series.observe(time.perf_counter() - start)
