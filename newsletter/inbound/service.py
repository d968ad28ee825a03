"""Match a returned message to its delivery and apply it, once per fingerprint.

The public API of mail coming back; every way in ends here: ``newsletter inbound`` (files,
stdin), its SMTP/LMTP receiver, the IMAP poll and the providers' webhook.

* :func:`process_message`: raw bytes → classified (:mod:`newsletter.inbound.classify`) →
  :func:`apply_report`, fingerprinted by the message itself.
* :func:`apply_report`: a :class:`~newsletter.inbound.report.Report` (from a message or a
  webhook event) with the caller's fingerprint (a webhook passes its event id's hash).

Rules kept here:

* **Matching**: the VERP delivery id first, then the delivery id inside the original
  Message-ID (:func:`newsletter.mail.message.delivery_id_from_message_id`, this
  installation's ids only), then the address (normalised as subscribers are stored). A
  delivery id whose row was pruned still says which delivery it was; the subscriber then
  comes from the address.
* **Idempotent**: one event per fingerprint; the same message again is a duplicate and
  changes nothing. A campaign counts a delivery's bounce (complaint) once, however many
  reports about it arrive.
* **Effects**: hard bounce → the subscriber is ``bounced`` (the same
  :func:`subscribers.service.suppress` the SMTP-time 5.1.x refusal uses); soft bounce →
  stored, and ``settings.soft_bounce_limit`` of them within :data:`SOFT_BOUNCE_WINDOW` →
  bounced; complaint and mailto unsubscribe → :func:`subscribers.service.unsubscribe`;
  auto-reply and unknown → stored only. An erased subscriber is never touched.
* The raw message is stored bounded (:data:`MAX_STORED_RAW`, ``raw_truncated``).

Functions take a Session and never commit; the caller's ``session_scope`` does, so the event
is durable before a receiver answers 250.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.db import utcnow
from newsletter.errors import NotFoundError
from newsletter.inbound import repo
from newsletter.inbound.classify import classify
from newsletter.inbound.models import InboundEvent, InboundKind
from newsletter.inbound.report import Report
from newsletter.installation import installation_token
from newsletter.mail.message import delivery_id_from_message_id
from newsletter.tokens import Purpose, TokenError, verify
from subscribers import repo as subscribers_repo
from subscribers.models import SubscriberStatus
from subscribers.service import suppress, unsubscribe
from subscribers.validation import normalise_email

log = logging.getLogger(__name__)

MAX_STORED_RAW = 64 * 1024  # bytes of the raw message kept for inspection
MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # larger messages are refused (CLI, receiver)
SOFT_BOUNCE_WINDOW = timedelta(days=30)
SOURCES = ("file", "smtp", "lmtp", "imap", "webhook")


class MessageTooLarge(ValueError):
    """A message over :data:`MAX_MESSAGE_BYTES` (or the receiver's limit)."""


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    """What processing one returned message did.

    ``new`` is False for a duplicate (the fingerprint was seen: nothing changed this time,
    and the other fields describe the stored event). ``changes`` says in words what changed
    (no address: it goes to terminals and logs), empty when nothing did.
    """

    kind: InboundKind
    matched_by: str | None
    new: bool
    event_id: int
    delivery_id: int | None = None
    campaign_id: int | None = None
    subscriber_id: int | None = None
    changes: tuple[str, ...] = ()


# Header fields a relay, a pipe or a mailbox adds on the way in: two copies of one message
# differ in these and nothing else (the one a pipe got and the one IMAP shows).
_TRACE_FIELDS = frozenset(
    (
        b"received",
        b"return-path",
        b"delivered-to",
        b"x-original-to",
        b"envelope-to",
        b"x-envelope-to",
        b"delivery-date",
        b"x-delivered-to",
        b"status",
        b"x-status",
        b"x-uid",
        b"x-keywords",
    )
)


def fingerprint_of(raw: bytes) -> str:
    """The idempotence key of a raw message: SHA-256 of it without its trace header fields.

    Trace fields (Received, Delivered-To, Return-Path, …) differ between two copies of one
    message; every other header (Message-ID, Subject, From) and the body are the message.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    if not sep:
        return hashlib.sha256(raw).hexdigest()
    digest = hashlib.sha256(b"inbound\0")
    keep = True
    for line in head.splitlines():
        if line[:1] not in (b" ", b"\t"):  # a field's first line; else a continuation
            keep = line.partition(b":")[0].strip().lower() not in _TRACE_FIELDS
        if keep:
            digest.update(line.rstrip() + b"\n")
    digest.update(b"\0" + body.replace(b"\r\n", b"\n"))
    return digest.hexdigest()


def process_message(
    db: Session,
    settings: Settings,
    raw: bytes,
    *,
    source: str,
    envelope_recipients: Sequence[str] = (),
) -> InboundOutcome:
    """Classify one raw returned message, match it, apply it (idempotent).

    ``source`` is one of :data:`SOURCES`; ``envelope_recipients`` are the SMTP RCPT TO
    addresses when the caller knows them (the receiver, a pipe's ``$RECIPIENT``): they carry
    the VERP delivery id even when the bounce's headers do not. Raises
    :class:`MessageTooLarge` over :data:`MAX_MESSAGE_BYTES`.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"the message has {len(raw):,} bytes, more than the {MAX_MESSAGE_BYTES:,} accepted"
        )
    fingerprint = fingerprint_of(raw)
    existing = repo.event_by_fingerprint(db, fingerprint)
    if existing is not None:  # skip classifying: a retried pipe costs one indexed read
        return _duplicate(existing)
    report = classify(
        raw, bounce_address=settings.bounce_address, envelope_recipients=envelope_recipients
    )
    return apply_report(db, settings, report, source=source, fingerprint=fingerprint, raw=raw)


def apply_report(
    db: Session,
    settings: Settings,
    report: Report,
    *,
    source: str,
    fingerprint: str,
    raw: bytes | None,
) -> InboundOutcome:
    """Match ``report`` to a delivery and subscriber, store it and apply its effect, once.

    ``fingerprint`` (at most 64 characters, e.g. a SHA-256 hex digest of the raw message or
    of a webhook's event id) makes it idempotent: a second call with it returns the stored
    event with ``new=False`` and changes nothing.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r} (one of: {', '.join(SOURCES)})")
    if len(fingerprint) > 64:
        raise ValueError("a fingerprint is at most 64 characters (a SHA-256 hex digest)")
    existing = repo.event_by_fingerprint(db, fingerprint)
    if existing is not None:
        return _duplicate(existing)
    match = _match(db, settings, report)
    if report.kind is InboundKind.unsubscribe and match.matched_by != "token":
        report = replace(report, kind=InboundKind.unknown)  # no valid token: changes nothing
    event = InboundEvent(
        fingerprint=fingerprint,
        kind=report.kind.value,
        source=source,
        received_at=utcnow(),
        delivery_id=match.delivery_id,
        campaign_id=match.campaign_id,
        subscriber_id=match.subscriber_id,
        matched_by=match.matched_by,
        address=(report.address or "")[:320] or None,
        status_code=(report.status_code or "")[:16] or None,
        diagnostic=report.diagnostic,
        raw=raw[:MAX_STORED_RAW] if raw is not None else None,
        raw_truncated=raw is not None and len(raw) > MAX_STORED_RAW,
    )
    try:
        with db.begin_nested():  # a concurrent copy of the same message wins the unique index
            db.add(event)
    except IntegrityError:
        stored = repo.event_by_fingerprint(db, fingerprint)
        assert stored is not None, "the unique fingerprint index refused the insert"
        return _duplicate(stored)
    changes = _apply(db, settings, report, event)
    log.info(
        "inbound %s event %s (%s, matched by %s): %s",
        event.kind,
        event.id,
        source,
        event.matched_by or "nothing",
        "; ".join(changes) or "nothing changed",
    )
    return InboundOutcome(
        kind=report.kind,
        matched_by=event.matched_by,
        new=True,
        event_id=event.id,
        delivery_id=event.delivery_id,
        campaign_id=event.campaign_id,
        subscriber_id=event.subscriber_id,
        changes=tuple(changes),
    )


def _duplicate(event: InboundEvent) -> InboundOutcome:
    return InboundOutcome(
        kind=InboundKind(event.kind),
        matched_by=event.matched_by,
        new=False,
        event_id=event.id,
        delivery_id=event.delivery_id,
        campaign_id=event.campaign_id,
        subscriber_id=event.subscriber_id,
    )


@dataclass(frozen=True, slots=True)
class _Match:
    delivery_id: int | None = None
    campaign_id: int | None = None
    subscriber_id: int | None = None
    matched_by: str | None = None


def _match(db: Session, settings: Settings, report: Report) -> _Match:
    if report.kind is InboundKind.unsubscribe:
        # The token names subscriber and campaign; an address or VERP id proves nothing.
        return _by_token(db, settings, report.unsubscribe_token)
    by_address = _subscriber_by_address(db, report.address)
    candidates: list[tuple[str, int]] = []
    if report.delivery_id is not None:
        candidates.append(("verp", report.delivery_id))
    if report.message_id:
        from_id = delivery_id_from_message_id(
            report.message_id, settings.sender_domain, installation_token(db)
        )
        if from_id is not None:
            candidates.append(("message_id", from_id))
    for how, delivery_id in candidates:
        row = repo.delivery_row(db, delivery_id)
        if row is not None:
            return _Match(delivery_id, row[0], row[1], how)
    if candidates:  # pruned: the id still says which delivery; the address says who
        how, delivery_id = candidates[0]
        return _Match(delivery_id, None, by_address, how)
    if by_address is not None:
        latest = repo.latest_delivery_of(db, by_address)
        if latest is not None:
            return _Match(latest[0], latest[1], by_address, "address")
        return _Match(None, None, by_address, "address")
    return _Match()


def _subscriber_by_address(db: Session, address: str | None) -> int | None:
    if not address:
        return None
    try:
        normal = normalise_email(address)
    except ValueError:
        return None
    subscriber = subscribers_repo.get_by_email(db, normal)
    return subscriber.id if subscriber is not None else None


def _by_token(db: Session, settings: Settings, token: str | None) -> _Match:
    if not token:
        return _Match()
    try:
        payload = verify(Purpose.UNSUBSCRIBE, token, settings.secret_keys)
    except TokenError:
        return _Match()
    subscriber_id, campaign_id = payload.get("u"), payload.get("c")
    if subscriber_id is None or subscribers_repo.get_by_id(db, subscriber_id) is None:
        return _Match()
    if campaign_id is not None and not repo.campaign_exists(db, campaign_id):
        campaign_id = None
    return _Match(None, campaign_id, subscriber_id, "token")


def _apply(db: Session, settings: Settings, report: Report, event: InboundEvent) -> list[str]:
    """The effect of a new event; what changed, in words."""
    changes: list[str] = []
    kind = report.kind
    subscriber_id = event.subscriber_id
    person = subscribers_repo.get_by_id(db, subscriber_id) if subscriber_id else None
    if person is not None and person.status == SubscriberStatus.erased:
        return changes  # an erased person's row keeps no data and takes no new status
    if kind is InboundKind.hard_bounce:
        if subscriber_id is not None:
            why = "bounced: " + (report.status_code or "permanent failure")
            if suppress(
                db, subscriber_id=subscriber_id, status=SubscriberStatus.bounced, reason=why
            ):
                changes.append(f"subscriber #{subscriber_id} bounced")
        changes += _count(db, event, kind, bounces=1)
    elif kind is InboundKind.soft_bounce and subscriber_id is not None:
        since = event.received_at - SOFT_BOUNCE_WINDOW
        seen = repo.count_kind_since(db, subscriber_id, InboundKind.soft_bounce, since)
        limit = settings.soft_bounce_limit
        if seen >= limit and suppress(
            db,
            subscriber_id=subscriber_id,
            status=SubscriberStatus.bounced,
            reason=f"bounced: {seen} temporary failures within 30 days",
        ):
            changes.append(f"subscriber #{subscriber_id} bounced ({seen} soft bounces)")
        elif seen < limit:
            changes.append(f"soft bounce {seen} of {limit}")
    elif kind is InboundKind.complaint:
        if subscriber_id is not None:
            try:
                if unsubscribe(db, subscriber_id, "complaint: abuse report"):
                    changes.append(f"subscriber #{subscriber_id} unsubscribed")
            except NotFoundError:
                pass
        changes += _count(db, event, kind, complaints=1)
    elif (
        kind is InboundKind.unsubscribe
        and subscriber_id is not None
        and unsubscribe(db, subscriber_id, "unsubscribed by mail (List-Unsubscribe)")
    ):
        changes.append(f"subscriber #{subscriber_id} unsubscribed")
    return changes


def _count(
    db: Session, event: InboundEvent, kind: InboundKind, *, bounces: int = 0, complaints: int = 0
) -> list[str]:
    """Count the event on its campaign, once per delivery."""
    if event.campaign_id is None:
        return []
    if event.delivery_id is not None and repo.counted_before(db, event.delivery_id, kind, event.id):
        return []
    repo.add_to_campaign(db, event.campaign_id, bounces=bounces, complaints=complaints)
    what = "bounce" if bounces else "complaint"
    return [f"campaign {event.campaign_id} {what} counted"]
