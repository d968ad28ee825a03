"""Logging in to the dashboard and out of it (see :mod:`newsletter.web.admin_session`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from newsletter.web.admin_session import (
    LOGIN_PATH,
    AdminLogin,
    check_csrf,
    clear_login_cookie,
    current_login,
    new_login_cookie,
    require_admin,
    set_login_cookie,
)
from newsletter.web.auth import is_admin_token
from newsletter.web.login_throttle import throttle
from newsletter.web.pages import SECURITY_HEADERS, page

router = APIRouter(prefix="/admin", include_in_schema=False)
log = logging.getLogger(__name__)

# Longer than any token we generate or anyone types; a bigger field is refused uncompared.
MAX_TOKEN_FIELD = 1000


def redirect(path: str) -> RedirectResponse:
    """303 See Other to ``path`` (a GET after a POST), not cacheable."""
    return RedirectResponse(path, status_code=303, headers=dict(SECURITY_HEADERS))


@router.get(LOGIN_PATH.removeprefix("/admin"), response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The login form; someone already logged in goes straight to the dashboard."""
    if current_login(request) is not None:
        return redirect("/admin")
    return page("admin_login.html", problem=None)


@router.post(LOGIN_PATH.removeprefix("/admin"), response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
    """Check the admin token (constant time) and set the login cookie.

    A wrong token gets the form again with 401 and one message for every cause: nothing tells
    a guesser whether the token was close, empty or of the wrong length. After 10 wrong
    tokens from one address in 15 minutes, that address gets 429 until the window moves on,
    whatever it sends (see login_throttle).
    """
    address = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(address)
    if wait:
        log.warning("dashboard login refused: too many wrong tokens from one address")
        minutes = (wait + 59) // 60
        refused = page("admin_login.html", 429, problem=f"错误次数过多，请 {minutes} 分钟后再试。")
        refused.headers["Retry-After"] = str(wait)
        return refused
    if not token or len(token) > MAX_TOKEN_FIELD or not is_admin_token(token.strip()):
        throttle.failed(address)
        log.info("dashboard login refused")  # never the token itself
        return page("admin_login.html", 401, problem="管理令牌不正确，请重新输入。")
    throttle.succeeded(address)
    response = redirect("/admin")
    set_login_cookie(response, new_login_cookie())
    log.info("dashboard login")
    return response


@router.post("/logout")
def logout(
    login: Annotated[AdminLogin, Depends(require_admin)],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Forget the login cookie in this browser and show the login form."""
    check_csrf(csrf, login)
    response = redirect(LOGIN_PATH)
    clear_login_cookie(response)
    return response
