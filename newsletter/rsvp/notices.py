"""The mails an answer triggers: a confirmation with the event attached (the waitlist's
mails: ``rsvp.waitlist_notices``). Built here (rendering + calendar + MIME), sent from the
outbox by ``rsvp.outbox``."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr

from sqlalchemy.orm import Session

from newsletter.cache import BoundedCache
from newsletter.calendar import session_calendar
from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.installation import installation_token
from newsletter.mail.inline_image import InlineImage
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.notice import build_notice
from newsletter.rendering import render_email_template
from newsletter.rendering.personalise import RenderingError
from newsletter.rendering.session_view import session_view
from newsletter.rsvp import checkin
from newsletter.rsvp.models import NoticeKind
from newsletter.rsvp.notice_slots import (
    CHANGE_URL,
    GREETING,
    PERSON_SLOTS,
    PREFERENCES_URL,
    fill,
    person_values,
)
from newsletter.rsvp.waitlist_notices import WAITLIST_KINDS, build_waitlist_notice
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus

_HEADLINES = {
    NoticeKind.confirmed: "你的报名已确认，期待与你相见！",
}


# Placeholders for the two per-person values, filled into a notice compiled once per session
# revision: plain words, which premailer passes through untouched (see rendering.personalise).
# The check-in code, in the text part, the HTML and the QR image's Content-ID: a confirmed
# seat's mail shows the code the organizer scans at the door.
_CHECKIN_CODE = "NoticeCheckinCodeSlotQz7"
_WITH_CHECKIN = frozenset({NoticeKind.confirmed})


@dataclass(frozen=True, slots=True)
class _CompiledNotice:
    subject: str
    html: str
    text: str
    calendar: bytes


_compiled: BoundedCache[tuple[int, int, NoticeKind, Settings], _CompiledNotice] = BoundedCache(256)


def _compile(salon: SalonSession, kind: NoticeKind, settings: Settings) -> _CompiledNotice:
    """Jinja + premailer + the .ics once per (session, revision, kind), not once per mail."""
    return _compiled.get_or_make(
        (salon.id, salon.revision, kind, settings), lambda: _render_notice(salon, kind, settings)
    )


def _render_notice(salon: SalonSession, kind: NoticeKind, settings: Settings) -> _CompiledNotice:
    record = sessions_repo.record_of(salon)
    view = session_view(salon, record, settings.base_url)
    organizer = record.organizer or settings.organizer
    headline = _HEADLINES[kind]
    subject = f"{headline[:8].rstrip('，！')}：{view.heading}"
    html, text = render_email_template(
        "rsvp_notice",
        subject=subject,
        headline=headline,
        greeting=GREETING,
        organizer=organizer,
        session=view,
        change_url=CHANGE_URL,
        preferences_url=PREFERENCES_URL,
        checkin_code=_CHECKIN_CODE if kind in _WITH_CHECKIN else "",
        checkin_cid=_checkin_cid(_CHECKIN_CODE, settings),
    )
    for part in (html, text):
        slots = PERSON_SLOTS
        if any(part.count(slot) != 1 for slot in slots):
            raise RenderingError("rsvp_notice: a per-person placeholder was lost or repeated")
    calendar = session_calendar(
        salon,
        record,
        mail_domain=settings.sender_domain,
        organizer_name=organizer,
        organizer_address=parseaddr(settings.from_address)[1],
        page_url=view.calendar_url,
        stamp=utcnow(),
    )
    return _CompiledNotice(subject, html, text, calendar)


def _checkin_cid(code: str, settings: Settings) -> str:
    return f"{code}.qr@{settings.sender_domain}"


def build_rsvp_notice(
    db: Session, settings: Settings, session_id: int, subscriber_id: int, kind: NoticeKind
) -> OutgoingMessage | None:
    """The mail for ``kind``, or None when it must not be sent: the session or the person is
    gone, or the person is not active (the outbox says which before it gets here)."""
    if kind in WAITLIST_KINDS:  # a place in line, a seat to confirm: see waitlist_notices
        return build_waitlist_notice(db, settings, session_id, subscriber_id, kind)
    salon = sessions_repo.get_by_id(db, session_id)
    person = subscribers_repo.get_by_id(db, subscriber_id)
    if salon is None or person is None or person.status != SubscriberStatus.active:
        return None
    compiled = _compile(salon, kind, settings)
    texts, urls = person_values(settings, salon, person)
    html, text = fill(compiled.html, compiled.text, texts, urls)
    inline = None
    if kind in _WITH_CHECKIN:
        code = checkin.make_code(settings.secret_keys, salon.number, person.id)
        html, text = html.replace(_CHECKIN_CODE, code), text.replace(_CHECKIN_CODE, code)
        inline = InlineImage(_checkin_cid(code, settings), checkin.qr_png(code))
    return build_notice(
        from_address=settings.from_address,
        mail_domain=settings.sender_domain,
        installation=installation_token(db),
        recipient_name=person.name,
        recipient_address=person.email,
        subject=compiled.subject,
        text=text,
        html=html,
        calendar=compiled.calendar,
        inline=inline,
    )
