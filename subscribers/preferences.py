"""What a person changes on their preference page: name, topics, a pause, leaving and coming
back, and asking for their data.

The page (:mod:`newsletter.web.preferences`) is reached by the signed link in every mail's
footer; the token proves the person received mail at the address, so what it allows is what
the person themselves may decide:

* **name and topics**: topics are the offered tags (:mod:`subscribers.topics`, the one rule
  shared with the sign-up page); tags an organizer uses that are not offered are never
  shown, added or removed here;
* **pause until a date**: no campaign mail until the start of that day in the club's time
  zone (``NEWSLETTER_TIMEZONE``); at most :data:`MAX_PAUSE_DAYS` ahead (longer than that is
  what unsubscribing is for). Stored as ``paused_until`` and read by
  ``campaigns.recipients.mailable``, at creation and when a queued delivery is claimed.
  Mails that answer the person's own action still go (an RSVP confirmation, a seat from the
  waitlist they joined, the data export they asked for): a pause is about campaigns;
* **unsubscribe**: :func:`subscribers.service.unsubscribe`, as the unsubscribe link does;
* **resubscribe**: an *unsubscribed* person may come back from here (the link is proof
  enough: it was mailed to them). A bounced address may not (mail to it failed for good:
  sending again hurts the list's reputation, and the person's mailbox may be someone else's
  now); nor a suppressed one (an organizer decided); nor a pending one (the sign-up's own
  confirmation link does that); an erased person has no page at all;
* **send me my data**: queues a mail of kind ``export`` (the outbox of
  :mod:`subscribers.mail_outbox`), at most once per :data:`EXPORT_INTERVAL`, counted from the
  outbox rows, so a link in the wrong hands cannot flood the mailbox.

Changes apply to deliveries already queued: see ``campaigns.recipients.mailable``.
Functions take a Session and never commit (the caller's ``session_scope`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from subscribers import gdpr_repo, mail_outbox, mail_outbox_repo, repo
from subscribers.models import Subscriber, SubscriberMailKind, SubscriberStatus
from subscribers.service import unsubscribe
from subscribers.topics import chosen_topics, offered_topics
from subscribers.validation import InvalidName, normalise_name

MAX_PAUSE_DAYS = 366
EXPORT_INTERVAL = timedelta(days=1)
LEFT_HERE = "unsubscribed on the preference page"
BACK_HERE = "resubscribed on the preference page"

#: Why a person with this status cannot resubscribe from the page (shown to them).
NO_COMEBACK: dict[str, str] = {
    SubscriberStatus.bounced: (
        "发往你邮箱的邮件曾被退回（地址不存在或拒收），我们已停止向它发信。为了不再产生退信，"
        "这里不能重新订阅；如果邮箱已经恢复，请在订阅页重新登记并确认，或联系组织者。"
    ),
    SubscriberStatus.suppressed: (
        "组织者已停止向这个地址发信，因此这里不能重新订阅；如有疑问，请联系组织者。"
    ),
    SubscriberStatus.pending: "你的订阅还没有确认：请点击确认邮件中的链接完成订阅。",
}


class PreferenceRefused(InvalidStateError):
    """A change the page cannot make; the message is fit to show on the page (Chinese)."""


@dataclass(frozen=True)
class Topic:
    """One offered topic and whether the person has it."""

    name: str
    chosen: bool


@dataclass(frozen=True)
class Preferences:
    """What the page shows."""

    subscriber_id: int
    name: str
    status: str
    topics: list[Topic]
    paused_until: date | None  # the day mail resumes, in the club's zone; None: not paused
    can_resubscribe: bool
    no_comeback: str | None  # why not, for an inactive person who cannot come back here
    export_asked_at: datetime | None  # the last "send me my data" within the interval


def _person(db: Session, subscriber_id: int) -> Subscriber:
    person = repo.get_by_id(db, subscriber_id)
    if person is None or person.status == SubscriberStatus.erased:
        raise NotFoundError(f"subscriber #{subscriber_id} does not exist")
    return person


def _zone(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)


def load(db: Session, settings: Settings, subscriber_id: int) -> Preferences:
    """The person's preferences; NotFoundError for an unknown or erased person."""
    person = _person(db, subscriber_id)
    held = {tag.name for tag in person.tags}
    now = utcnow()
    paused = None
    if person.paused_until is not None and person.paused_until > now:
        paused = person.paused_until.astimezone(_zone(settings)).date()
    status = SubscriberStatus(person.status)
    return Preferences(
        subscriber_id=person.id,
        name=person.name,
        status=status.value,
        topics=[Topic(name, name in held) for name in offered_topics(db, settings)],
        paused_until=paused,
        can_resubscribe=status is SubscriberStatus.unsubscribed,
        no_comeback=NO_COMEBACK.get(status),
        export_asked_at=gdpr_repo.last_export_asked(db, person.id, now - EXPORT_INTERVAL),
    )


def pause_moment(settings: Settings, day: date | None, *, today: date | None = None) -> datetime:
    """The start of ``day`` in the club's zone (when mail resumes), checked: after today and
    at most :data:`MAX_PAUSE_DAYS` ahead. Raises :class:`PreferenceRefused`."""
    zone = _zone(settings)
    today = today or utcnow().astimezone(zone).date()
    if day is None:
        raise PreferenceRefused("请选择恢复接收邮件的日期。")
    if day <= today:
        raise PreferenceRefused("暂停的日期必须晚于今天。")
    if day > today + timedelta(days=MAX_PAUSE_DAYS):
        raise PreferenceRefused(
            f"最多可以暂停 {MAX_PAUSE_DAYS} 天；如果不想再收到邮件，请选择退订。"
        )
    return datetime.combine(day, time(0, 0), tzinfo=zone)


def save(
    db: Session,
    settings: Settings,
    subscriber_id: int,
    *,
    name: str,
    topics: list[str],
    paused_until: date | None,
) -> None:
    """Store name, topics and pause (``None``: not paused, a pause so far is lifted).

    Raises :class:`PreferenceRefused` for a name or date the page must refuse.
    """
    person = _person(db, subscriber_id)
    try:
        clean = normalise_name(name)
    except InvalidName as exc:
        raise PreferenceRefused(f"这个称呼不能使用：{_name_problem(exc)}") from None
    until = pause_moment(settings, paused_until) if paused_until is not None else None
    offered = set(offered_topics(db, settings))
    wanted = set(chosen_topics(db, settings, topics))
    held = {tag.name: tag.id for tag in person.tags}
    dropped = [tag_id for tag_name, tag_id in held.items() if tag_name in offered - wanted]
    added = sorted(wanted - set(held))
    repo.update_profiles(db, [(person.id, clean, person.locale)])
    repo.set_paused_until(db, person.id, until)
    repo.unlink_tags(db, person.id, dropped)
    if added:
        ids = repo.ensure_tags(db, added)
        repo.link_tags(db, [(person.id, ids[tag]) for tag in added])


def _name_problem(exc: InvalidName) -> str:
    text = str(exc)
    if "line break" in text or "control character" in text:
        return "不能包含换行或控制字符。"
    if "characters long" in text:
        return "太长了。"
    return "格式不正确。"


def leave(db: Session, subscriber_id: int) -> bool:
    """Unsubscribe (queued deliveries are skipped when claimed); whether the status changed."""
    _person(db, subscriber_id)
    return unsubscribe(db, subscriber_id, LEFT_HERE)


def come_back(db: Session, subscriber_id: int) -> bool:
    """Resubscribe an unsubscribed person; whether the status changed (False: already
    active). Raises :class:`PreferenceRefused` for a bounced, suppressed or pending one."""
    person = _person(db, subscriber_id)
    status = SubscriberStatus(person.status)
    if status is SubscriberStatus.active:
        return False
    if status is not SubscriberStatus.unsubscribed:
        raise PreferenceRefused(NO_COMEBACK.get(status, "这里不能重新订阅。"))
    return repo.set_status(
        db,
        person.id,
        SubscriberStatus.active,
        BACK_HERE,
        utcnow(),
        only_from=[SubscriberStatus.unsubscribed],
    )


def ask_for_export(db: Session, subscriber_id: int) -> bool:
    """Queue the "send me my data" mail, unless one was asked for within the interval;
    whether it was queued. The caller commits, then calls ``tasks.subscribers.send_soon()``."""
    person = _person(db, subscriber_id)
    # Serialises two presses at once on PostgreSQL (the row lock), so both cannot pass the
    # count below; SQLite runs one writer at a time anyway.
    mail_outbox_repo.lock_subscriber(db, person.id)
    now = utcnow()
    if gdpr_repo.last_export_asked(db, person.id, now - EXPORT_INTERVAL) is not None:
        return False
    mail_outbox.queue(db, person.id, SubscriberMailKind.export)
    return True
