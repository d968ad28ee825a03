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

from markupsafe import escape
from sqlalchemy.orm import Session

from newsletter.cache import BoundedCache
from newsletter.calendar import session_calendar
from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.installation import installation_token
from newsletter.links import recipient_links
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.notice import build_notice
from newsletter.rendering import render_email_template
from newsletter.rendering.invitation import greeting_for
from newsletter.rendering.personalise import RenderingError, escape_text
from newsletter.rendering.session_view import session_view
from newsletter.rsvp import promotion_repo
from newsletter.rsvp.models import NoticeKind
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

_GREETING = "WaitGreetingSlotQz7"
_HEADLINE = "WaitHeadlineSlotQz7"
_CHANGE_URL = "https://notice.invalid/WaitChangeUrlSlotQz7"
_PREFERENCES_URL = "https://notice.invalid/WaitPreferencesUrlSlotQz7"


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
        greeting=_GREETING,
        organizer=organizer,
        session=view,
        change_url=_CHANGE_URL,
        preferences_url=_PREFERENCES_URL,
        checkin_code="",
        checkin_cid="",
    )
    for part in (html, text):
        if any(part.count(slot) != 1 for slot in (_GREETING, _CHANGE_URL, _PREFERENCES_URL)):
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
    links = recipient_links(
        settings.base_url,
        settings.secret_keys,
        session_id=salon.id,
        session_number=salon.number,
        subscriber_id=person.id,
        campaign_id=0,
        unsubscribe_mailbox=None,
    )
    greeting = greeting_for(person.name or "")
    page_url = links.rsvp_page
    html = (
        compiled.html.replace(_GREETING, escape_text(greeting))
        .replace(_HEADLINE, escape_text(said))
        .replace(_CHANGE_URL, str(escape(page_url)))
        .replace(_PREFERENCES_URL, str(escape(links.preferences)))
    )
    text = (
        compiled.text.replace(_GREETING, greeting)
        .replace(_HEADLINE, said)
        .replace(_CHANGE_URL, page_url)
        .replace(_PREFERENCES_URL, links.preferences)
    )
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
