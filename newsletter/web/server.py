"""How uvicorn serves the app: limits, timeouts, proxy trust and logging, in one place.

``newsletter serve``, the tests' live servers and the benchmarks all start uvicorn with
:func:`server_options`, so what they exercise is what production runs.

uvicorn has a keep-alive timeout and a concurrency limit, but no deadline for a request's
headers: a client that opens a connection and sends half a request line would hold it for
ever (and enough of them hold every connection the process allows). The protocol below adds
that deadline (``request_timeout``, answered with 408) and a cap on the size of the headers
(431), which httptools, unlike h11, does not have. The body's deadline and size are the app's
(:mod:`newsletter.web.limits`).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from newsletter.config import Settings, get_settings
from newsletter.logs import uvicorn_log_config

# Request line and headers together; browsers send 1-4 KiB, a cookie-laden one up to ~8 KiB.
MAX_HEADER_BYTES = 32 * 1024


def _refusal(status: bytes, message: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n",
            b"content-length: ",
            str(len(message)).encode("ascii"),
            b"\r\n\r\n",
            message,
        ]
    )


REQUEST_TIMEOUT = _refusal(b"408 Request Timeout", b"The request did not arrive in time.\n")
HEADERS_TOO_LARGE = _refusal(
    b"431 Request Header Fields Too Large", b"The request headers are too large.\n"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap for request headers.

    The clock starts when a connection opens and when the first byte of each further request
    on it arrives (between requests uvicorn's keep-alive timeout applies), and stops when the
    headers are complete.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = get_settings().request_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HEADERS_TOO_LARGE)
            # Stops the parser: uvicorn's answer to a parser error goes nowhere now that the
            # connection is closed.
            raise ValueError("request headers over the limit")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_header_clock()
        super().on_headers_complete()

    def _start_header_clock(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._refuse(REQUEST_TIMEOUT)
        elif not self.transport.is_closing() and self.cycle is None:
            # Connected but silent since: nothing to answer, only a connection to free.
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._stop_header_clock()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` from the settings.

    Proxy headers are believed only from ``NEWSLETTER_FORWARDED_ALLOW_IPS`` (uvicorn's own
    default trusts loopback, which lets anyone on the host, or a proxy that passes the
    header through, pick their address and so their login-throttle bucket).
    """
    trusted = settings.forwarded_allow_list
    return {
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": max(1, math.ceil(settings.keepalive_timeout)),
        # uvicorn counts the connection being decided among those open: + 1 serves exactly
        # max_connections at once, the next one gets 503.
        "limit_concurrency": settings.max_connections + 1,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted if trusted else "",
        "server_header": False,
        "access_log": False,
        "log_config": uvicorn_log_config(settings),
    }
