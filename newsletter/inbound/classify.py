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
4. **Non-standard bounces** through flufl.bounce's detectors (qmail, old Exim, …), then the
   plain-text notice of a mailer daemon (:mod:`newsletter.inbound.bounces`); Microsoft's
   JMRP complaints (multipart/mixed, not ARF) are recognised right after the report types
   (:mod:`newsletter.inbound.feedback`).
5. Anything else is unknown: stored for an organizer to inspect, changing nothing.
"""

from __future__ import annotations

import email
import email.message
import re
from collections.abc import Sequence
from dataclasses import replace
from email.utils import getaddresses

from newsletter.inbound.bounces import daemon_text, dsn, flufl
from newsletter.inbound.feedback import arf, jmrp
from newsletter.inbound.mime import from_address, from_daemon, original_id, text
from newsletter.inbound.models import InboundKind
from newsletter.inbound.report import Report
from newsletter.mail.verp import verp_delivery_id

_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(?:re:\s*)?unsubscribe\s+([A-Za-z0-9_.\-]+)\s*$", re.I)
# Subjects of out-of-office replies that carry none of the RFC 3834 headers (Exchange without
# them, web mailers, Chinese providers). Anchored at the start: "Out of Office: <subject>".
_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|autoreply|auto:|out of (?:the )?office"
    r"|away from (?:the )?office|on vacation|vacation reply|abwesenheitsnotiz|réponse automatique"
    r"|自动回复|自動回覆|自動回复|自动答复|休假|不在办公室|外出)",
    re.I,
)
# The same said later in the subject: "Re: <subject> (Automatic Response)", "… 自动回复".
_OUT_OF_OFFICE_ANYWHERE = re.compile(
    r"\((?:automatic|auto) (?:response|reply)\)|\bis out of the office\b|自动回复|自動回覆", re.I
)


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
            kind_report = dsn(msg)
        elif report_type.lower() == "feedback-report":
            kind_report = arf(msg)
    if kind_report is None:
        kind_report = jmrp(msg)
    if kind_report is None and _is_auto_reply(msg) and not from_daemon(msg):
        kind_report = Report(
            InboundKind.auto_reply, address=from_address(msg), message_id=original_id(msg)
        )
    if kind_report is None:
        kind_report = (
            _unsubscribe(msg) or flufl(msg) or daemon_text(msg) or Report(InboundKind.unknown)
        )
    if kind_report.message_id is None and kind_report.kind is not InboundKind.unsubscribe:
        kind_report = _with(kind_report, message_id=original_id(msg))
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
    subject = text(msg.get("Subject", ""))
    return bool(_OUT_OF_OFFICE.match(subject) or _OUT_OF_OFFICE_ANYWHERE.search(subject))


def _unsubscribe(msg: email.message.Message) -> Report | None:
    found = _UNSUBSCRIBE_SUBJECT.match(text(msg.get("Subject", "")))
    if found is None:
        return None
    return Report(
        InboundKind.unsubscribe, address=from_address(msg), unsubscribe_token=found.group(1)
    )
