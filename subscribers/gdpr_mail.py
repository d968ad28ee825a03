"""The "send me my data" mail: a short note (text and HTML) with the export attached as JSON.

Templates ``templates/email/export.{html,txt}`` (variables: ``subject``, ``greeting``,
``organizer``, ``filename``, ``preferences_url``). Like the other one-off mails
(:func:`newsletter.mail.notice.build_notice`: no List-* headers, ``Auto-Submitted``), but
``multipart/mixed``: the note as ``multipart/alternative`` first, then the JSON as an
attachment, base64 in lines of 76 like every part we write. The JSON goes only to the
address on file, never to the page that asked for it.
"""

from __future__ import annotations

import secrets
from email.utils import parseaddr

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.installation import installation_token
from newsletter.links import preferences_link
from newsletter.mail.headers import addr_spec, address_header, unstructured
from newsletter.mail.message import (
    CRLF,
    OutgoingMessage,
    base64_lines,
    canonical_body,
    date_header,
)
from newsletter.rendering import render_email_template
from newsletter.rendering.invitation import greeting_for
from subscribers.models import Subscriber

SUBJECT = "你在{organizer}的订阅数据"
FILENAME = "my-data.json"


def _part(content_type: str, body: bytes, *, disposition: str | None = None) -> list[bytes]:
    head = f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
    if disposition:
        head += f"Content-Disposition: {disposition}\r\n"
    return [head.encode("ascii"), *base64_lines(body)]


def export_mail(
    db: Session, settings: Settings, person: Subscriber, export: str
) -> OutgoingMessage:
    """The finished mail to ``person`` carrying ``export`` (the JSON text)."""
    subject = SUBJECT.format(organizer=settings.organizer)
    html, text = render_email_template(
        "export",
        subject=subject,
        greeting=greeting_for(person.name or ""),
        organizer=settings.organizer,
        filename=FILENAME,
        preferences_url=preferences_link(
            settings.base_url, settings.secret_keys, subscriber_id=person.id
        ),
    )
    from_name, sender = parseaddr(settings.from_address)
    try:
        sender = addr_spec(sender)
    except ValueError as exc:
        raise ConfigurationError(f"the From address cannot be used to send mail: {exc}") from None
    try:
        recipient = addr_spec(person.email)
    except ValueError as exc:
        raise DeliveryError(f"the recipient address is unusable: {exc}", permanent=True) from None
    unique = secrets.token_hex(8)
    message_id = f"<x{unique}.{installation_token(db)}@{settings.sender_domain}>"
    mixed, alternative = f"=_x{unique}.mix", f"=_x{unique}.alt"
    head = [
        address_header("From", from_name, sender),
        address_header("To", person.name, recipient),
        unstructured("Subject", subject),
        "Date: " + date_header(None),
        "Message-ID: " + message_id,
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{mixed}"',
        "",
    ]
    pieces = ["\r\n".join(head).encode("ascii")]
    pieces.append(
        f'--{mixed}\r\nContent-Type: multipart/alternative; boundary="{alternative}"\r\n'.encode(
            "ascii"
        )
    )
    for content_type, body in (
        ("text/plain; charset=utf-8", canonical_body(text)),
        ("text/html; charset=utf-8", canonical_body(html)),
    ):
        pieces.append(f"--{alternative}".encode("ascii"))
        pieces += _part(content_type, body)
    pieces.append(f"--{alternative}--".encode("ascii"))
    pieces.append(f"--{mixed}".encode("ascii"))
    pieces += _part(
        f'application/json; charset=utf-8; name="{FILENAME}"',
        export.encode("utf-8"),
        disposition=f'attachment; filename="{FILENAME}"',
    )
    pieces.append(f"--{mixed}--".encode("ascii"))
    pieces.append(b"")
    return OutgoingMessage(
        delivery_id=0,
        envelope_from=sender,
        recipient=recipient,
        message_id=message_id,
        data=CRLF.join(pieces),
        dot_safe=True,
    )
