"""The batch pipeline under faults, in one process, against a real aiosmtpd relay where the
fault is the relay's: what counts as an attempt, what waits for the relay, what fails alone.

The same rules run in real worker processes in test_drills.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from sqlalchemy import select

from newsletter.campaigns import service
from newsletter.campaigns.models import CampaignStatus, Delivery, DeliveryStatus
from newsletter.campaigns.sending import REPORT_EVERY, send_batch
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.mail.transports import memory_mailbox
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import EXAMPLES, Configure
from tests.smtp import SmtpServer
from tests.worker import wait_for_worker

UTF8_ADDRESS = "欧阳.娜娜@example.net"


def prepare(settings: Settings, addresses: list[str]) -> int:
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
        db.add_all(
            Subscriber(email=address, name=f"P{i}", created_at=utcnow())
            for i, address in enumerate(addresses)
        )
    with session_scope(settings.database_url) as db:
        return service.create_campaign(db, 61, past=True).id


def rows(settings: Settings) -> list[Delivery]:
    with session_scope(settings.database_url) as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


def people(count: int) -> list[str]:
    return [f"p{i}@example.org" for i in range(count)]


@pytest.mark.smtp
def test_an_address_needing_smtputf8_fails_alone_on_a_relay_without_it(
    configure: Configure, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp(enable_SMTPUTF8=False)
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}")
    campaign_id = prepare(settings, [*people(2), UTF8_ADDRESS, *people(4)[2:]])
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert (progress.status, progress.sent, progress.failed) == ("finished", 4, 1)
    failed = [r for r in rows(settings) if r.status == DeliveryStatus.failed]
    assert len(failed) == 1 and failed[0].last_error
    assert "does not offer SMTPUTF8, needed for delivery" in failed[0].last_error
    assert "欧阳" not in failed[0].last_error


@pytest.mark.smtp
def test_an_address_needing_smtputf8_is_sent_with_it_when_offered(
    configure: Configure, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()  # offers SMTPUTF8
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}")
    campaign_id = prepare(settings, [*people(2), UTF8_ADDRESS])
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        assert service.progress(db, campaign_id).sent == 3
    assert [UTF8_ADDRESS] in [r.rcpt_tos for r in relay.handler.received]


def test_an_address_the_builder_refuses_fails_that_delivery_only(configure: Configure) -> None:
    memory_mailbox("builder").clear()
    settings = configure(mail_url="memory://builder")
    # Imported some other way: a line separator the header writer must not let through.
    campaign_id = prepare(settings, [*people(2), "bad\u2028local@example.org", *people(4)[2:]])
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert (progress.status, progress.sent, progress.failed) == ("finished", 4, 1)
    failed = [r for r in rows(settings) if r.status == DeliveryStatus.failed]
    assert "the message cannot be built" in (failed[0].last_error or "")
    assert failed[0].attempts == 0  # the relay never saw it


@pytest.mark.smtp
def test_a_relay_answering_421_makes_the_campaign_wait_and_costs_no_attempt(
    configure: Configure, start_smtp: Callable[..., SmtpServer], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start_smtp()
    answers = iter(["421 4.3.2 Service shutting down"] * 2)
    relay.handler.rcpt_policy = lambda _address: next(answers, None)
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", retry_backoff="0.1,0.2")
    campaign_id = prepare(settings, people(3))
    # Levels set on the two loggers themselves: a CLI test earlier in the run may have
    # configured them (newsletter.logs) above INFO, and the root's level would not reach them.
    with (
        caplog.at_level(logging.INFO, logger="tasks"),
        caplog.at_level(logging.INFO, logger="newsletter"),
    ):
        enqueue(start_campaign, campaign_id)
        wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert (progress.status, progress.sent) == ("finished", 3)
    assert [r.attempts for r in rows(settings)] == [1, 1, 1]  # the 421s were no attempt
    waited = [m for m in caplog.messages if "waiting for the relay" in m]
    assert len(waited) == 1 and "421 4.3.2 Service shutting down" in waited[0]
    assert "next try at" in waited[0]
    assert "p0@example.org" not in waited[0]
    assert any("probing the relay" in m for m in caplog.messages)


@pytest.mark.smtp
def test_a_lost_hand_over_is_no_attempt_and_a_refused_resend_is_unconfirmed(
    configure: Configure, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", retry_backoff="0.05")
    campaign_id = prepare(settings, people(2))
    # p0's message arrives, then the relay hangs up instead of answering its end of data.
    relay.handler.hang_up_for.add("p0@example.org")
    with session_scope(settings.database_url) as db:
        service.start_campaign(db, campaign_id)
    result = send_batch(settings, campaign_id)
    assert (result.claimed, result.sent, result.given_back) == (2, 1, 1)
    first = rows(settings)[0]
    assert (first.status, first.attempts, first.maybe_sent) == ("queued", 0, True)
    relay.handler.hang_up_for.clear()
    relay.handler.refuse_rcpt["p0@example.org"] = "550 5.7.1 policy"
    send_batch(settings, campaign_id)
    first = rows(settings)[0]
    assert (first.status, first.attempts) == (DeliveryStatus.unconfirmed, 1)
    assert "an earlier copy may have been accepted" in (first.last_error or "")


class Unsubscriber:
    """A relay's RCPT policy: at the first message of the batch, ``leaver`` unsubscribes
    (committed before the relay answers), so the batch is under way when it happens."""

    def __init__(self, settings: Settings, leaver: str) -> None:
        self.settings, self.leaver, self.done = settings, leaver, False

    def __call__(self, _address: str) -> None:
        if not self.done:
            self.done = True
            with session_scope(self.settings.database_url) as db:
                person = db.scalars(select(Subscriber).where(Subscriber.email == self.leaver))
                person.one().status = SubscriberStatus.unsubscribed


@pytest.mark.smtp
def test_someone_who_unsubscribes_during_a_long_batch_is_not_mailed(
    configure: Configure, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    count = REPORT_EVERY + 20
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", batch_size=str(count))
    campaign_id = prepare(settings, people(count))
    leaver = f"p{count - 1}@example.org"
    relay.handler.rcpt_policy = Unsubscriber(settings, leaver)
    with session_scope(settings.database_url) as db:
        service.start_campaign(db, campaign_id)
    result = send_batch(settings, campaign_id)
    assert (result.claimed, result.sent, result.skipped) == (count, count - 1, 1)
    assert leaver not in {a for r in relay.handler.received for a in r.rcpt_tos}


@pytest.mark.smtp
def test_each_batch_logs_one_line_of_counts_without_addresses(
    configure: Configure,
    start_smtp: Callable[..., SmtpServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = start_smtp()
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", retry_backoff="60")
    campaign_id = prepare(settings, people(4))
    relay.handler.refuse_rcpt["p1@example.org"] = "451 4.7.1 greylisted"
    with session_scope(settings.database_url) as db:
        service.start_campaign(db, campaign_id)
        db.scalars(select(Subscriber).where(Subscriber.email == "p3@example.org")).one()
    with session_scope(settings.database_url) as db:
        gone = db.scalars(select(Subscriber).where(Subscriber.email == "p3@example.org"))
        gone.one().status = SubscriberStatus.unsubscribed
    with caplog.at_level(logging.INFO, logger="newsletter.campaigns.sending"):
        send_batch(settings, campaign_id)
    lines = [m for m in caplog.messages if " batch: " in m]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"campaign {campaign_id} batch: claimed 4, sent 2, failed 0, retried 1, skipped 1,"
    )
    assert lines[0].endswith(" ms") and "@" not in lines[0]
    with session_scope(settings.database_url) as db:
        assert service.progress(db, campaign_id).status == CampaignStatus.sending
