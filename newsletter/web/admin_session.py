"""The organizer dashboard's login: a signed cookie, and form tokens bound to it.

The admin token is typed once into the login form (a POST body: never a URL, which would end
up in logs, browser history and Referer headers) and compared in constant time. What the
browser keeps afterwards is a cookie signed with the secret key (``Purpose.ADMIN_SESSION``)
that carries only two integers:

* ``f``, a keyed fingerprint of the admin token (HMAC with the secret key, so the cookie
  reveals nothing that helps guess the token). Changing ``NEWSLETTER_ADMIN_TOKEN`` changes the
  fingerprint, so every cookie issued before the change stops working at once.
* ``n``, a random number drawn at login. Form tokens (CSRF) of the dashboard are signed over
  it, so a form token works only with the login it was made for.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page makes the
browser send it), limited to ``/admin`` and Secure when the app is served over https; its
signature carries the time of issue and it is refused after :data:`LOGIN_MAX_AGE_S`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from newsletter.config import get_settings
from newsletter.tokens import Purpose, TokenError, sign, verify
from newsletter.web.links import MAX_TOKEN_LENGTH, check_form_token, form_token

COOKIE = "newsletter_admin"
COOKIE_PATH = "/admin"
LOGIN_PATH = "/admin/login"
# An organizer's working day; after it the form asks for the token again.
LOGIN_MAX_AGE_S = 12 * 60 * 60
# 48 bits tell token versions apart; forging a cookie needs the secret key anyway.
_FINGERPRINT_BITS = 48


class LoginRequired(Exception):
    """No valid login cookie on a dashboard request; the app answers with a redirect."""


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """A valid login: the number that form tokens are bound to."""

    nonce: int


def _fingerprint(admin_token: str, key: str) -> int:
    digest = hmac.new(
        key.encode("utf-8"), b"admin-session\x00" + admin_token.encode("utf-8"), hashlib.sha256
    ).digest()
    return int.from_bytes(digest[: _FINGERPRINT_BITS // 8], "big")


def new_login_cookie() -> str:
    """The value of a fresh login cookie for the current admin token."""
    settings = get_settings()
    keys = settings.secret_keys
    payload = {
        "f": _fingerprint(settings.admin_bearer_token, keys[0]),
        "n": secrets.randbits(_FINGERPRINT_BITS),
    }
    return sign(Purpose.ADMIN_SESSION, payload, keys)


def read_login(value: str | None) -> AdminLogin | None:
    """The login ``value`` (a cookie) stands for, or None when it is missing, forged, too old,
    or was issued for an admin token that has since changed."""
    if not value or len(value) > MAX_TOKEN_LENGTH:
        return None
    settings = get_settings()
    keys = settings.secret_keys
    try:
        payload = verify(Purpose.ADMIN_SESSION, value, keys, max_age_seconds=LOGIN_MAX_AGE_S)
    except TokenError:
        return None
    if set(payload) != {"f", "n"}:
        return None
    # Any configured secret key may have made the fingerprint (secret-key rotation); the
    # admin token must be today's. compare_digest keeps the comparison free of timing hints.
    if not 0 <= payload["f"] < 2**_FINGERPRINT_BITS:
        return None
    token = settings.admin_bearer_token
    given = payload["f"].to_bytes(8, "big")
    matches = [
        secrets.compare_digest(given, _fingerprint(token, key).to_bytes(8, "big")) for key in keys
    ]
    return AdminLogin(nonce=payload["n"]) if any(matches) else None


def current_login(request: Request) -> AdminLogin | None:
    """The login of this request's cookie, if valid."""
    return read_login(request.cookies.get(COOKIE))


def require_admin(request: Request) -> AdminLogin:
    """Dependency of every dashboard route: the login, or :class:`LoginRequired`."""
    login = current_login(request)
    if login is None:
        raise LoginRequired
    return login


def set_login_cookie(response: Response, value: str) -> None:
    """Attach the login cookie to ``response``."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=LOGIN_MAX_AGE_S,
        path=COOKIE_PATH,
        secure=get_settings().base_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )


def clear_login_cookie(response: Response) -> None:
    """Make the browser forget the login cookie."""
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=get_settings().base_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )


def csrf_token(login: AdminLogin) -> str:
    """The hidden field of every dashboard form, good only with this login."""
    return form_token({"admin": login.nonce})


def check_csrf(value: str, login: AdminLogin) -> None:
    """403 unless ``value`` was made by our own dashboard page for this login."""
    check_form_token(
        value,
        {"admin": login.nonce},
        max_age_seconds=LOGIN_MAX_AGE_S,
        refusal="页面已过期或请求不是从控制台页面发出的。请刷新页面后再试。",
    )
