"""The database or the broker is unreachable: 503 with Retry-After, never a 500.

Connections are opened with short timeouts (``dependency_timeout``, see ``newsletter.db``), so
a request meets one of the outage errors of :mod:`newsletter.outages` within seconds and gets
a page saying to try again shortly (JSON under /api). Nothing is kept broken: the next request
opens new connections, so service resumes by itself when the database or the broker is back.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from newsletter.outages import UNAVAILABLE, is_unavailable
from newsletter.web.pages import error_page

log = logging.getLogger(__name__)

# Seconds a client is asked to wait before trying again: a database restart takes a few.
RETRY_AFTER_S = 5


def unavailable_response(request: Request) -> Response:
    """503 with Retry-After: JSON under /api, a page for people elsewhere."""
    headers = {"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"}
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"detail": "the database or the message broker is unavailable; try again shortly"},
            status_code=503,
            headers=headers,
        )
    response = error_page(
        503, "暂时无法服务", "服务暂时不可用，您的操作没有完成。请稍后几秒再试一次。"
    )
    response.headers.update(headers)
    return response


def install(app: FastAPI) -> None:
    """Answer the dependency errors of every route with 503 (others stay errors)."""

    async def unavailable(request: Request, error: Exception) -> Response:
        if not is_unavailable(error):
            raise error
        # One line, no traceback: an outage is an operational event, not a bug.
        log.warning(
            "%s %s: 503, a dependency is unavailable: %s: %s",
            request.method,
            getattr(request.scope.get("route"), "path", "?"),  # the template: no token
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return unavailable_response(request)

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)
