"""The invitation: what a template sees, and the full (slow) render of one message.

:func:`render_invitation` runs Jinja and premailer for one recipient; it is the reference that
:class:`~newsletter.rendering.personalise.InvitationTemplate` (compile once, fill in per
recipient) must match byte for byte, and what a preview uses.

Campaign mails other than the invitation (the reminder) are the same machinery with another
template name: :data:`MAIL_TEMPLATES`. They see the same context and the same slots ``r``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from newsletter.rendering.environment import (
    cn_date,
    cn_datetime_range,
    cn_deadline,
    get_environment,
    hm,
    template_source,
)
from newsletter.rendering.inline import inline_css
from newsletter.sessions.archive import ArchiveRow
from newsletter.sessions.schema import SessionRecord, VenueMode

INVITATION = "email/invitation"
#: The reminder to those who confirmed a seat: no RSVP buttons, no archive table.
REMINDER = "email/reminder"
#: Every template a campaign can mail, each compiled and personalised the same way.
#: A change notice (the record changed after mail went out): what changed, then the facts.
CHANGE = "email/change"
#: After the session: thanks, the record's recordings and slides, and the feedback link.
FOLLOWUP = "email/followup"
MAIL_TEMPLATES = (INVITATION, REMINDER, CHANGE, FOLLOWUP)
CLUB_PROFILE = "email/_club.md"


@dataclass(frozen=True)
class Recipient:
    """The per-recipient values of one invitation: a name (may be empty) and signed links."""

    name: str
    rsvp_yes_url: str
    rsvp_maybe_url: str
    rsvp_no_url: str
    calendar_url: str
    unsubscribe_url: str
    preferences_url: str  # the footer's link to the person's preference page
    # The follow-up's signed feedback form (empty in every other mail, which never prints it).
    feedback_url: str = ""


@dataclass(frozen=True)
class RenderedInvitation:
    """A finished invitation: subject, HTML part (CSS inlined) and plain-text part."""

    subject: str
    html: str
    text: str


# --- the per-recipient slots -------------------------------------------------------------------

#: The values a template prints per recipient, in a fixed order. ``greeting`` is text content;
#: the others are URLs inside ``href`` attributes (and full URLs in the text part).
SLOT_FIELDS: tuple[str, ...] = (
    "greeting",
    "rsvp_yes_url",
    "rsvp_maybe_url",
    "rsvp_no_url",
    "calendar_url",
    "unsubscribe_url",
    "preferences_url",
    "feedback_url",
)
TEXT_SLOTS = frozenset({"greeting"})

# Characters a URL keeps as they are; everything else (space, quotes, <, >, non-ASCII, controls)
# is percent-encoded. Such a URL reads the same to a browser, and an HTML serializer has nothing
# left to rewrite in it (libxml2 percent-encodes spaces and non-ASCII inside href on output and
# picks single quotes for a value holding a double quote), so the compiled template and a full
# render produce the same bytes for it.
_URL_SAFE = "-._~!#$%&()*+,/:;=?@[]"
_URL_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9\-._~!#$%&()*+,/:;=?@\[\]]")
_URL_SCHEMES = ("https://", "http://", "mailto:")
# Characters no name should carry and that the HTML parser would alter (NUL becomes U+FFFD)
# or that UTF-8 cannot encode (lone surrogates).
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def canonical_url(url: str) -> str:
    """``url`` with every character outside the URL-safe ASCII set percent-encoded.

    Only absolute ``http(s)`` and ``mailto`` links are accepted: a per-recipient link is
    always one of ours, and anything else (``javascript:``) is a bug to stop loudly.
    """
    if not url.startswith(_URL_SCHEMES):
        raise ValueError(f"a recipient link must be an absolute http(s) or mailto URL: {url!r}")
    if _URL_NEEDS_QUOTING.search(url) is None:
        return url
    return quote(url, safe=_URL_SAFE)


def clean_name(name: str) -> str:
    """The name as shown: whitespace runs (tabs, newlines) made one space, controls dropped."""
    collapsed = " ".join(name.split())
    return _NOT_TEXT.sub("", collapsed) if _NOT_TEXT.search(collapsed) else collapsed


def greeting_for(name: str) -> str:
    """``{name}，你好！``, or a neutral ``你好！`` when there is no name.

    Chosen in Python, not in the template: a compiled template has one sentinel for the whole
    greeting and cannot branch on a value it does not know yet.
    """
    shown = clean_name(name)
    return f"{shown}，你好！" if shown else "你好！"


def slot_values(recipient: Recipient) -> tuple[str, ...]:
    """The recipient's values in :data:`SLOT_FIELDS` order, ready to print (not yet escaped)."""
    return (
        greeting_for(recipient.name),
        canonical_url(recipient.rsvp_yes_url),
        canonical_url(recipient.rsvp_maybe_url),
        canonical_url(recipient.rsvp_no_url),
        canonical_url(recipient.calendar_url),
        canonical_url(recipient.unsubscribe_url),
        canonical_url(recipient.preferences_url),
        canonical_url(recipient.feedback_url) if recipient.feedback_url else "",
    )


@dataclass(frozen=True, slots=True)
class Slots:
    """What templates see as ``r``: one printable string per slot field."""

    greeting: str
    rsvp_yes_url: str
    rsvp_maybe_url: str
    rsvp_no_url: str
    calendar_url: str
    unsubscribe_url: str
    preferences_url: str
    feedback_url: str

    @classmethod
    def of(cls, values: Sequence[str]) -> Slots:
        """Slots from values in :data:`SLOT_FIELDS` order."""
        return cls(*values)


# --- the context -------------------------------------------------------------------------------


def default_subject(record: SessionRecord) -> str:
    """``第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性`` (the theme, else the title);
    a cancelled session's subject says so first."""
    subject = f"第 {record.number} 期{record.series}邀请函：{record.theme or record.title}"
    return f"【已取消】{subject}" if record.cancelled else subject


def reminder_subject(record: SessionRecord, timezone: str) -> str:
    """``提醒：第 61 期机器学习学术沙龙 · 10月25日（周日）19:30``: which session and when it
    starts, in the session's zone (``timezone`` is the default for a record without one)."""
    tz = session_zone(record, timezone)
    when = f"{cn_date(record.starts_at, tz)}{hm(record.starts_at, tz)}"
    return f"提醒：第 {record.number} 期{record.series} · {when}"


def change_subject(record: SessionRecord) -> str:
    """``【变更】第 61 期机器学习学术沙龙：联邦学习的鲁棒性 · 活动信息有更新``, or for a
    cancellation ``【取消】第 61 期…：… · 本期活动已取消``."""
    head = f"第 {record.number} 期{record.series}：{record.theme or record.title}"
    if record.cancelled:
        return f"【取消】{head} · 本期活动已取消"
    return f"【变更】{head} · 活动信息有更新"


def followup_subject(record: SessionRecord) -> str:
    """``感谢参加第 61 期机器学习学术沙龙：联邦学习的鲁棒性 · 回放、资料与反馈``."""
    head = f"第 {record.number} 期{record.series}：{record.theme or record.title}"
    return f"感谢参加{head} · 回放、资料与反馈"


def subject_for(template: str, record: SessionRecord, timezone: str) -> str:
    """The default subject of a mail made from ``template`` (one of :data:`MAIL_TEMPLATES`)."""
    if template == FOLLOWUP:
        return followup_subject(record)
    if template == CHANGE:
        return change_subject(record)
    if template == REMINDER:
        return reminder_subject(record, timezone)
    if template == INVITATION:
        return default_subject(record)
    raise ValueError(f"{template!r} is not a campaign mail template ({', '.join(MAIL_TEMPLATES)})")


def session_zone(record: SessionRecord, default: str) -> ZoneInfo:
    """The zone the session's times are shown in: the record's own, else the configured one."""
    return ZoneInfo(record.timezone or default)


def _mode_text(record: SessionRecord) -> str:
    """``线上（Mo平台直播、钉钉直播）``, ``线下`` or ``线下 + 线上（…）``."""
    venue = record.venue
    if venue is None:
        return "待定"
    streams = "、".join(stream.name for stream in venue.streams)
    online = f"线上（{streams}）" if streams else "线上"
    return {
        VenueMode.online: online,
        VenueMode.offline: "线下",
        VenueMode.hybrid: f"线下 + {online}",
    }[venue.mode]


def _venue_phrase(record: SessionRecord) -> str:
    """Where, as the invitation sentence says it: ``在线上`` / ``在杭州`` / ``在杭州和线上同步``
    (the address, which names the city in the examples, else the room)."""
    venue = record.venue
    if venue is None:
        return ""
    place = venue.address or venue.name
    if venue.mode is VenueMode.online or not place:
        return "在线上"
    return f"在{place}和线上同步" if venue.mode is VenueMode.hybrid else f"在{place}"


def _seats_line(record: SessionRecord, tz: ZoneInfo) -> str:
    """``名额 60 人，报名截止 12月05日 10:00`` (either half alone when only one is set)."""
    registration = record.registration
    if registration is None:
        return ""
    parts = []
    if registration.capacity:
        parts.append(f"名额 {registration.capacity} 人")
    if registration.deadline:
        parts.append(f"报名截止 {cn_deadline(registration.deadline, tz)}")
    return "，".join(parts)


def invitation_context(
    record: SessionRecord,
    archive: Sequence[ArchiveRow],
    *,
    subject: str,
    organizer: str,
    timezone: str,
    rsvp: bool = True,
    archive_rows: int | None = None,
    archive_url: str = "",
) -> dict[str, Any]:
    """Everything the invitation templates print except the recipient's values (``r``).

    ``archive_rows`` (``NEWSLETTER_ARCHIVE_ROWS``) keeps only the latest rows of the archive
    table, and a line links to ``archive_url`` (the public /archive) for the earlier ones;
    None keeps every row, as the seeds do, and prints nothing of the line.

    ``rsvp=False`` is the mail about a session that has already ended (``campaign create
    --past``): no RSVP buttons or links, no calendar link and no seats or deadline line,
    since the server refuses answers for it; a line says that the session is over.
    """
    tz = session_zone(record, timezone)
    when = cn_datetime_range(record.starts_at, record.ends_at, tz)
    rows = tuple(archive)
    shown = rows if archive_rows is None else rows[len(rows) - min(archive_rows, len(rows)) :]
    shown_organizer = record.organizer or organizer
    place = record.venue.name if record.venue and record.venue.name else _mode_text(record)
    return {
        "record": record,
        "archive": shown,
        "archive_more": len(archive) - len(shown),
        "archive_url": archive_url,
        "subject": subject,
        "organizer": shown_organizer,
        "tz": tz,
        "when": when,
        "mode_text": _mode_text(record),
        "venue_phrase": _venue_phrase(record),
        "seats_line": _seats_line(record, tz) if rsvp else "",
        "rsvp_open": rsvp and not record.cancelled,
        "ended": not rsvp,
        "about": record.about or template_source(CLUB_PROFILE),
        # The line inbox lists show after the subject; hidden in the mail itself.
        "preheader": f"{'【已取消】' if record.cancelled else ''}{when} · {place} · {record.title}",
    }


def render_parts(name: str, context: Mapping[str, Any]) -> tuple[str, str]:
    """Render ``{name}.html`` (with CSS inlined) and ``{name}.txt`` with one context."""
    environment = get_environment()
    html = environment.get_template(f"{name}.html").render(context)
    text = environment.get_template(f"{name}.txt").render(context)
    return inline_css(html), text


def render_invitation(
    record: SessionRecord,
    archive: Sequence[ArchiveRow],
    recipient: Recipient,
    *,
    subject: str | None = None,
    organizer: str,
    timezone: str,
    template: str = INVITATION,
    rsvp: bool = True,
    extra: Mapping[str, Any] | None = None,
    archive_rows: int | None = None,
    archive_url: str = "",
) -> RenderedInvitation:
    """Render one invitation (or another mail of :data:`MAIL_TEMPLATES`) in full: Jinja with
    the recipient's values, then premailer.

    Milliseconds per call; campaigns use :class:`InvitationTemplate` instead, which gives the
    same bytes in microseconds. ``organizer`` and ``timezone`` are the configured defaults for a
    record that names neither; ``rsvp=False`` leaves out answering (see
    :func:`invitation_context`); ``extra``: more context for the template (a change
    notice's ``changes``).
    """
    final_subject = subject or subject_for(template, record, timezone)
    context = invitation_context(
        record,
        archive,
        subject=final_subject,
        organizer=organizer,
        timezone=timezone,
        rsvp=rsvp,
        archive_rows=archive_rows,
        archive_url=archive_url,
    )
    context.update(extra or {})
    context["r"] = Slots.of(slot_values(recipient))
    html, text = render_parts(template, context)
    return RenderedInvitation(subject=final_subject, html=html, text=text)


def render_email_template(name: str, **context: Any) -> tuple[str, str]:
    """Render another mail (reminder, waitlist, confirmation): ``templates/email/{name}.html``
    with CSS inlined, and ``templates/email/{name}.txt``. Returns ``(html, text)``.

    The templates may extend ``email/base.html`` and use the same filters as the invitation.
    """
    return render_parts(f"email/{name}", context)
