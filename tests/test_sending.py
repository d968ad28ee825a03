"""The batch pipeline in one process: back-off, give-up, suppression, budget, scheduling.

Refusals are staged per address on a real aiosmtpd relay (tests/smtp.py); the tests that
need no refusal use the memory transport. The same paths run against a real relay and real
workers in test_drills.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from newsletter.campaigns import service
from newsletter.campaigns.models import CampaignStatus, Delivery, DeliveryStatus
from newsletter.campaigns.sending import send_batch
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.mail.transports import memory_mailbox
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus
from tasks.campaigns import start_campaign, sweep
from tasks.dispatch import enqueue
from tests.conftest import EXAMPLES, Configure
from tests.smtp import SmtpServer
from tests.worker import wait_for_worker


def prepare(settings: Settings, people: int) -> int:
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
        db.add_all(
            Subscriber(email=f"p{i}@example.org", name=f"P{i}", created_at=utcnow())
            for i in range(people)
        )
    with session_scope(settings.database_url) as db:
        return service.create_campaign(db, 61, past=True).id


@pytest.fixture
def mailbox_settings(configure: Configure, request: pytest.FixtureRequest) -> Settings:
    name = request.node.name
    memory_mailbox(name).clear()
    return configure(mail_url=f"memory://{name}", retry_backoff="0.05,0.1", batch_size="10")


@pytest.fixture
def relay(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    """A real relay; a test stages refusals in ``relay.handler.refuse_rcpt``."""
    return start_smtp()


@pytest.fixture
def relay_settings(configure: Configure, relay: SmtpServer) -> Settings:
    return configure(
        mail_url=f"smtp://127.0.0.1:{relay.port}", retry_backoff="0.05,0.1", batch_size="10"
    )


def mailed(relay: SmtpServer) -> list[str]:
    """The recipients the relay accepted a message for, sorted."""
    return sorted(address for r in relay.handler.received for address in r.rcpt_tos)


@pytest.mark.smtp
def test_temporary_refusal_is_retried_after_the_back_off(
    relay_settings: Settings, relay: SmtpServer
) -> None:
    campaign_id = prepare(relay_settings, 5)
    relay.handler.refuse_rcpt["p2@example.org"] = "451 4.3.0 busy"
    with session_scope(relay_settings.database_url) as db:
        service.start_campaign(db, campaign_id)
    result = send_batch(relay_settings, campaign_id)  # one batch: p2 waits out its back-off
    assert (result.claimed, result.sent, result.retried) == (5, 4, 1)
    with session_scope(relay_settings.database_url) as db:
        row = db.scalars(select(Delivery).where(Delivery.subscriber_id == 3)).one()
        assert row.status == DeliveryStatus.queued and row.attempts == 1
        assert row.next_attempt_at is not None  # due after the first back-off step
        assert "451" in (row.last_error or "")
    del relay.handler.refuse_rcpt["p2@example.org"]
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    assert mailed(relay) == [f"p{i}@example.org" for i in range(5)]
    with session_scope(relay_settings.database_url) as db:
        assert service.progress(db, campaign_id).status == CampaignStatus.finished


@pytest.mark.smtp
def test_a_delivery_fails_after_the_last_back_off_step(
    relay_settings: Settings, relay: SmtpServer
) -> None:
    campaign_id = prepare(relay_settings, 3)
    relay.handler.refuse_rcpt["p1@example.org"] = "452 4.2.2 mailbox full"
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(relay_settings.database_url) as db:
        progress = service.progress(db, campaign_id)
        row = db.scalars(select(Delivery).where(Delivery.subscriber_id == 2)).one()
    assert (progress.status, progress.sent, progress.failed) == ("finished", 2, 1)
    assert row.attempts == 3  # the first try and one per back-off step (two here)
    assert relay.handler.rcpt_refusals["p1@example.org"] == 3
    assert row.last_error and row.last_error.startswith("gave up after 3 attempts: ")
    assert "452 4.2.2 mailbox full" in row.last_error


@pytest.mark.smtp
def test_hard_bounce_fails_and_suppresses_the_address(
    relay_settings: Settings, relay: SmtpServer
) -> None:
    campaign_id = prepare(relay_settings, 3)
    relay.handler.refuse_rcpt["p0@example.org"] = "550 5.1.1 no such user"
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(relay_settings.database_url) as db:
        person = db.scalars(select(Subscriber).where(Subscriber.email == "p0@example.org"))
        assert person.one().status == SubscriberStatus.bounced
        assert service.progress(db, campaign_id).failed == 1
        # The next campaign does not even queue the bounced address.
        assert service.create_campaign(db, 61, past=True).recipient_count == 2


@pytest.mark.smtp
def test_error_budget_pauses_with_the_reason(configure: Configure, relay: SmtpServer) -> None:
    settings = configure(
        mail_url=f"smtp://127.0.0.1:{relay.port}", error_budget="0.2", error_budget_min="10"
    )
    campaign_id = prepare(settings, 30)
    for i in range(0, 30, 2):
        relay.handler.refuse_rcpt[f"p{i}@example.org"] = "554 5.7.1 policy"
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert progress.status == CampaignStatus.paused
    assert progress.status_reason and progress.status_reason.startswith("error budget: 15 of 30")


@pytest.mark.smtp
def test_streak_of_temporary_refusals_pauses(configure: Configure, relay: SmtpServer) -> None:
    settings = configure(
        mail_url=f"smtp://127.0.0.1:{relay.port}", error_streak="8", retry_backoff="60"
    )
    campaign_id = prepare(settings, 12)
    for i in range(12):
        relay.handler.refuse_rcpt[f"p{i}@example.org"] = "451 4.7.1 overloaded"
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert progress.status == CampaignStatus.paused
    assert "refused 12 messages in a row" in (progress.status_reason or "")
    assert progress.failed == 0 and progress.queued == 12  # nothing was burned


def test_sweeper_starts_a_scheduled_campaign_when_due(mailbox_settings: Settings) -> None:
    campaign_id = prepare(mailbox_settings, 2)
    with session_scope(mailbox_settings.database_url) as db:
        service.schedule_campaign(db, campaign_id, utcnow() + timedelta(hours=1))
    sweep.apply()
    box = memory_mailbox(mailbox_settings.mail_url.removeprefix("memory://"))
    assert box.messages == []
    with session_scope(mailbox_settings.database_url) as db:
        service.require_campaign(db, campaign_id).scheduled_at = utcnow()
    enqueue(sweep)
    wait_for_worker()
    assert len(box.messages) == 2


def test_retry_backoff_setting_is_validated(configure: Configure) -> None:
    with pytest.raises(Exception, match="seconds separated by commas"):
        configure(retry_backoff="soon")


def test_sending_keeps_to_the_rate_limit(configure: Configure) -> None:
    memory_mailbox("paced").clear()
    settings = configure(mail_url="memory://paced", rate_limit="40")
    campaign_id = prepare(settings, 30)
    started = time.monotonic()
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    elapsed = time.monotonic() - started
    assert len(memory_mailbox("paced").messages) == 30
    # 30 messages at 40/s with a burst of 4 cannot take less than (30 - 4) / 40 s.
    assert elapsed >= (30 - 4) / 40
