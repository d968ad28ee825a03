"""Only requests for our own host name (``Host`` from BASE_URL) reach the app.

A request with another Host header gets 400: it did not come through a link we made, and a
page answered under a foreign name is how DNS rebinding reaches a dashboard on a private
address. Probes and scrapers (/healthz, /readyz, /metrics) reach a server by its address,
so those paths are exempt; they show nothing of anyone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from newsletter.web.ops import OPERATIONS_PATHS

LOOPBACK = ("127.0.0.1", "localhost")


def allowed_hosts(base_url: str) -> list[str]:
    """BASE_URL's host name; both loopback forms when it is a loopback one."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in LOOPBACK:
        return list(LOOPBACK)
    return [host]


def _header_form(host: str) -> bytes:
    """``host`` as a Host header carries it: IPv6 in brackets, a name in punycode."""
    if ":" in host:
        return f"[{host}]".encode("ascii")
    try:
        return host.encode("idna")
    except UnicodeError:  # not a valid name: it can only match itself
        return host.encode("utf-8")


class TrustedHosts:
    """400 for a request whose Host is not one of ``allowed_hosts`` (port aside), except on
    the operations paths. Starlette's TrustedHostMiddleware does the same with a parsed
    header object per request; this runs on every request of a burst, so it reads the raw
    header."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str]) -> None:
        self.app = app
        self._allowed = frozenset(_header_form(host) for host in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPERATIONS_PATHS:
            await self.app(scope, receive, send)
            return
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.rsplit(b":", 1)[0] if not value.endswith(b"]") else value
                break
        if host.lower() in self._allowed:
            await self.app(scope, receive, send)
            return
        await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
