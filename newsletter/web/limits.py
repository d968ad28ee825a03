"""Limits on what a client may send: the size of a request body and the time it may take.

A pure ASGI middleware, outermost in the app, so that nothing (form parsing, JSON parsing,
the bearer check) sees a body before it is known to be small enough and on time:

* a ``Content-Length`` over ``max_body_bytes`` gets 413 at once, unread;
* a chunked body is counted as it streams; the chunk that crosses the limit is dropped and
  the request gets 413 (never more than the limit is held in memory);
* a body that has not arrived whole ``request_timeout`` seconds after the request began gets
  408 (a client trickling bytes must not hold a connection for ever).

Each refusal closes the connection (``Connection: close``): the rest of the body is never
read. The headers' own deadline is the protocol's (see :mod:`newsletter.web.server`), as the
app only sees a request once its headers are complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    """The request body is over the limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"请求内容超过 {limit} 字节的上限。", headers=dict(CLOSE))


class BodyTooSlow(HTTPException):
    """The request body did not arrive in time (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"请求内容未在 {timeout_s:g} 秒内传完。", headers=dict(CLOSE))


class RequestLimits:
    """Refuse bodies over ``max_body_bytes`` (413) and bodies slower than ``timeout_s`` (408).

    ``refuse(scope, error)`` builds the response when the refusal happens before the app has
    started one (e.g. the same error page the app's handlers render).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        timeout_s: float,
        refuse: Callable[[Scope, HTTPException], Response],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self.refuse(scope, BodyTooLarge(self.max_body_bytes))(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        body = _LimitedBody(receive, self.max_body_bytes, self.timeout_s)
        try:
            await self.app(scope, body.receive, tracking_send)
        except (BodyTooLarge, BodyTooSlow) as error:
            # Raised by body.receive where no route handler turned it into a page.
            if started:
                raise
            await self.refuse(scope, error)(scope, receive, send)


class _LimitedBody:
    """A ``receive`` that counts body bytes and keeps to the request's deadline."""

    def __init__(self, receive: Receive, limit: int, timeout_s: float) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._seen = 0
        self._complete = False

    async def receive(self) -> Message:
        if self._complete:  # after the body: only a disconnect can come, and may take long
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                message = await self._receive()
        except TimeoutError:
            raise BodyTooSlow(self._timeout_s) from None
        if message["type"] != "http.request":
            self._complete = True
            return message
        self._seen += len(message.get("body", b""))
        if self._seen > self._limit:
            raise BodyTooLarge(self._limit)
        if not message.get("more_body", False):
            self._complete = True
        return message


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the protocol refuses a malformed length before we run
    return None
