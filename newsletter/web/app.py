"""The FastAPI application: routes, and error handling that never answers 500 to bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from newsletter.config import get_settings
from newsletter.db import POOL_SIZE, close_async_connections
from newsletter.metrics.http import RequestTimer
from newsletter.web import (
    api,
    calendar_routes,
    checkin,
    dashboard,
    dashboard_changes,
    dashboard_login,
    faults,
    feedback,
    inbound_webhook,
    ops,
    preferences,
    public,
    public_feeds,
    rsvp,
    subscribe,
    unsubscribe,
)
from newsletter.web.admin_session import LOGIN_PATH, LoginRequired, csrf_token, current_login
from newsletter.web.dashboard_login import redirect
from newsletter.web.hosts import TrustedHosts, allowed_hosts
from newsletter.web.limits import RequestLimits
from newsletter.web.pages import error_page, page
from tasks import embedded

_TITLES = {
    400: "请求无效",
    403: "无法确认",
    404: "找不到页面",
    405: "不支持的操作",
    409: "无法完成",
    410: "链接已过期",
    408: "请求超时",
    413: "请求过大",
    415: "不支持的格式",
}


_DEFAULT_MESSAGES = {
    404: "这个地址不存在。请检查邮件中的链接是否完整。",
    405: "这个地址不支持这种请求。",
}


def _admin_path(request: Request) -> bool:
    path = request.url.path
    return path == "/admin" or path.startswith("/admin/")


def _admin_error(request: Request, status_code: int, title: str, detail: str) -> Response:
    """An error under /admin: the login form for someone not logged in (so nothing about the
    dashboard's routes or data shows before login), else the dashboard's own error page."""
    login = current_login(request)
    if login is None and request.url.path != LOGIN_PATH:
        return redirect(LOGIN_PATH)
    csrf = csrf_token(login) if login else None
    return page("admin_error.html", status_code, title=title, message=detail, csrf=csrf)


# Threads that run the synchronous route handlers of one process (the RSVP confirmation runs
# on the event loop instead, see web/rsvp.py). Measured under a burst of confirmations on two
# cores: 4 threads per process beat 10, which only take turns at the GIL and lengthen every
# request. Never more than the database pool holds (db.POOL_SIZE): a thread beyond it would
# open and close a PostgreSQL connection per request.
HANDLER_THREADS = min(4, POOL_SIZE)


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = HANDLER_THREADS
    # No broker: this process is also the worker and runs beat (the sweep, the mails of
    # answers a relay refused for a while or a crash left unsent). A no-op with a broker.
    embedded.start(beat=True)
    try:
        yield
    finally:
        # The task in hand finishes (bounded); queued ones wait in their rows for the sweep.
        await anyio.to_thread.run_sync(embedded.stop)
        await close_async_connections()


def _error_response(request: Request, exc: StarletteHTTPException) -> Response:
    """An HTTP error as JSON under /api and for the webhook, else as a page (the
    dashboard's under /admin)."""
    if request.url.path.startswith(("/api/", inbound_webhook.PATH)):
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )
    title = _TITLES.get(exc.status_code, "出错了")
    detail = str(exc.detail)
    if detail == HTTPStatus(exc.status_code).phrase:  # Starlette's own English default
        detail = _DEFAULT_MESSAGES.get(exc.status_code, "请求无法完成。")
    if _admin_path(request):
        response = _admin_error(request, exc.status_code, title, detail)
    else:
        response = error_page(exc.status_code, title, detail)
    response.headers.update(exc.headers or {})
    return response


def _refusal(scope: Scope, exc: StarletteHTTPException) -> Response:
    """The response of a request the limits refused before the app saw it."""
    request = Request(scope)
    if request.url.path.startswith(("/api/", inbound_webhook.PATH)):
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )
    response = error_page(exc.status_code, _TITLES.get(exc.status_code, "出错了"), str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


def create_app() -> FastAPI:
    """The web app, configured from the process settings."""
    app = FastAPI(
        title="Salon invitations",
        description="RSVP and unsubscribe pages reached through signed links; session calendars.",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.include_router(rsvp.router)
    app.include_router(unsubscribe.router)
    app.include_router(subscribe.router)
    app.include_router(preferences.router)
    app.include_router(feedback.router)
    app.include_router(calendar_routes.router)
    # After calendar_routes: /sessions/{number} would otherwise take /sessions/61.ics.
    app.include_router(public.router)
    app.include_router(public_feeds.router)
    app.include_router(api.router)
    app.include_router(dashboard_login.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard_changes.router)
    app.include_router(checkin.router)
    app.include_router(ops.router)
    app.include_router(inbound_webhook.router)
    faults.install(app)
    settings = get_settings()
    # Added innermost first: the body limit is outermost, so nothing reads a body before it.
    app.add_middleware(RequestTimer)
    app.add_middleware(TrustedHosts, allowed_hosts=allowed_hosts(settings.base_url))
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout,
        refuse=_refusal,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(request, exc)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return redirect(LOGIN_PATH)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"detail": jsonable_encoder(exc.errors(), exclude={"ctx", "input", "url"})},
                status_code=422,
            )
        if _admin_path(request):
            return _admin_error(request, 400, _TITLES[400], "请求中的参数不正确。")
        return error_page(400, _TITLES[400], "请求中的参数不正确。请直接使用邮件中的链接。")

    return app
