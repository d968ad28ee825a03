"""Sending one batch of a campaign: claim → personalise → send → mark, over one connection.

This is the only module that joins rendering, links and the mail transport; tasks call it
with ids. The compiled invitation (Jinja + premailer, the slow part) is built once per
campaign per process and cached, so each message costs only a join and a MIME assembly.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session

from newsletter.campaigns import repo
from newsletter.campaigns.models import CampaignStatus, DeliveryStatus
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import DeliveryError
from newsletter.links import RecipientLinks, recipient_links
from newsletter.mail.message import MessageFactory, OutgoingMessage
from newsletter.mail.transports import Transport, transport_from_url
from newsletter.rendering import InvitationTemplate, Recipient
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from subscribers.models import SubscriberStatus

log = logging.getLogger(__name__)

# A transient failure (SMTP 4xx, a dropped connection, a full disk) is retried this many times
# in all before the delivery is marked failed, so a dead relay cannot loop a campaign forever.
MAX_ATTEMPTS = 5
# How many sent rows are marked per UPDATE: small enough that a crash re-sends few messages,
# large enough that marking is not a round trip per message.
MARK_EVERY = 100

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class CompiledCampaign:
    """Everything per-campaign that each message reuses."""

    campaign_id: int
    session_id: int
    session_number: int
    template: InvitationTemplate
    factory: MessageFactory


def compile_invitation(
    session: Session,
    salon: SalonSession,
    *,
    subject: str | None,
    campaign_id: int,
    settings: Settings,
) -> CompiledCampaign:
    """Compile the invitation of ``salon`` (Jinja + premailer, once) and its header factory."""
    record = sessions_repo.record_of(salon)
    archive = sessions_repo.archive_before(session, salon.number)
    template = InvitationTemplate.build(
        record,
        archive,
        subject=subject,
        organizer=record.organizer or settings.organizer,
        timezone=salon.timezone,
    )
    factory = MessageFactory(
        from_address=settings.from_address,
        subject=template.subject,
        list_name=record.series,
        mail_domain=settings.sender_domain,
        bounce_address=settings.bounce_address,
    )
    return CompiledCampaign(campaign_id, salon.id, salon.number, template, factory)


@lru_cache(maxsize=16)
def _compiled(url: str, campaign_id: int, revision: int, settings: Settings) -> CompiledCampaign:
    """Per process, one compiled template per (campaign, session revision)."""
    with session_scope(url) as session:
        campaign = repo.get_campaign(session, campaign_id)
        assert campaign is not None, "the caller checked that the campaign exists"
        salon = sessions_repo.get_by_id(session, campaign.session_id)
        assert salon is not None, "campaigns reference sessions by foreign key"
        return compile_invitation(
            session, salon, subject=campaign.subject, campaign_id=campaign_id, settings=settings
        )


def compile_campaign(session: Session, campaign_id: int, settings: Settings) -> CompiledCampaign:
    """The cached compiled campaign; a re-imported session (new revision) compiles anew."""
    campaign = repo.get_campaign(session, campaign_id)
    assert campaign is not None, "the caller checked that the campaign exists"
    salon = sessions_repo.get_by_id(session, campaign.session_id)
    assert salon is not None, "campaigns reference sessions by foreign key"
    return _compiled(settings.database_url, campaign_id, salon.revision, settings)


@dataclass
class BatchResult:
    """What one batch did; ``more`` tells the caller to schedule another batch."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    more: bool = False
    stopped_because: str | None = None


def send_batch(
    settings: Settings,
    campaign_id: int,
    *,
    transport: Transport | None = None,
    worker: str = WORKER_ID,
    on_sent: Callable[[int], None] | None = None,
) -> BatchResult:
    """Claim up to ``settings.batch_size`` deliveries of a sending campaign and send them.

    Protocol: claims queued rows (→ inflight, owner = ``worker``) and commits, so a crash
    leaves rows a sweeper can re-queue; sends each over one transport connection; marks sent
    rows every ``MARK_EVERY`` messages; permanent refusals → failed with the relay's answer;
    transient ones → queued again until ``MAX_ATTEMPTS``. Subscribers who stopped being
    active since the campaign was created are skipped, never mailed.
    """
    url = settings.database_url
    result = BatchResult()
    with session_scope(url) as session:
        campaign = repo.get_campaign(session, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.sending:
            result.stopped_because = campaign.status if campaign else "missing"
            return result
        claimed = repo.claim_batch(session, campaign_id, worker=worker, limit=settings.batch_size)
        compiled = compile_campaign(session, campaign_id, settings)
    result.claimed = len(claimed)
    if not claimed:
        return result

    sent: list[int] = []
    requeue: list[int] = []
    failures: list[tuple[int, str]] = []
    skipped: list[int] = []

    def flush() -> None:
        _exhaust_attempts(settings, requeue, failures)
        with session_scope(url) as session:
            repo.mark_sent(session, sent, at=utcnow())
            repo.mark_outcome(session, skipped, DeliveryStatus.skipped, "not subscribed any more")
            repo.mark_outcome(session, requeue, DeliveryStatus.queued, "retrying")
            for delivery_id, reason in failures:
                repo.mark_outcome(session, [delivery_id], DeliveryStatus.failed, reason)
        result.sent += len(sent)
        result.skipped += len(skipped)
        result.retried += len(requeue)
        result.failed += len(failures)
        if on_sent and sent:
            on_sent(len(sent))
        for pending in (sent, skipped, requeue, failures):
            pending.clear()

    keys = settings.secret_keys
    active_transport = transport or transport_from_url(settings.mail_url)
    try:
        with active_transport:
            for index, item in enumerate(claimed):
                if item.subscriber_status != SubscriberStatus.active:
                    skipped.append(item.delivery_id)
                    continue
                message = build_message(
                    compiled,
                    item.delivery_id,
                    item.subscriber_id,
                    item.name,
                    item.email,
                    settings,
                    keys,
                )
                try:
                    active_transport.send(message)
                except DeliveryError as exc:
                    if exc.permanent:
                        failures.append((item.delivery_id, str(exc)))
                    else:
                        requeue.append(item.delivery_id)
                        log.warning("delivery %s: %s (will retry)", item.delivery_id, exc)
                    continue
                sent.append(item.delivery_id)
                if (index + 1) % MARK_EVERY == 0:
                    flush()
    except DeliveryError as exc:
        # The transport could not even connect: give every unsent row back to the queue.
        done = set(sent) | set(requeue) | set(skipped) | {d for d, _ in failures}
        requeue.extend(c.delivery_id for c in claimed if c.delivery_id not in done)
        result.stopped_because = str(exc)
        log.warning("campaign %s: %s", campaign_id, exc)
    finally:
        flush()
    result.more = result.claimed == settings.batch_size or result.retried > 0
    return result


def _exhaust_attempts(
    settings: Settings, requeue: list[int], failures: list[tuple[int, str]]
) -> None:
    """Turn retries that used their last attempt into failures."""
    if not requeue:
        return
    with session_scope(settings.database_url) as session:
        spent = repo.attempts_at_least(session, requeue, MAX_ATTEMPTS)
    for delivery_id in spent:
        requeue.remove(delivery_id)
        failures.append((delivery_id, f"gave up after {MAX_ATTEMPTS} attempts"))


def recipient_for(
    compiled: CompiledCampaign, subscriber_id: int, name: str, settings: Settings, keys: list[str]
) -> tuple[RecipientLinks, Recipient]:
    """One recipient's signed links, and the values the invitation template fills in."""
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
) -> OutgoingMessage:
    """The finished message for one recipient: links, personalised body, MIME bytes."""
    links, recipient = recipient_for(compiled, subscriber_id, name, settings, keys)
    # The UTF-8 variant: the big static chunks were encoded once per campaign.
    rendered = compiled.template.personalise_utf8(recipient)
    return compiled.factory.build(
        delivery_id=delivery_id,
        recipient_name=name,
        recipient_address=email,
        html=rendered.html,
        text=rendered.text,
        unsubscribe_url=links.unsubscribe,
        unsubscribe_mailto=links.unsubscribe_mailto,
    )
