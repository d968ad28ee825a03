"""A campaign's mail compiled once per process, and each recipient's finished message.

The compiled mail (Jinja + premailer, the slow part) is built once per campaign per process
and cached, so each message costs only a join of precomputed chunks, three token signatures and
a MIME assembly. The campaign's kind picks the template (:data:`TEMPLATE_OF`); invitations and
reminders share everything else, headers included.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from newsletter.calendar import session_calendar
from newsletter.campaigns import repo
from newsletter.campaigns.models import CampaignKind
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.installation import installation_token
from newsletter.links import RecipientLinks, recipient_links
from newsletter.mail.inline_image import InlineImage
from newsletter.mail.message import MessageFactory, OutgoingMessage
from newsletter.rendering import (
    CHANGE,
    FOLLOWUP,
    INVITATION,
    REMINDER,
    InvitationTemplate,
    Recipient,
)
from newsletter.rsvp import checkin
from newsletter.rsvp.feedback import feedback_link
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.archive import ArchiveRow
from newsletter.sessions.changes import ChangeSet
from newsletter.sessions.models import SalonSession

#: The template each kind of campaign mails.
TEMPLATE_OF: dict[CampaignKind, str] = {
    CampaignKind.invitation: INVITATION,
    CampaignKind.reminder: REMINDER,
    CampaignKind.followup: FOLLOWUP,
    CampaignKind.change: CHANGE,
}


@dataclass(frozen=True, slots=True)
class CompiledCampaign:
    """Everything per-campaign that each message reuses."""

    campaign_id: int
    session_id: int
    session_number: int
    template: InvitationTemplate
    factory: MessageFactory
    # A reminder shows each recipient's check-in code (text, HTML, QR image); an invitation not.
    checkin: bool = False
    # A follow-up carries each recipient's signed feedback form link (one more signature).
    feedback: bool = False
    # A change notice carries the updated event: (METHOD, .ics bytes), the same for everyone.
    calendar: tuple[str, bytes] | None = None


# The check-in code's placeholder in a compiled reminder, replaced per recipient in the
# finished bytes (plain letters: premailer passes them through, as the other sentinels).
CHECKIN_SLOT = "CheckinCodeSlotQz7"


def _checkin_cid(code: str, settings: Settings) -> str:
    return f"{code}.qr@{settings.sender_domain}"


def compile_invitation(
    db: Session,
    salon: SalonSession,
    *,
    subject: str | None,
    campaign_id: int,
    settings: Settings,
    kind: str = CampaignKind.invitation,
    rsvp: bool = True,
    details: str | None = None,
) -> CompiledCampaign:
    """Compile the mail of ``salon`` for a campaign of ``kind`` (Jinja + premailer, once) and
    its header factory; ``rsvp=False`` for a session already over (no answering in it);
    ``details``: a change notice's change lines (``Campaign.details``)."""
    record = sessions_repo.record_of(salon)
    kind = CampaignKind(kind)
    # Only the invitation shows the archive table (the query reads every earlier session);
    # a reminder goes to people who are coming and keeps to this session.
    archive: list[ArchiveRow] = (
        sessions_repo.archive_before(db, salon.number) if kind is CampaignKind.invitation else []
    )
    template = InvitationTemplate.build(
        record,
        archive,
        subject=subject,
        organizer=record.organizer or settings.organizer,
        timezone=salon.timezone,
        template=TEMPLATE_OF[kind],
        rsvp=rsvp,
        # NEWSLETTER_ARCHIVE_ROWS: the latest rows only, and a link to the public archive.
        archive_rows=settings.archive_rows,
        archive_url=f"{settings.base_url}/archive",
        extra=(
            _checkin_context(settings) if kind is CampaignKind.reminder else _change(kind, details)
        ),
    )
    factory = MessageFactory(
        from_address=settings.from_address,
        subject=template.subject,
        list_name=record.series,
        mail_domain=settings.sender_domain,
        installation=installation_token(db),
        bounce_address=settings.bounce_address,
    )
    return CompiledCampaign(
        campaign_id,
        salon.id,
        salon.number,
        template,
        factory,
        kind is CampaignKind.reminder,
        feedback=kind is CampaignKind.followup,
        calendar=_change_calendar(salon, settings) if kind is CampaignKind.change else None,
    )


def _change(kind: CampaignKind, details: str | None) -> dict[str, Any] | None:
    """A change notice's template sees what changed (old → new)."""
    return {"changes": ChangeSet.from_json(details)} if kind is CampaignKind.change else None


def _change_calendar(salon: SalonSession, settings: Settings) -> tuple[str, bytes]:
    """The updated event (same UID, SEQUENCE the new revision; CANCEL once cancelled)."""
    record = sessions_repo.record_of(salon)
    ics = session_calendar(
        salon,
        record,
        mail_domain=settings.sender_domain,
        organizer_name=record.organizer or settings.organizer,
        organizer_address=parseaddr(settings.from_address)[1],
        page_url=f"{settings.base_url}/sessions/{salon.number}",
        stamp=utcnow(),
    )
    return ("CANCEL" if salon.cancelled else "PUBLISH", ics)


def _checkin_context(settings: Settings) -> dict[str, str]:
    return {"checkin_code": CHECKIN_SLOT, "checkin_cid": _checkin_cid(CHECKIN_SLOT, settings)}


@lru_cache(maxsize=16)
def _compiled(url: str, campaign_id: int, revision: int, settings: Settings) -> CompiledCampaign:
    """Per process, one compiled template per (campaign, session revision)."""
    with session_scope(url) as db:
        campaign = repo.get_campaign(db, campaign_id)
        assert campaign is not None, "the caller checked that the campaign exists"
        salon = sessions_repo.get_by_id(db, campaign.session_id)
        assert salon is not None, "campaigns reference sessions by foreign key"
        return compile_invitation(
            db,
            salon,
            subject=campaign.subject,
            campaign_id=campaign_id,
            settings=settings,
            kind=campaign.kind,
            # Created after the session ended: only `campaign create --past` makes such a
            # campaign, and its mail offers no answer that the server would refuse.
            rsvp=campaign.created_at < salon.ends_at,
            details=campaign.details,
        )


def compile_campaign(db: Session, campaign_id: int, settings: Settings) -> CompiledCampaign:
    """The cached compiled campaign; a re-imported session (new revision) compiles anew."""
    campaign = repo.get_campaign(db, campaign_id)
    assert campaign is not None, "the caller checked that the campaign exists"
    salon = sessions_repo.get_by_id(db, campaign.session_id)
    assert salon is not None, "campaigns reference sessions by foreign key"
    return _compiled(settings.database_url, campaign_id, salon.revision, settings)


def recipient_for(
    compiled: CompiledCampaign, subscriber_id: int, name: str, settings: Settings, keys: list[str]
) -> tuple[RecipientLinks, Recipient]:
    """One recipient's signed links, and the values the campaign's template fills in."""
    links = recipient_links(
        settings.base_url,
        keys,
        session_id=compiled.session_id,
        session_number=compiled.session_number,
        subscriber_id=subscriber_id,
        campaign_id=compiled.campaign_id,
        unsubscribe_mailbox=settings.bounce_address,
    )
    recipient = Recipient(
        name=name,
        rsvp_yes_url=links.rsvp_yes,
        rsvp_maybe_url=links.rsvp_maybe,
        rsvp_no_url=links.rsvp_no,
        calendar_url=links.calendar,
        unsubscribe_url=links.unsubscribe,
        preferences_url=links.preferences,
        feedback_url=(
            feedback_link(
                settings.base_url,
                keys,
                session_id=compiled.session_id,
                subscriber_id=subscriber_id,
            )
            if compiled.feedback
            else ""
        ),
    )
    return links, recipient


def build_message(
    compiled: CompiledCampaign,
    delivery_id: int,
    subscriber_id: int,
    name: str,
    email: str,
    settings: Settings,
    keys: list[str],
    message_id: str | None = None,
) -> OutgoingMessage:
    """The finished message for one recipient: links, personalised body, MIME bytes
    (``message_id``: the delivery's own unless given, as a preview does)."""
    links, recipient = recipient_for(compiled, subscriber_id, name, settings, keys)
    # UTF-8 with CRLF line ends: the big static chunks were encoded once per campaign.
    rendered = compiled.template.personalise_utf8(recipient, crlf=True)
    html, text, inline = rendered.html, rendered.text, None
    if compiled.checkin:
        # Only reminders pay for this: a signature, two byte replaces and a QR PNG (~12 ms,
        # pure Python; a reminder goes to the confirmed few, not to the whole list).
        # Subscriber 0: a preview with no real recipient (`preview N --reminder`).
        code = (
            checkin.make_code(keys, compiled.session_number, subscriber_id)
            if subscriber_id
            else checkin.sample_code(compiled.session_number)
        )
        slot, value = CHECKIN_SLOT.encode("ascii"), code.encode("ascii")
        html, text = html.replace(slot, value), text.replace(slot, value)
        inline = InlineImage(_checkin_cid(code, settings), checkin.qr_png(code))
    return compiled.factory.build(
        delivery_id=delivery_id,
        recipient_name=name,
        recipient_address=email,
        html=html,
        text=text,
        unsubscribe_url=links.unsubscribe,
        unsubscribe_mailto=links.unsubscribe_mailto,
        message_id=message_id,
        canonical=True,
        inline=inline,
        calendar=compiled.calendar,
    )
