"""The preference page every mail links to: ``/preferences/{token}``.

GET shows the person's name, topics, pause, status and the buttons, and changes nothing
(mail scanners open every link). One POST form, protected by a form token bound to the
person (:func:`newsletter.web.links.check_form_token`), carries the fields and the button
pressed (``action``): ``save`` (name, topics, pause), ``unsubscribe``, ``resubscribe`` or
``export`` ("send me my data": queued as a mail to the address on file, never shown here).
The answer is the page again, with what happened; a refused change answers 400 with the
page and its reason.

The token is ``Purpose.PREFERENCES`` with the person's id only, and has no age limit (see
:mod:`newsletter.links` for why). The rules are in :mod:`subscribers.preferences`.
"""

from __future__ import annotations

import logging
from datetime import date

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import NotFoundError
from newsletter.tokens import Purpose
from newsletter.web.links import check_form_token, form_token, read_token
from newsletter.web.pages import page
from subscribers import preferences
from subscribers.preferences import PreferenceRefused
from subscribers.validation import MAX_NAME_LENGTH, MAX_TAGS

router = APIRouter()
log = logging.getLogger(__name__)

ACTIONS = ("save", "unsubscribe", "resubscribe", "export")
_GONE = "这个链接对应的订阅者已不存在（可能已按要求删除了全部数据）。"
#: What the page says after each action (the second: when nothing changed).
DONE = {
    "save": ("已保存你的设置。", "已保存你的设置。"),
    "unsubscribe": (
        "你已退订，不会再收到沙龙的邀请邮件（包括已在发送队列中的邮件）。",
        "你已经退订了。",
    ),
    "resubscribe": ("欢迎回来！你会重新收到沙龙的邀请邮件。", "你已经在接收邀请邮件了。"),
    "export": (
        "好的：我们会把你的全部数据作为附件发送到你的邮箱，几分钟内送达。",
        "今天已经发送过一次你的数据，请查收邮箱；每人每天最多请求一次。",
    ),
}


def _ids(token: str) -> dict[str, int]:
    payload = read_token(Purpose.PREFERENCES, token, get_settings().secret_keys)
    if set(payload) != {"u"}:
        raise HTTPException(400, "这个链接无效。")
    return payload


def _form_ids(ids: dict[str, int]) -> dict[str, int]:
    # Bound to the person and to this page: a form token of another page never passes here.
    return {"u": ids["u"], "prefs": 1}


def _render(
    token: str, subscriber_id: int, *, done: str | None = None, refused: str | None = None
) -> HTMLResponse:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        try:
            shown = preferences.load(db, settings, subscriber_id)
        except NotFoundError:
            raise HTTPException(404, _GONE) from None
    return page(
        "preferences.html",
        400 if refused else 200,
        prefs=shown,
        done=done,
        refused=refused,
        form_token=form_token(_form_ids({"u": subscriber_id})),
        action=f"/preferences/{token}",
        max_name=MAX_NAME_LENGTH,
    )


@router.get("/preferences/{token}", response_class=HTMLResponse)
def show(token: str) -> HTMLResponse:
    """The page; opening it changes nothing."""
    ids = _ids(token)
    return _render(token, ids["u"])


def _text(form: FormData, name: str, limit: int) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise HTTPException(400, "请求中的参数不正确。")
    return value


def _pause(raw: str) -> date | None:
    if not raw.strip():
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise PreferenceRefused("日期格式不正确，请选择一个日期。") from None


def _apply(subscriber_id: int, action: str, form: FormData) -> str:
    """Make the change in one transaction; what the page says about it."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        try:
            if action == "save":
                topics = [t for t in form.getlist("topics") if isinstance(t, str)][:MAX_TAGS]
                preferences.save(
                    db,
                    settings,
                    subscriber_id,
                    name=_text(form, "name", MAX_NAME_LENGTH * 2),
                    topics=[t[:200] for t in topics],
                    paused_until=_pause(_text(form, "paused_until", 40)),
                )
                changed = True
            elif action == "unsubscribe":
                changed = preferences.leave(db, subscriber_id)
            elif action == "resubscribe":
                changed = preferences.come_back(db, subscriber_id)
            else:
                changed = preferences.ask_for_export(db, subscriber_id)
        except NotFoundError:
            raise HTTPException(404, _GONE) from None
    if action == "export" and changed:
        from tasks.subscribers import send_soon  # after the commit above

        send_soon()
    return DONE[action][0 if changed else 1]


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def change(token: str, request: Request) -> HTMLResponse:
    """The page's one form: the button pressed says what to do.

    The database work runs in a worker thread, as the unsubscribe page's does.
    """
    ids = _ids(token)
    form = await request.form()
    csrf = form.get("csrf")
    check_form_token(csrf if isinstance(csrf, str) else "", _form_ids(ids))
    action = form.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise HTTPException(400, "请求中的参数不正确。")
    try:
        done = await run_in_threadpool(_apply, ids["u"], action, form)
    except PreferenceRefused as refusal:
        return await run_in_threadpool(_render, token, ids["u"], refused=str(refusal))
    return await run_in_threadpool(_render, token, ids["u"], done=done)
