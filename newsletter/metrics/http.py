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
            template = getattr(route, "path", None) or UNMATCHED
            REQUEST_SECONDS.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
