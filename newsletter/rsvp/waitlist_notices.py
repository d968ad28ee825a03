"""The waitlist's mails: your place in line, a seat for you (to confirm in time, if the
session asks for that), and a seat that passed on because it was not confirmed.

Built like the other answer mails (``rsvp.notices``): the ``rsvp_notice`` template rendered
and inlined once per (session, revision, kind), then per-person values filled in; here the
headline too, since it holds the person's place in line or their time to confirm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.cache import BoundedCache
from newsletter.calendar import session_calendar
from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.installation import installation_token
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.notice import build_notice
from newsletter.rendering import render_email_template
from newsletter.rendering.personalise import RenderingError
from newsletter.rendering.session_view import session_view
from newsletter.rsvp import promotion_repo
from newsletter.rsvp.models import NoticeKind
from newsletter.rsvp.notice_slots import (
    CHANGE_URL,
    GREETING,
    PERSON_SLOTS,
    PREFERENCES_URL,
    fill,
    person_values,
)
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus

WAITLIST_KINDS = frozenset({NoticeKind.waitlisted, NoticeKind.promoted, NoticeKind.lapsed})

# The subject leads with what happened to the person, then the session's heading.
_SUBJECTS = {
    NoticeKind.waitlisted: "你在候补名单第 {place} 位",
    NoticeKind.promoted: "你获得了名额",
    NoticeKind.lapsed: "名额已顺延",
}

_HEADLINE = "WaitHeadlineSlotQz7"


@dataclass(frozen=True, slots=True)
class _Compiled:
    heading: str
    html: str
    text: str
    calendar: bytes | None


_compiled: BoundedCache[tuple[int, int, NoticeKind, Settings], _Compiled] = BoundedCache(64)


def _render(salon: SalonSession, kind: NoticeKind, settings: Settings) -> _Compiled:
    record = sessions_repo.record_of(salon)
    view = session_view(salon, record, settings.base_url)
    organizer = record.organizer or settings.organizer
    html, text = render_email_template(
        "rsvp_notice",
        subject=view.heading,
        headline=_HEADLINE,
        greeting=GREETING,
        organizer=organizer,
        session=view,
        change_url=CHANGE_URL,
        preferences_url=PREFERENCES_URL,
        checkin_code="",
        checkin_cid="",
    )
    for part in (html, text):
        if any(part.count(slot) != 1 for slot in PERSON_SLOTS):
            raise RenderingError("waitlist notice: a per-person placeholder was lost or repeated")
        if _HEADLINE not in part:
            raise RenderingError("waitlist notice: the headline placeholder was lost")
    calendar = None
    if kind is NoticeKind.promoted:  # a seat: the event, as with a confirmation
        calendar = session_calendar(
            salon,
            record,
            mail_domain=settings.sender_domain,
            organizer_name=organizer,
            organizer_address=parseaddr(settings.from_address)[1],
            page_url=view.calendar_url,
            stamp=utcnow(),
        )
    return _Compiled(view.heading, html, text, calendar)


def headline(kind: NoticeKind, *, place: int, confirm_by: str | None) -> str:
    """What the mail says first, for one person."""
    if kind is NoticeKind.waitlisted:
        return (
            f"活动名额已满，你在候补名单第 {place} 位。"
            "有人取消报名时，名额按候补顺序递补，我们会发邮件告诉你。"
        )
    if kind is NoticeKind.lapsed:
        return (
            "递补给你的名额没有在规定时间内确认，已顺延给候补名单上的下一位。"
            "如果仍想参加，可以打开答复页面重新报名。"
        )
    if confirm_by is None:
        return "有人取消了报名，你已从候补名单递补，获得了一个名额！"
    return (
        "有人取消了报名，你已从候补名单递补，获得了一个名额！"
        f"请在 {confirm_by} 前打开答复页面确认，逾期名额将顺延给下一位。"
    )


def subject(kind: NoticeKind, heading: str, *, place: int) -> str:
    """The subject: the news for the person first."""
    return f"{_SUBJECTS[kind].format(place=place)}：{heading}"


def _local(when: datetime, zone: str) -> str:
    return when.astimezone(ZoneInfo(zone)).strftime("%m月%d日 %H:%M")


def build_waitlist_notice(
    db: Session, settings: Settings, session_id: int, subscriber_id: int, kind: NoticeKind
) -> OutgoingMessage | None:
    """The mail for ``kind`` (one of :data:`WAITLIST_KINDS`), or None when the session or the person
    is gone or the person is not active."""
    salon = sessions_repo.get_by_id(db, session_id)
    person = subscribers_repo.get_by_id(db, subscriber_id)
    if salon is None or person is None or person.status != SubscriberStatus.active:
        return None
    compiled = _compiled.get_or_make(
        (salon.id, salon.revision, kind, settings), lambda: _render(salon, kind, settings)
    )
    answer = promotion_repo.answer_of(db, session_id, subscriber_id)
    place = promotion_repo.place(db, answer) if kind is NoticeKind.waitlisted and answer else 1
    confirm_by = None
    if kind is NoticeKind.promoted and answer is not None and promotion_repo.pending(answer):
        assert answer.confirm_by is not None
        confirm_by = _local(answer.confirm_by, salon.timezone)
    said = headline(kind, place=place, confirm_by=confirm_by)
    texts, urls = person_values(settings, salon, person)
    html, text = fill(compiled.html, compiled.text, {**texts, _HEADLINE: said}, urls)
    if compiled.calendar is None:  # no event attached: the template's line about it goes
        text = text.replace("日历事件已附在本邮件中；也可以下载", "日历文件下载")
        html = html.replace("日历事件已附在本邮件中；也可以", "")
    return build_notice(
        from_address=settings.from_address,
        mail_domain=settings.sender_domain,
        installation=installation_token(db),
        recipient_name=person.name,
        recipient_address=person.email,
        subject=subject(kind, compiled.heading, place=place),
        text=text,
        html=html,
        calendar=compiled.calendar,
    )
