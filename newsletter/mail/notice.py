"""One-off mails to one person (an RSVP confirmation, a seat freed from the waitlist).

Unlike campaign mail these are not bulk: no List-* or Precedence headers. Besides the text and
HTML parts they can carry the event as ``text/calendar; method=PUBLISH`` (RFC 6047), with the
same METHOD inside the .ics, so mail clients offer to add it to a calendar without treating it
as an invitation to reply to. A confirmation also shows the attendee's check-in QR code: an
``inline`` image (:mod:`newsletter.mail.inline_image`) makes the message ``multipart/related``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.utils import parseaddr

from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.headers import addr_spec, address_header, unstructured
from newsletter.mail.inline_image import InlineImage, image_part, related_content_type
from newsletter.mail.message import (
    CRLF,
    OutgoingMessage,
    base64_lines,
    canonical_body,
    date_header,
)


def build_notice(
    *,
    from_address: str,
    mail_domain: str,
    installation: str,
    recipient_name: str,
    recipient_address: str,
    subject: str,
    text: str,
    html: str,
    calendar: bytes | None = None,
    date: datetime | None = None,
    inline: InlineImage | None = None,
) -> OutgoingMessage:
    """A finished one-off message; ``calendar`` (an .ics with METHOD:PUBLISH) and ``inline``
    (an image the HTML shows as ``cid:``, e.g. the check-in QR code) are optional."""
    from_name, sender = parseaddr(from_address)
    try:
        sender = addr_spec(sender)
    except ValueError as exc:
        raise ConfigurationError(f"the From address cannot be used to send mail: {exc}") from None
    try:
        recipient = addr_spec(recipient_address)
    except ValueError as exc:
        raise DeliveryError(f"the recipient address is unusable: {exc}", permanent=True) from None
    unique = secrets.token_hex(8)
    message_id = f"<n{unique}.{installation}@{mail_domain}>"  # installation: as campaign mail
    boundary = f"=_n{unique}.alt"
    related = f"=_n{unique}.rel"
    content_type = f'Content-Type: multipart/alternative; boundary="{boundary}"'
    if inline is not None:
        content_type = f"{related_content_type(related)}\r\n\r\n--{related}\r\n{content_type}"
    head = [
        address_header("From", from_name, sender),
        address_header("To", recipient_name, recipient),
        unstructured("Subject", subject),
        "Date: " + date_header(date),
        "Message-ID: " + message_id,
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        content_type,
        "",
    ]
    pieces = ["\r\n".join(head).encode("ascii")]
    parts: list[tuple[str, bytes]] = [
        ("text/plain; charset=utf-8", canonical_body(text)),
        ("text/html; charset=utf-8", canonical_body(html)),
    ]
    if calendar is not None:
        # Last part: clients show the richest part they understand, and a calendar-aware one
        # shows the event with an "add" button.
        parts.append(("text/calendar; charset=utf-8; method=PUBLISH", calendar))
    for content_type, body in parts:
        pieces.append(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            "Content-Transfer-Encoding: base64\r\n".encode("ascii")
        )
        pieces += base64_lines(body)
    pieces.append(f"--{boundary}--".encode("ascii"))
    if inline is not None:
        pieces += image_part(related, inline)
    pieces.append(b"")
    return OutgoingMessage(
        delivery_id=0,
        envelope_from=sender,
        recipient=recipient,
        message_id=message_id,
        data=CRLF.join(pieces),
        dot_safe=True,
    )
