"""Delivery failures: RFC 3464 DSNs, the non-standard bounces flufl.bounce knows, and the
plain-text notices of mailer daemons neither recognises.

Hard or soft is decided by the enhanced status code (:func:`kind_of`), whatever the
``Action`` says: Postfix reports a message it gave up on after days of 4.4.1 as "failed",
and that is still a temporary condition of the recipient's server; a 5.7.x policy refusal
(DMARC, spam filter) is about the sender, not the address.
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import replace

from flufl.bounce import all_failures

from newsletter.inbound.mime import STATUS, from_daemon, original_id, parts, typed_address
from newsletter.inbound.models import InboundKind
from newsletter.inbound.report import Report

DIAGNOSTIC_CHARS = 500  # the remote server's words, kept for the organizer, shortened


def kind_of(code: re.Match[str] | None, *, permanent: bool) -> InboundKind:
    """Hard or soft, from an enhanced status code (RFC 3463) and whether the MTA gave up.

    A failure is hard only when it says the *address* is bad. Permanent refusals that say
    nothing about the address count as soft, towards the soft-bounce limit: a full mailbox
    (X.2.2), a message too big for it (X.2.3), and every security or policy status (X.7.x:
    spam filters, DMARC, a blocklisted sending IP), which are about the sender and would,
    counted as hard, suppress a whole domain's good addresses after one misconfiguration.
    """
    if code is None:
        return InboundKind.hard_bounce if permanent else InboundKind.soft_bounce
    klass, subject, detail = code.group(1), code.group(2), code.group(3)
    if klass != "5" or subject == "7" or (subject, detail) in (("2", "2"), ("2", "3")):
        return InboundKind.soft_bounce
    return InboundKind.hard_bounce


def dsn(msg: email.message.Message) -> Report | None:
    """An RFC 3464 report: the first failed (else delayed) recipient decides."""
    best: tuple[int, Report] | None = None
    blocks = [
        block
        for part in parts(msg)
        if part.get_content_type() == "message/delivery-status"
        for block in _status_blocks(part)
    ]
    if not blocks:
        # Boundaries that do not match the header (seen from real Sendmail): the parser found
        # no delivery-status part, so read the field groups from the text itself.
        blocks = _loose_status_blocks(msg)
    if not blocks:
        return None  # not readable as a DSN: flufl.bounce's detectors may still know it
    for block in blocks:
        report = _recipient_report(block)
        if report is None:
            continue
        rank = 0 if report.kind is InboundKind.hard_bounce else 1
        if best is None or rank < best[0]:
            best = (rank, report)
    if best is None:  # delivered / relayed / expanded: a success notice, nothing to do
        return Report(InboundKind.unknown, message_id=original_id(msg))
    return replace(best[1], message_id=original_id(msg))


def _loose_status_blocks(msg: email.message.Message) -> list[email.message.Message]:
    text = "\n".join(
        body.decode("utf-8", "replace")
        for part in parts(msg)
        if not part.is_multipart()
        for body in [part.get_payload(decode=True)]
        if isinstance(body, bytes)
    )
    groups = re.split(r"\r?\n\s*\r?\n", text)
    return [
        email.message_from_string(group.strip())
        for group in groups
        if re.search(r"^(?:Final-Recipient|Original-Recipient):", group.strip(), re.I | re.M)
        and re.search(r"^(?:Action|Status):", group.strip(), re.I | re.M)
    ]


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
    code = STATUS.search(status) or STATUS.search(diagnostic)
    status_code = code.group(0) if code else None
    if code is not None and code.group(1) == "2":
        return None
    # "delayed" is never permanent; "failed" (or no Action) with no code: the MTA gave up.
    kind = kind_of(code, permanent=action != "delayed")
    if action == "delayed":
        kind = InboundKind.soft_bounce
    recipient = typed_address(block.get("Final-Recipient")) or typed_address(
        block.get("Original-Recipient")
    )
    return Report(
        kind,
        address=recipient,
        status_code=status_code,
        diagnostic=diagnostic[:DIAGNOSTIC_CHARS] or None,
    )


def flufl(msg: email.message.Message) -> Report | None:
    """The non-standard bounces flufl.bounce's detectors know (qmail, Yahoo, old Exim, …)."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripping over a malformed message: nothing detected
        return None
    if not permanent and not temporary:
        return None
    found = sorted(a.decode("utf-8", "replace") for a in permanent or temporary)
    texts = [
        body.decode("utf-8", "replace")
        for part in parts(msg)
        if not part.is_multipart()
        for body in [part.get_payload(decode=True)]
        if isinstance(body, bytes)
    ]
    whole = "\n".join(texts).lower()
    # flufl.bounce gives a set: the report names the one the notice mentions first.
    address = min(found, key=lambda a: (whole.find(a.lower()) % (len(whole) + 1), a))
    code = next((match for match in map(STATUS.search, texts) if match), None)
    kind = kind_of(code, permanent=bool(permanent))
    return Report(kind, address=address, status_code=code.group(0) if code else None)


# Where a plain-text bounce stops describing the failure and quotes the original.
_QUOTE_START = re.compile(
    r"^\s*-{2,}.*(?:original message|copy of the message|below this line|returned message)",
    re.I | re.M,
)
_ANGLE_ADDRESS = re.compile(r"<([^<>@\s]+@[^<>@\s]+\.[^<>@\s]+)>")


def daemon_text(msg: email.message.Message) -> Report | None:
    """A plain-text bounce no detector knew (Yahoo's "Failure Notice", …): from a mailer
    daemon, its notice (before the quoted original) names an address in angle brackets and
    an enhanced status code; the code's class decides permanent or temporary."""
    if not from_daemon(msg):
        return None
    body = next(
        (
            payload
            for part in parts(msg)
            if not part.is_multipart() and part.get_content_maintype() == "text"
            for payload in [part.get_payload(decode=True)]
            if isinstance(payload, bytes)
        ),
        None,
    )
    if body is None:
        return None
    text = body.decode("utf-8", "replace")
    quote = _QUOTE_START.search(text)
    notice = text[: quote.start()] if quote else text
    address, code = _ANGLE_ADDRESS.search(notice), STATUS.search(notice)
    if address is None or code is None:
        return None
    if code.group(1) == "2":
        return None
    kind = kind_of(code, permanent=code.group(1) == "5")
    return Report(kind, address=address.group(1), status_code=code.group(0))
