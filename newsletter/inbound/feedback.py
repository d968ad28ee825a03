"""Complaints: RFC 5965 abuse reports (ARF) and Microsoft's JMRP feedback loop."""

from __future__ import annotations

import email
import email.message
from email.utils import parseaddr

from newsletter.inbound.mime import original, original_id, parts, typed_address
from newsletter.inbound.models import InboundKind
from newsletter.inbound.report import Report


def arf(msg: email.message.Message) -> Report:
    """An RFC 5965 feedback report: abuse (and the like) → complaint, the rest unknown."""
    feedback_type: str | None = None
    rcpt: str | None = None
    for part in parts(msg):
        if part.get_content_type() != "message/feedback-report":
            continue
        fields = _feedback_fields(part)
        feedback_type = fields.get("feedback-type", "").strip().lower()
        rcpt = typed_address(fields.get("original-rcpt-to")) or None
    attached = original(msg)
    if rcpt is None and attached is not None:
        to = parseaddr(str(attached.get("To", "")))[1]
        rcpt = to if "@" in to else None  # FBLs often redact it: "undisclosed recipient"
    # "abuse" is what feedback loops send; "fraud" and "virus" are complaints too. "not-spam"
    # and "auth-failure" reports ask nothing of the list.
    complaint = feedback_type in (None, "", "abuse", "fraud", "virus", "other")
    kind = InboundKind.complaint if complaint else InboundKind.unknown
    return Report(
        kind,
        address=rcpt,
        message_id=original_id(msg),
        diagnostic=f"feedback-type: {feedback_type}" if feedback_type else None,
    )


def _feedback_fields(part: email.message.Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list):
        fields: dict[str, str] = {}
        for block in payload:
            if isinstance(block, email.message.Message):
                for name, value in block.items():  # the first of a repeated field counts
                    fields.setdefault(name.lower(), str(value))
        return fields
    body = part.get_payload(decode=True)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    first: dict[str, str] = {}
    for name, value in email.message_from_string(text).items():
        first.setdefault(name.lower(), str(value))
    return first


def jmrp(msg: email.message.Message) -> Report | None:
    """Microsoft's feedback loop (JMRP, Outlook.com/Hotmail): not ARF but a multipart/mixed
    whose attached original carries ``X-HmXmrOriginalRecipient``: a complaint all the same."""
    if msg.get_content_maintype() != "multipart":
        return None
    attached = original(msg)
    if attached is None or not attached.get("X-HmXmrOriginalRecipient"):
        return None
    rcpt = parseaddr(str(attached.get("X-HmXmrOriginalRecipient")))[1]
    return Report(
        InboundKind.complaint,
        address=rcpt if "@" in rcpt else None,
        message_id=original_id(msg),
        diagnostic="feedback loop: Microsoft JMRP",
    )
