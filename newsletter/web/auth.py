"""Organizer authentication: the admin bearer token, compared in constant time.

The token travels only in the ``Authorization`` header, never in a URL (URLs end up in logs,
browser history and Referer headers).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from newsletter.config import get_settings

_bearer = HTTPBearer(auto_error=False, description="NEWSLETTER_ADMIN_TOKEN")


def is_admin_token(given: str) -> bool:
    """Whether ``given`` is the admin token, compared in constant time (no timing oracle).

    Shared by the bearer API and the dashboard's login form.
    """
    expected = get_settings().admin_bearer_token.encode("utf-8")
    return secrets.compare_digest(given.encode("utf-8", "replace"), expected)


def require_organizer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <admin token>``."""
    if not credentials or not is_admin_token(credentials.credentials):
        raise HTTPException(
            401, "organizer token missing or wrong", headers={"WWW-Authenticate": "Bearer"}
        )
