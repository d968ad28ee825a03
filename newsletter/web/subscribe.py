"""Joining the list: the public sign-up form and the page the confirmation link opens.

``GET /subscribe`` shows the form; ``POST /subscribe`` records the sign-up and answers with
ONE page whatever became of it (a new, pending, active, unsubscribed, bounced, suppressed or
erased address, or the daily limit reached): same status, same bytes, so the form cannot be
used to learn who is on the list. ``GET /subscribe/confirm/{token}`` shows one button and
changes nothing (mail scanners open links); its POST confirms.

Form tokens and the form on other sites
---------------------------------------
The form on our page carries a form token (``Purpose.CSRF``, bound to nothing but "the
sign-up form", valid for :data:`FORM_MAX_AGE_S`). A POST without a valid one — the HTML
snippet on a club's other site, whose page cannot hold our token, or a page left open too
long — records nothing: it gets our form back, filled in with what was sent and with a fresh
token, so the person presses "订阅" once more, on our page. Why not accept the snippet's POST
as it is: sign-up has no login to protect, so the token does not guard a person's session;
what it guards is the per-client limit. Without it any site could make each of its visitors'
browsers post a sign-up for an address of its choosing, from as many client addresses as it
has visitors. With it, every mail the form sends was asked for by a press on our own page
(which cannot be framed: ``frame-ancestors 'none'``). The real protection of the person is
still the double opt-in (nothing but the confirmation mail is sent until they confirm) and
the limit of 3 confirmation mails per address a day.

Per-client limit: :data:`MAX_PER_CLIENT` sign-ups per client address an hour and
:data:`MAX_ALL` from all clients together (see ``login_throttle`` for how addresses are
counted); beyond, 429 with Retry-After. Neither depends on the address signed up.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.tokens import Purpose, TokenExpired, TokenInvalid, verify
from newsletter.web.links import MAX_TOKEN_LENGTH, check_form_token, form_token
from newsletter.web.login_throttle import LoginThrottle
from newsletter.web.pages import page
from subscribers import mail_outbox_repo
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus
from subscribers.signup import Confirmed, confirm, sign_up
from subscribers.topics import offered_topics
from subscribers.validation import SubscriberDataError, normalise_email, normalise_name
from tasks.subscribers import send_soon

router = APIRouter()
log = logging.getLogger(__name__)

# The sign-up form's token payload: it names the form, not a person.
FORM_PAYLOAD = {"signup": 1}
FORM_MAX_AGE_S = 24 * 60 * 60
MAX_PER_CLIENT = 10
MAX_ALL = 300
WINDOW_S = 60 * 60
# Longer than any address, name or token the rules accept: what is beyond is not looked at.
MAX_FIELD = 400
MAX_TOPICS = 50

# The limiter of failed logins counts any event per address in a sliding window, with a
# ceiling over all addresses: here, sign-ups.
throttle = LoginThrottle(max_failures=MAX_PER_CLIENT, window_s=WINDOW_S, max_failures_all=MAX_ALL)

_BAD_LINK = "这个确认链接无效：它可能被修改或截断了。请直接点击邮件中的链接。"
_GONE = "这个确认链接对应的订阅已不存在（未确认的订阅会在到期后删除）。请重新订阅。"
_EXPIRED = "这个确认链接已过期。请重新订阅，我们会再发一封确认邮件。"


def _offered() -> list[str]:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        return offered_topics(db, settings)


def _form_page(
    status_code: int = 200,
    *,
    topics: list[str],
    name: str = "",
    email: str = "",
    chosen: list[str] | None = None,
    problem: str | None = None,
    check: bool = False,
) -> HTMLResponse:
    return page(
        "subscribe.html",
        status_code,
        topics=topics,
        name=name,
        email=email,
        chosen=set(chosen or []),
        problem=problem,
        check=check,
        form_token=form_token(FORM_PAYLOAD),
    )


def form_context() -> dict[str, Any]:
    """What ``subscribe_form.html`` needs for a blank form, with a fresh form token: the front
    page (/) shows the same form as /subscribe and posts to it."""
    token = form_token(FORM_PAYLOAD)
    return {"topics": _offered(), "name": "", "email": "", "chosen": set(), "form_token": token}


@router.get("/subscribe", response_class=HTMLResponse)
def show_form() -> HTMLResponse:
    """The sign-up form: name, address, the topics on offer."""
    return _form_page(topics=_offered())


def _text(form: FormData, name: str) -> str:
    """A text field, cut beyond MAX_FIELD: still too long for the rules, which refuse it."""
    value = form.get(name)
    return value[: MAX_FIELD + 1] if isinstance(value, str) else ""


@router.post("/subscribe", response_class=HTMLResponse)
async def submit(request: Request) -> HTMLResponse:
    """Record a sign-up; the same page for every address (see the module)."""
    form = await request.form()
    email, name = _text(form, "email"), _text(form, "name")
    topics = [t for t in form.getlist("topics") if isinstance(t, str)][:MAX_TOPICS]

    async def again(status_code: int = 200, **how: Any) -> HTMLResponse:
        """The form once more, filled in with what was sent."""
        offered = await run_in_threadpool(_offered)
        return _form_page(status_code, topics=offered, name=name, email=email, chosen=topics, **how)

    try:
        check_form_token(_text(form, "csrf"), FORM_PAYLOAD, max_age_seconds=FORM_MAX_AGE_S)
    except HTTPException:  # the snippet on another site, or a stale page: one more press here
        return await again(check=True)
    try:
        normalise_email(email)
    except SubscriberDataError:
        return await again(400, problem="请填写有效的邮箱地址。")
    try:
        normalise_name(name)
    except SubscriberDataError:
        return await again(400, problem="姓名不能超过 200 个字符，也不能包含控制字符。")
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait:
        log.warning("sign-up refused: too many sign-ups from one client address")
        refused = page(
            "error.html",
            429,
            title="请求过于频繁",
            message=f"这个网络提交的订阅太多了。请 {(wait + 59) // 60} 分钟后再试。",
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    throttle.failed(client)  # counted: every sign-up, whatever it did
    queued = await run_in_threadpool(_sign_up, email, name, topics)
    if queued:
        await run_in_threadpool(send_soon)
    return page("subscribe_sent.html")


def _sign_up(email: str, name: str, topics: list[str]) -> bool:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        done = sign_up(db, settings, email, name, topics)
    log.info("sign-up of subscriber %s: %s", done.subscriber_id, done.why)
    return done.queued


def _confirm_ids(token: str) -> dict[str, int]:
    """The ids of a confirm link, or a 400 (altered) / 410 (older than the pending days)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise HTTPException(400, _BAD_LINK)
    try:
        payload = verify(
            Purpose.CONFIRM,
            token,
            get_settings().secret_keys,
            max_age_seconds=get_settings().pending_days * 24 * 60 * 60,
        )
    except TokenExpired:
        raise HTTPException(410, _EXPIRED) from None
    except TokenInvalid:
        raise HTTPException(400, _BAD_LINK) from None
    if set(payload) != {"u", "m"}:
        raise HTTPException(400, _BAD_LINK)
    return payload


@router.get("/subscribe/confirm/{token}", response_class=HTMLResponse)
def show_confirm(token: str) -> HTMLResponse:
    """One button; opening the page changes nothing."""
    ids = _confirm_ids(token)
    with session_scope(get_settings().database_url) as db:
        person = subscribers_repo.get_by_id(db, ids["u"])
        if person is None or not mail_outbox_repo.is_confirm_mail_of(db, ids["m"], ids["u"]):
            raise HTTPException(404, _GONE)
        status = person.status
    if status not in (SubscriberStatus.pending, SubscriberStatus.unsubscribed):
        if status == SubscriberStatus.active:
            return page("subscribe_done.html", already=True)
        raise HTTPException(409, "这个地址目前不能订阅。如有疑问，请联系组织者。")
    return page(
        "subscribe_confirm.html",
        form_token=form_token(ids),
        action=f"/subscribe/confirm/{token}",
    )


@router.post("/subscribe/confirm/{token}", response_class=HTMLResponse)
async def press_confirm(token: str, request: Request) -> HTMLResponse:
    """The button: the person is active from now on; the welcome mail goes out once."""
    ids = _confirm_ids(token)
    form = await request.form()
    check_form_token(_text(form, "csrf"), ids)
    outcome = await run_in_threadpool(_confirm, ids["u"], ids["m"])
    if outcome is Confirmed.gone:
        raise HTTPException(404, _GONE)
    if outcome is Confirmed.refused:
        raise HTTPException(409, "这个地址目前不能订阅。如有疑问，请联系组织者。")
    if outcome is Confirmed.confirmed:
        await run_in_threadpool(send_soon)
    return page("subscribe_done.html", already=outcome is Confirmed.already)


def _confirm(subscriber_id: int, mail_id: int) -> Confirmed:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        outcome = confirm(db, settings, subscriber_id, mail_id)
    log.info("confirmation of subscriber %s: %s", subscriber_id, outcome.value)
    return outcome
