"""Unsubscribing: a page with one button, and RFC 8058 one-click POST for mail clients.

The one-click POST comes from the mail provider, without cookies and without our form
token: the signed link itself is the authority, and the answer is a plain 200, never a
redirect. Either way the subscriber is never mailed again, queued deliveries included
(workers check the status when they claim a batch).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.tokens import Purpose
from newsletter.web.links import check_form_token, form_token, read_token
from newsletter.web.pages import page
from subscribers import repo as subscribers_repo
from subscribers.service import unsubscribe as unsubscribe_subscriber

router = APIRouter()

ONE_CLICK = "List-Unsubscribe=One-Click"


def _ids(token: str) -> dict[str, int]:
    payload = read_token(Purpose.UNSUBSCRIBE, token, get_settings().secret_keys)
    if set(payload) != {"u", "c"}:
        raise HTTPException(400, "这个退订链接无效。")
    return payload


def _unsubscribe(subscriber_id: int, campaign_id: int) -> bool:
    with session_scope(get_settings().database_url) as db:
        if subscribers_repo.get_by_id(db, subscriber_id) is None:
            raise HTTPException(404, "这个退订链接对应的订阅者已不存在。")
        return unsubscribe_subscriber(
            db, subscriber_id, f"unsubscribed by link (campaign {campaign_id})"
        )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def show(token: str) -> HTMLResponse:
    """A page with one button; opening it changes nothing."""
    ids = _ids(token)
    with session_scope(get_settings().database_url) as db:
        person = subscribers_repo.get_by_id(db, ids["u"])
        if person is None:
            raise HTTPException(404, "这个退订链接对应的订阅者已不存在。")
        already = person.status != "active"
    return page(
        "unsubscribe.html",
        already=already,
        form_token=form_token(ids),
        action=f"/unsubscribe/{token}",
    )


@router.post("/unsubscribe/{token}")
async def confirm(token: str, request: Request) -> Response:
    """RFC 8058 one-click (body ``List-Unsubscribe=One-Click``) or the page's button.

    The database work runs in a worker thread: a row lock or a slow database must hold up
    this request only, not every request of the process.
    """
    ids = _ids(token)
    form = await request.form()  # async: the body is read on the loop, the write is not
    if form.get("List-Unsubscribe") == "One-Click":
        await run_in_threadpool(_unsubscribe, ids["u"], ids["c"])
        return PlainTextResponse("unsubscribed\n", headers={"Cache-Control": "no-store"})
    csrf = form.get("csrf")
    check_form_token(csrf if isinstance(csrf, str) else "", ids)
    await run_in_threadpool(_unsubscribe, ids["u"], ids["c"])
    return page("unsubscribed.html")
