"""The confirmation and welcome mails of a sign-up, and the confirm link (one home for it).

Templates: ``templates/email/confirm.{html,txt}`` and ``templates/email/welcome.{html,txt}``
(organizers may edit them; the variables each gets are listed in their builder below). Both
are one-off mails to one person (:func:`newsletter.mail.notice.build_notice`): no List-*
headers, since nobody is on a list yet when the confirmation goes out.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.installation import installation_token
from newsletter.links import preferences_link, recipient_links
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.notice import build_notice
from newsletter.rendering import render_email_template
from newsletter.rendering.invitation import greeting_for
from newsletter.rendering.session_view import view_of
from newsletter.tokens import Purpose, sign
from subscribers import mail_outbox_repo
from subscribers.models import Subscriber

CONFIRM_PATH = "/subscribe/confirm/"
CONFIRM_SUBJECT = "请确认订阅{organizer}的活动邀请"
WELCOME_SUBJECT = "欢迎订阅{organizer}的活动邀请"


def confirm_payload(*, subscriber_id: int, mail_id: int) -> dict[str, int]:
    """The ids a confirm link carries: the person and the confirmation mail (the web app
    checks that the row still exists, i.e. the sign-up was not deleted as expired)."""
    return {"u": subscriber_id, "m": mail_id}


def confirm_link(settings: Settings, *, subscriber_id: int, mail_id: int) -> str:
    """The absolute confirm link of one confirmation mail (ids only, no address)."""
    token = sign(
        Purpose.CONFIRM,
        confirm_payload(subscriber_id=subscriber_id, mail_id=mail_id),
        settings.secret_keys,
    )
    return f"{settings.base_url.rstrip('/')}{CONFIRM_PATH}{token}"


def _greeting(person: Subscriber) -> str:
    return greeting_for(person.name or "")


def _mail(
    db: Session, settings: Settings, person: Subscriber, subject: str, html: str, text: str
) -> OutgoingMessage:
    return build_notice(
        from_address=settings.from_address,
        mail_domain=settings.sender_domain,
        installation=installation_token(db),
        recipient_name=person.name,
        recipient_address=person.email,
        subject=subject,
        text=text,
        html=html,
    )


def build_confirm_mail(
    db: Session, settings: Settings, person: Subscriber, mail_id: int
) -> OutgoingMessage:
    """The double opt-in mail of outbox row ``mail_id``.

    Template variables: ``subject``, ``greeting``, ``organizer``, ``confirm_url`` (the page
    with the one button), ``valid_days`` (how long the link works) and ``expires_on`` (the
    date it stops, 2026-12-09).
    """
    subject = CONFIRM_SUBJECT.format(organizer=settings.organizer)
    html, text = render_email_template(
        "confirm",
        subject=subject,
        greeting=_greeting(person),
        organizer=settings.organizer,
        confirm_url=confirm_link(settings, subscriber_id=person.id, mail_id=mail_id),
        valid_days=settings.pending_days,
        expires_on=f"{utcnow() + timedelta(days=settings.pending_days):%Y-%m-%d}",
    )
    return _mail(db, settings, person, subject, html, text)


def build_welcome_mail(db: Session, settings: Settings, person: Subscriber) -> OutgoingMessage:
    """The one welcome mail after a confirmed sign-up.

    Template variables: ``subject``, ``greeting``, ``organizer``, ``session`` (the next
    session still ahead, as pages show it: ``heading``, ``title``, ``when``, ``where``,
    ``calendar_url``; None when none is scheduled), ``rsvp_url`` (this person's answer page
    for it; None with no session) and ``preferences_url`` (their preference page: from now on
    they are on the list, and every mail to someone on it says how to change or leave it).
    """
    subject = WELCOME_SUBJECT.format(organizer=settings.organizer)
    salon = mail_outbox_repo.next_session(db, utcnow())
    session = view_of(salon, settings.base_url) if salon is not None else None
    rsvp_url = None
    if salon is not None:
        links = recipient_links(
            settings.base_url,
            settings.secret_keys,
            session_id=salon.id,
            session_number=salon.number,
            subscriber_id=person.id,
            campaign_id=0,  # not from a campaign, as the RSVP notices' links
        )
        rsvp_url = links.rsvp_page
    html, text = render_email_template(
        "welcome",
        subject=subject,
        greeting=_greeting(person),
        organizer=settings.organizer,
        session=session,
        rsvp_url=rsvp_url,
        preferences_url=preferences_link(
            settings.base_url, settings.secret_keys, subscriber_id=person.id
        ),
    )
    return _mail(db, settings, person, subject, html, text)
