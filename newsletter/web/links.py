"""Turning a signed link into the people and session it names, or a friendly 4xx page."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.rsvp import repo as rsvp_repo
from newsletter.sessions.models import SalonSession
from newsletter.tokens import Purpose, TokenExpired, TokenInvalid, sign, verify
from subscribers.models import Subscriber

# A confirm form is good for this long after its page was opened.
FORM_MAX_AGE_S = 6 * 60 * 60
MAX_TOKEN_LENGTH = 300


def read_token(purpose: Purpose, token: str, keys: list[str]) -> dict[str, int]:
    """The ids in ``token``, or a 400 (tampered, wrong purpose) / 410 (expired) page."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise HTTPException(400, "这个链接无效：它可能被修改或截断了。请直接点击邮件中的链接。")
    try:
        return verify(purpose, token, keys)
    except TokenExpired:
        raise HTTPException(410, "这个链接已过期。") from None
    except TokenInvalid:
        raise HTTPException(
            400, "这个链接无效：它可能被修改或截断了。请直接点击邮件中的链接。"
        ) from None


def form_token(payload: dict[str, int]) -> str:
    """The hidden field of a confirm form, bound to the same ids as the link."""
    return sign(Purpose.CSRF, payload, get_settings().secret_keys)


_FORM_REFUSED = "页面已过期或请求不是从本站页面发出的。请重新打开邮件中的链接再确认。"


def check_form_token(
    value: str,
    payload: dict[str, int],
    *,
    max_age_seconds: int = FORM_MAX_AGE_S,
    refusal: str = _FORM_REFUSED,
) -> None:
    """403 (with ``refusal`` as the page's message) unless ``value`` came from our own page
    for these very ids, within ``max_age_seconds``."""
    try:
        signed = verify(
            Purpose.CSRF,
            value[:MAX_TOKEN_LENGTH],
            get_settings().secret_keys,
            max_age_seconds=max_age_seconds,
        )
    except (TokenInvalid, TokenExpired):
        signed = None
    if signed != payload:
        raise HTTPException(403, refusal)


@dataclass(frozen=True)
class Addressee:
    """The session and subscriber a link names."""

    salon: SalonSession
    subscriber: Subscriber


def addressee(db: Session, session_id: int, subscriber_id: int) -> Addressee:
    """Both rows, or a 404 page (the session was deleted, the subscriber purged)."""
    rows = rsvp_repo.addressee_rows(db, session_id, subscriber_id)
    if rows is None:
        raise HTTPException(404, "这个链接对应的活动或订阅者已不存在。")
    return Addressee(*rows)
