"""Render once, personalise cheaply (DESIGN "Render once, personalise cheaply").

Jinja and premailer cost milliseconds per message, so a campaign runs them once, with a
placeholder *sentinel* in place of each per-recipient value, and cuts the result into static
chunks and slots. Personalising is then a list copy, a few escapes and a ``str.join``.

Sentinels are plain ASCII letters and digits: premailer (libxml2) would percent-encode Jinja
syntax inside ``href`` and may re-serialize entities, but passes such a word through untouched.
The build counts every sentinel before and after premailer and refuses a template where one
was lost, doubled or mangled.

Why the escaping differs slightly from ``markupsafe.escape``: premailer re-serializes the whole
document with libxml2, which writes text content with only ``& < >`` escaped (quotes are
literal), and attribute values with ``& < > "`` escaped. A full render of a name ``"Ann"``
therefore ends up as ``"Ann"`` in the text, not ``&#34;Ann&#34;``. To stay byte-equal with
the full render, text slots (the greeting) are escaped the way libxml2 writes text, which is
just as safe: quotes need no escaping outside attributes. URL slots are canonical (see
:func:`~newsletter.rendering.invitation.canonical_url`: no quotes, spaces or non-ASCII left),
so ``markupsafe.escape`` gives exactly what libxml2 writes for them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import escape

from newsletter.errors import NewsletterError
from newsletter.mail.message import canonical_body
from newsletter.rendering.environment import get_environment
from newsletter.rendering.inline import inline_css
from newsletter.rendering.invitation import (
    INVITATION,
    SLOT_FIELDS,
    TEXT_SLOTS,
    Recipient,
    RenderedInvitation,
    Slots,
    invitation_context,
    slot_values,
    subject_for,
)
from newsletter.sessions.archive import ArchiveRow
from newsletter.sessions.schema import SessionRecord

_TEXT_FIELD_INDEXES = frozenset(SLOT_FIELDS.index(field) for field in TEXT_SLOTS)
#: Slots every invitation must carry: the visible unsubscribe link (SPEC "The message") and
#: the link to the person's preference page (SPEC "Joining and leaving": every mail has it).
_REQUIRED = (SLOT_FIELDS.index("unsubscribe_url"), SLOT_FIELDS.index("preferences_url"))


class RenderingError(NewsletterError):
    """A template cannot be compiled safely (a sentinel was mangled, a slot is misplaced)."""


def escape_text(value: str) -> str:
    """Escape for HTML text content exactly as libxml2 serializes text: ``&``, ``<``, ``>``."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Compiled:
    """One part (HTML or text) cut at its slots: ``parts[index]`` is filled by ``field``.

    The chunks are kept as ``str`` and, for :meth:`InvitationTemplate.personalise_utf8`, as
    UTF-8 ``bytes``: encoding 45 KB of mostly Chinese text costs more per message than all
    the rest of personalising it.
    """

    __slots__ = ("crlf_safe", "parts", "parts_crlf", "parts_utf8", "slots")

    def __init__(self, parts: list[str], slots: tuple[tuple[int, int], ...]) -> None:
        self.parts = parts
        self.parts_utf8 = [part.encode("utf-8") for part in parts]
        # The same chunks with CRLF line ends, the form MIME encodes: converting 45 KB per
        # message was a fifth of building it. Chunk by chunk equals the whole document
        # converted unless a chunk ends in a bare CR (its LF could follow in the next piece).
        self.parts_crlf = [canonical_body(part) for part in self.parts_utf8]
        self.crlf_safe = not any(part.endswith(b"\r") for part in self.parts_utf8)
        self.slots = slots

    def fill(self, values: Sequence[str]) -> str:
        parts = self.parts.copy()
        for index, field in self.slots:
            parts[index] = values[field]
        return "".join(parts)

    def fill_utf8(self, values: Sequence[bytes], *, crlf: bool = False) -> bytes:
        if crlf and not (self.crlf_safe and not any(b"\r" in v or b"\n" in v for v in values)):
            return canonical_body(self.fill_utf8(values))  # rare: a value holds a line break
        parts = (self.parts_crlf if crlf else self.parts_utf8).copy()
        for index, field in self.slots:
            parts[index] = values[field]
        return b"".join(parts)


class InvitationTemplate:
    """A campaign's invitation, compiled once; :meth:`personalise` makes each message::

    template = InvitationTemplate.build(record, archive, organizer=..., timezone=...)
    template.personalise(recipient)  # == render_invitation(record, archive, recipient, ...)

    Other campaign mails (``template=REMINDER``) are compiled and personalised the same way.
    """

    __slots__ = ("_html", "_text", "subject")

    def __init__(self, subject: str, html: _Compiled, text: _Compiled) -> None:
        self.subject = subject
        self._html = html
        self._text = text

    @classmethod
    def build(
        cls,
        record: SessionRecord,
        archive: Sequence[ArchiveRow],
        *,
        subject: str | None = None,
        organizer: str,
        timezone: str,
        template: str = INVITATION,
        rsvp: bool = True,
        extra: Mapping[str, Any] | None = None,
        archive_rows: int | None = None,
        archive_url: str = "",
    ) -> InvitationTemplate:
        """Render the invitation (or ``template``, one of ``MAIL_TEMPLATES``) once with
        sentinels, inline its CSS once, and cut it into chunks and slots. ``organizer`` and
        ``timezone`` are the configured defaults for a record that names neither; ``rsvp=False``
        leaves out answering, for a session already over; ``extra`` is more context for the
        template (a change notice's ``changes``); ``archive_rows`` and ``archive_url`` keep
        only the latest archive rows with a link to the rest (see ``invitation_context``). Raises
        :class:`RenderingError` if a sentinel did not survive rendering intact."""
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
        # A fresh random word per build: record text cannot contain it by accident.
        nonce = secrets.token_hex(8)
        sentinels = tuple(f"SLOT{nonce}X{index}Z" for index in range(len(SLOT_FIELDS)))
        context["r"] = Slots.of(sentinels)
        environment = get_environment()
        rendered_html = environment.get_template(f"{template}.html").render(context)
        text = environment.get_template(f"{template}.txt").render(context)
        html = inline_css(rendered_html)
        _check_survived(rendered_html, html, sentinels, nonce)
        return cls(
            final_subject,
            _cut(html, sentinels, "HTML", check_context=True),
            _cut(text, sentinels, "text", check_context=False),
        )

    def personalise(self, recipient: Recipient) -> RenderedInvitation:
        """The invitation for ``recipient``: microseconds, byte-equal to a full render.

        Values are escaped for HTML in the HTML part and printed as they are in the text part.
        """
        values = slot_values(recipient)
        return RenderedInvitation(
            subject=self.subject,
            html=self._html.fill(_html_values(values)),
            text=self._text.fill(values),
        )

    def personalise_utf8(self, recipient: Recipient, *, crlf: bool = False) -> EncodedInvitation:
        """:meth:`personalise`, with both parts already UTF-8 encoded (what a MIME builder
        needs): the same bytes as ``personalise(recipient).html.encode()``, a fifth faster
        per finished message because the big static chunks were encoded at build time.
        ``crlf=True``: with CRLF line ends, the same bytes as
        :func:`~newsletter.mail.message.canonical_body` of those, converted at build time too.
        """
        values = slot_values(recipient)
        html = [value.encode("utf-8") for value in _html_values(values)]
        return EncodedInvitation(
            subject=self.subject,
            html=self._html.fill_utf8(html, crlf=crlf),
            text=self._text.fill_utf8([value.encode("utf-8") for value in values], crlf=crlf),
        )


@dataclass(frozen=True)
class EncodedInvitation:
    """A finished invitation with UTF-8 encoded parts (see :meth:`personalise_utf8`)."""

    subject: str
    html: bytes
    text: bytes


def _html_values(values: Sequence[str]) -> list[str]:
    """Slot values escaped for the HTML part: text slots as libxml2 writes text, URL slots
    (canonical, so only ``&`` changes) with markupsafe."""
    return [
        escape_text(value) if field in _TEXT_FIELD_INDEXES else str(escape(value))
        for field, value in enumerate(values)
    ]


def _check_survived(before: str, after: str, sentinels: Sequence[str], nonce: str) -> None:
    """Every sentinel appears as often after premailer as before, and no piece of one is left
    elsewhere (a percent-encoded or split sentinel still carries the nonce)."""
    for field, sentinel in zip(SLOT_FIELDS, sentinels, strict=True):
        if before.count(sentinel) != after.count(sentinel):
            raise RenderingError(
                f"the {field} placeholder appears {before.count(sentinel)} times in the rendered "
                f"invitation but {after.count(sentinel)} times after CSS inlining: a template "
                "puts it where premailer rewrites it"
            )
    total = sum(after.count(sentinel) for sentinel in sentinels)
    if after.count(nonce) != total:
        raise RenderingError("a per-recipient placeholder was mangled by CSS inlining")


def _cut(document: str, sentinels: Sequence[str], part: str, *, check_context: bool) -> _Compiled:
    """Split ``document`` at the sentinels into static chunks and (index, field) slots."""
    pattern = re.compile("|".join(re.escape(sentinel) for sentinel in sentinels))
    field_of = {sentinel: index for index, sentinel in enumerate(sentinels)}
    parts: list[str] = []
    slots: list[tuple[int, int]] = []
    position = 0
    for match in pattern.finditer(document):
        field = field_of[match.group(0)]
        if check_context and field in _TEXT_FIELD_INDEXES and _inside_tag(document, match.start()):
            raise RenderingError(
                f"{SLOT_FIELDS[field]} is text and must not be used inside a tag in the {part}"
            )
        parts.append(document[position : match.start()])
        slots.append((len(parts), field))
        parts.append("")  # filled per recipient
        position = match.end()
    parts.append(document[position:])
    present = {field for _, field in slots}
    for field in _REQUIRED:
        if field not in present:
            raise RenderingError(f"the {part} part has no {SLOT_FIELDS[field]}")
    return _Compiled(parts, tuple(slots))


def _inside_tag(document: str, position: int) -> bool:
    """Whether ``position`` is inside a tag (an attribute) rather than in text content.

    In serialized HTML a ``<`` or ``>`` outside markup is always written as an entity, so the
    nearest one before the position tells.
    """
    return document.rfind("<", 0, position) > document.rfind(">", 0, position)
