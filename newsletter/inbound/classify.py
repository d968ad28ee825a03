"""Raw returned mail → :class:`~newsletter.inbound.report.Report`.

The order of the tests is the rule, and it matters:

1. **The report type decides first.** A ``multipart/report`` with
   ``report-type=delivery-status`` is a DSN (RFC 3464), one with ``report-type=feedback-report``
   an abuse report (RFC 5965 ARF). DSNs themselves carry ``Auto-Submitted: auto-replied``
   (RFC 3464 says so), so that header must not be looked at before the report type.
2. **Auto-replies next** (RFC 3834 ``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
   ``X-Autorespond``, ``Precedence: auto_reply``, out-of-office subjects in English and
   Chinese): an auto-reply is never a bounce, however much its text looks like one. The one
   exception is a message from a mailer daemon: old Exim and others mark their plain-text
   bounces ``Auto-Submitted: auto-replied`` too, and a person's out-of-office never comes
   from ``MAILER-DAEMON`` or ``postmaster``.
3. **Mail to the List-Unsubscribe mailto** (subject ``unsubscribe <token>``): the token is
   only carried here; the service verifies it and treats a bad one as unknown.
4. **Non-standard bounces** through flufl.bounce's detectors (qmail, old Exim, Yahoo, …):
   permanent or temporary failures.
5. Anything else is unknown: stored for an organizer to inspect, changing nothing.
"""

from __future__ import annotations

import email
import email.message
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from newsletter.inbound.models import InboundKind
from newsletter.inbound.report import Report
from newsletter.inbound.verp import verp_delivery_id

# An enhanced status code (RFC 3463): class.subject.detail.
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(?:re:\s*)?unsubscribe\s+([A-Za-z0-9_.\-]+)\s*$", re.I)
# Subjects of out-of-office replies that carry none of the RFC 3834 headers (Exchange without
# them, web mailers, Chinese providers). Anchored at the start: "Out of Office: <subject>".
_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|autoreply|out of (?:the )?office"
    r"|away from (?:the )?office|on vacation|vacation reply|abwesenheitsnotiz|réponse automatique"
    r"|自动回复|自動回覆|自动答复|休假|不在办公室|外出)",
    re.I,
)
_ORIGINAL_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.I | re.M)
# Senders of bounces, never of a person's out-of-office reply.
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "maildaemon", "mail delivery")
DIAGNOSTIC_CHARS = 500  # the remote server's words, kept for the organizer, shortened


def parse(raw: bytes) -> email.message.Message:
    """``raw`` as a compat32 message (what flufl.bounce's detectors walk)."""
    return email.message_from_bytes(raw)


def classify(
    raw: bytes,
    *,
    bounce_address: str | None,
    envelope_recipients: Sequence[str] = (),
) -> Report:
    """What ``raw`` (one returned message) says, with the VERP delivery id when it has one.

    ``bounce_address`` (``settings.bounce_address``) makes the VERP forms recognisable in
    ``envelope_recipients`` (the RCPT TO of the receiver, the pipe's ``$RECIPIENT``) and in
    the message's own To / Delivered-To headers. Never raises for a malformed message: what
    cannot be read is unknown.
    """
    msg = parse(raw)
    delivery_id = _verp(msg, bounce_address, envelope_recipients)
    report_type = msg.get_param("report-type", header="content-type")
    content_type = msg.get_content_type()
    kind_report: Report | None = None
    if content_type == "multipart/report" and isinstance(report_type, str):
        if report_type.lower() == "delivery-status":
            kind_report = _dsn(msg)
        elif report_type.lower() == "feedback-report":
            kind_report = _arf(msg)
    if kind_report is None and _is_auto_reply(msg) and not _from_daemon(msg):
        kind_report = Report(
            InboundKind.auto_reply, address=_from_address(msg), message_id=_original_id(msg)
        )
    if kind_report is None:
        kind_report = _unsubscribe(msg) or _flufl(msg) or Report(InboundKind.unknown)
    if kind_report.message_id is None and kind_report.kind is not InboundKind.unsubscribe:
        kind_report = _with(kind_report, message_id=_original_id(msg))
    return _with(kind_report, delivery_id=delivery_id)


def _with(report: Report, **changes: object) -> Report:
    return replace(report, **changes)  # type: ignore[arg-type]


def _verp(
    msg: email.message.Message, bounce_address: str | None, envelope: Sequence[str]
) -> int | None:
    if not bounce_address:
        return None
    candidates: list[str] = list(envelope)
    for header in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"):
        candidates += [addr for _, addr in getaddresses(_headers(msg, header))]
    for candidate in candidates:
        found = verp_delivery_id(candidate, bounce_address)
        if found is not None:
            return found
    return None


def _headers(msg: email.message.Message, name: str) -> list[str]:
    return [str(value) for value in msg.get_all(name, [])]


def _text(value: object) -> str:
    """A header value decoded from RFC 2047 words, never raising."""
    try:
        return str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, ValueError, email.errors.HeaderParseError):
        return str(value)


def _from_address(msg: email.message.Message) -> str | None:
    address = parseaddr(str(msg.get("From", "")))[1]
    return address or None


def _from_daemon(msg: email.message.Message) -> bool:
    sender = _text(msg.get("From", "")).lower()
    return any(daemon in sender for daemon in _DAEMONS)


def _is_auto_reply(msg: email.message.Message) -> bool:
    """RFC 3834 and the headers and subjects auto-responders use instead."""
    submitted = str(msg.get("Auto-Submitted", "")).strip().lower()
    if submitted and not submitted.startswith("no"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    if str(msg.get("X-Auto-Response-Suppress", "")).strip() and _ooo_subject(msg):
        return True
    return _ooo_subject(msg)


def _ooo_subject(msg: email.message.Message) -> bool:
    return bool(_OUT_OF_OFFICE.match(_text(msg.get("Subject", ""))))


def _unsubscribe(msg: email.message.Message) -> Report | None:
    found = _UNSUBSCRIBE_SUBJECT.match(_text(msg.get("Subject", "")))
    if found is None:
        return None
    return Report(
        InboundKind.unsubscribe, address=_from_address(msg), unsubscribe_token=found.group(1)
    )


def _parts(msg: email.message.Message) -> Iterable[email.message.Message]:
    return msg.walk()


def _dsn(msg: email.message.Message) -> Report:
    """An RFC 3464 report: the first failed (else delayed) recipient decides."""
    best: tuple[int, Report] | None = None
    for part in _parts(msg):
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _status_blocks(part):
            report = _recipient_report(block)
            if report is None:
                continue
            rank = 0 if report.kind is InboundKind.hard_bounce else 1
            if best is None or rank < best[0]:
                best = (rank, report)
    if best is None:  # delivered / relayed / expanded: a success notice, nothing to do
        return Report(InboundKind.unknown, message_id=_original_id(msg))
    return _with(best[1], message_id=_original_id(msg))


def _status_blocks(part: email.message.Message) -> list[email.message.Message]:
    payload = part.get_payload()
    if isinstance(payload, list):  # compat32 parses the field groups as messages
        return [block for block in payload if isinstance(block, email.message.Message)]
    # Some reporters send it base64-encoded or otherwise unparsed: read the groups ourselves.
    body = part.get_payload(decode=True)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    return [email.message_from_string(group) for group in re.split(r"\r?\n\s*\r?\n", text)]


def _recipient_report(block: email.message.Message) -> Report | None:
    action = str(block.get("Action", "")).strip().lower()
    status = str(block.get("Status", "")).strip()
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    if not action and not status:
        return None  # the per-message group (Reporting-MTA, Arrival-Date)
    if action not in ("failed", "delayed", ""):
        return None  # delivered, relayed, expanded
    code = _STATUS.search(status) or _STATUS.search(diagnostic)
    status_code = code.group(0) if code else None
    if action == "delayed" or (code is not None and code.group(1) == "4"):
        kind = InboundKind.soft_bounce
    elif code is not None and code.group(1) == "2":
        return None
    else:
        kind = InboundKind.hard_bounce  # failed, 5.x.x or no code at all: the MTA gave up
    recipient = _typed_address(block.get("Final-Recipient")) or _typed_address(
        block.get("Original-Recipient")
    )
    return Report(
        kind,
        address=recipient,
        status_code=status_code,
        diagnostic=diagnostic[:DIAGNOSTIC_CHARS] or None,
    )


def _typed_address(value: object) -> str | None:
    """``rfc822; someone@example.org`` → the address (RFC 3464 2.3.2)."""
    if value is None:
        return None
    text = _text(value)
    _, _, address = text.rpartition(";")
    address = address.strip().strip("<>").strip()
    return address if "@" in address else None


def _arf(msg: email.message.Message) -> Report:
    """An RFC 5965 feedback report: abuse (and the like) → complaint, the rest unknown."""
    feedback_type: str | None = None
    rcpt: str | None = None
    for part in _parts(msg):
        if part.get_content_type() != "message/feedback-report":
            continue
        fields = _feedback_fields(part)
        feedback_type = fields.get("feedback-type", "").strip().lower()
        rcpt = _typed_address(fields.get("original-rcpt-to")) or None
    original = _original(msg)
    if rcpt is None and original is not None:
        rcpt = parseaddr(str(original.get("To", "")))[1] or None
    # "abuse" is what feedback loops send; "fraud" and "virus" are complaints too. "not-spam"
    # and "auth-failure" reports ask nothing of the list.
    complaint = feedback_type in (None, "", "abuse", "fraud", "virus", "other")
    kind = InboundKind.complaint if complaint else InboundKind.unknown
    return Report(
        kind,
        address=rcpt,
        message_id=_original_id(msg),
        diagnostic=f"feedback-type: {feedback_type}" if feedback_type else None,
    )


def _feedback_fields(part: email.message.Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list):
        fields: dict[str, str] = {}
        for block in payload:
            if isinstance(block, email.message.Message):
                fields.update({k.lower(): str(v) for k, v in block.items()})
        return fields
    body = part.get_payload(decode=True)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    return {k.lower(): str(v) for k, v in email.message_from_string(text).items()}


def _original(msg: email.message.Message) -> email.message.Message | None:
    """The returned copy (or headers) of the message we sent, if the report includes it."""
    for part in _parts(msg):
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                if isinstance(inner, email.message.Message):
                    return inner
        if content_type in ("text/rfc822-headers", "message/rfc822-headers"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return email.message_from_bytes(body.lstrip())
    return None


def _original_id(msg: email.message.Message) -> str | None:
    """The Message-ID of the message that came back: from the attached original, else the
    first ``Message-ID:`` line quoted in the body (non-standard bounces quote the headers)."""
    original = _original(msg)
    if original is not None and original.get("Message-ID"):
        return str(original.get("Message-ID")).strip()
    own = str(msg.get("Message-ID", "")).strip()
    for part in _parts(msg):
        if part.is_multipart():
            continue
        body = part.get_payload(decode=True)
        if not isinstance(body, bytes):
            continue
        for found in _ORIGINAL_MESSAGE_ID.finditer(body.decode("utf-8", "replace")):
            if found.group(1) != own:
                return found.group(1)
    return None


def _flufl(msg: email.message.Message) -> Report | None:
    """The non-standard bounces flufl.bounce's detectors know (qmail, Yahoo, old Exim, …)."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripping over a malformed message: nothing detected
        return None
    if permanent:
        kind, found = InboundKind.hard_bounce, permanent
    elif temporary:
        kind, found = InboundKind.soft_bounce, temporary
    else:
        return None
    address = sorted(found)[0].decode("utf-8", "replace")
    code = None
    for part in _parts(msg):
        body = part.get_payload(decode=True) if not part.is_multipart() else None
        if isinstance(body, bytes):
            match = _STATUS.search(body.decode("utf-8", "replace"))
            if match:
                code = match.group(0)
                break
    return Report(kind, address=address, status_code=code)
