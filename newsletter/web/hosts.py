"""Only requests for our own host name (``Host`` from BASE_URL) reach the app.

A request with another Host header gets 400: it did not come through a link we made, and a
page answered under a foreign name is how DNS rebinding reaches a dashboard on a private
address. Probes and scrapers (/healthz, /readyz, /metrics) reach a server by its address,
so those paths are exempt; they show nothing of anyone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from newsletter.web.ops import OPERATIONS_PATHS

LOOPBACK = ("127.0.0.1", "localhost")


def allowed_hosts(base_url: str) -> list[str]:
    """BASE_URL's host name; both loopback forms when it is a loopback one."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in LOOPBACK:
        return list(LOOPBACK)
    return [host]


class TrustedHosts:
    """Starlette's TrustedHostMiddleware, except for the operations paths."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str]) -> None:
        self.app = app
        self._exempt = OPERATIONS_PATHS
        self._checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._exempt:
            await self.app(scope, receive, send)
            return
        await self._checked(scope, receive, send)
