"""Reading returned messages: header text, senders, parts and the original that came back.

The helpers every classifier in :mod:`newsletter.inbound` shares (DSNs, feedback reports,
auto-replies), so that "which part is the original" and "is this a mail system" have one
answer each.
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import email.message
import re
from collections.abc import Iterable
from email.header import Header, decode_header, make_header
from email.utils import parseaddr

# An enhanced status code (RFC 3463): class.subject.detail.
STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
ORIGINAL_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.I | re.M)
# Senders of bounces, never of a person's out-of-office reply.
DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "maildaemon", "mail delivery")


def text(value: object) -> str:
    """A header value decoded from RFC 2047 words (or raw UTF-8, RFC 6532), never raising."""
    if isinstance(value, Header):  # compat32's wrapper for 8-bit header bytes
        value = "".join(
            part.decode(charset if charset not in (None, "unknown-8bit") else "utf-8", "replace")
            if isinstance(part, bytes)
            else part
            for part, charset in decode_header(value)
        )
    raw = str(value)
    if not raw.isascii():
        # compat32 may keep 8-bit header bytes as surrogates: read them as the UTF-8 they are.
        with contextlib.suppress(UnicodeEncodeError):  # else real characters already
            raw = raw.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(raw)))
    except (UnicodeError, LookupError, ValueError, email.errors.HeaderParseError):
        return raw


def from_address(msg: email.message.Message) -> str | None:
    address = parseaddr(str(msg.get("From", "")))[1]
    return address or None


def from_daemon(msg: email.message.Message) -> bool:
    """Whether the message comes from a mail system rather than a person: a daemon's name,
    no sender address at all (``From: <>``), or Sendmail's ``auto-generated (failure)``."""
    sender = text(msg.get("From", "")).lower()
    if any(daemon in sender for daemon in DAEMONS) or not from_address(msg):
        return True
    return "(failure)" in str(msg.get("Auto-Submitted", "")).lower()


def parts(msg: email.message.Message) -> Iterable[email.message.Message]:
    return msg.walk()


def typed_address(value: object) -> str | None:
    """``rfc822; someone@example.org`` → the address (RFC 3464 2.3.2)."""
    if value is None:
        return None
    decoded = text(value)
    _, _, address = decoded.rpartition(";")
    address = address.strip().strip("<>").strip()
    return address if "@" in address else None


def original(msg: email.message.Message) -> email.message.Message | None:
    """The returned copy (or headers) of the message we sent, if the report includes it."""
    for part in parts(msg):
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


def original_id(msg: email.message.Message) -> str | None:
    """The Message-ID of the message that came back: from the attached original, else the
    first ``Message-ID:`` line quoted in the body (non-standard bounces quote the headers),
    else what the message replies to (``In-Reply-To``, then the last ``References``: an
    auto-reply or an Exchange NDR names our message there)."""
    attached = original(msg)
    if attached is not None and attached.get("Message-ID"):
        return str(attached.get("Message-ID")).strip()
    own = str(msg.get("Message-ID", "")).strip()
    for part in parts(msg):
        if part.is_multipart():
            continue
        body = part.get_payload(decode=True)
        if not isinstance(body, bytes):
            continue
        for found in ORIGINAL_MESSAGE_ID.finditer(body.decode("utf-8", "replace")):
            if found.group(1) != own:
                return found.group(1)
    for header in ("In-Reply-To", "References"):
        ids: list[str] = re.findall(r"<[^<>\s]+>", str(msg.get(header, "")))
        if ids:
            return ids[-1]
    return None
