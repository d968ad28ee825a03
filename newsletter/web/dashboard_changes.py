"""The dashboard's change-notice button: ``POST /admin/sessions/{number}/change-notice``
sends the pending notice of the record's current revision (see
:mod:`newsletter.campaigns.change_notices`), to those who answered or to everyone invited."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import HTMLResponse, Response

from newsletter.campaigns import change_notices
from newsletter.campaigns.change_notices import Audience
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.web.admin_session import check_csrf
from newsletter.web.dashboard import (
    _NOT_QUEUED,
    Csrf,
    Login,
    Number,
    _campaign_page,
    _session_page,
    _start,
)
from newsletter.web.dashboard_login import redirect

router = APIRouter(prefix="/admin", include_in_schema=False)

Revision = Annotated[int, Form(ge=0, le=2**31 - 1)]
Who = Annotated[Literal["answered", "invited"], Form()]


@router.post("/sessions/{number}/change-notice", response_class=HTMLResponse)
def send_change_notice(
    number: Number, login: Login, revision: Revision, csrf: Csrf = "", audience: Who = "answered"
) -> Response:
    """Send the change notice of the revision the page showed (once per revision)."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            outcome = change_notices.send_pending(db, number, Audience(audience), revision=revision)
    except NotFoundError:
        raise HTTPException(404, f"第 {number} 期活动不存在。") from None
    except InvalidStateError:  # re-imported since the page was shown
        problem = "活动记录在此期间又更新了：请查看下面最新的变动，再决定是否发送。"
        return _session_page(login, number, status_code=409, problem=problem)
    if outcome.already_sent is not None:
        problem = (
            f"第 {outcome.revision} 版的变更通知已经发送过（发送任务 #{outcome.already_sent}），"
            "不会重复发送。"
        )
        return _session_page(login, number, status_code=409, problem=problem)
    if outcome.campaign_id is None:
        problem = "自上次通知以来，没有需要告知的变动（时间、地点、直播、分享或取消）。"
        return _session_page(login, number, status_code=409, problem=problem)
    if outcome.start and not _start(outcome.campaign_id):
        return _campaign_page(login, outcome.campaign_id, status_code=503, problem=_NOT_QUEUED)
    return redirect(f"/admin/campaigns/{outcome.campaign_id}")
