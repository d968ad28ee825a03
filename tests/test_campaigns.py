"""Campaigns end to end on the embedded defaults: snapshot, send, no duplicates, no skips."""

from __future__ import annotations

import email
import email.policy
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.campaigns import counts_repo, repo, service, sweep_repo
from newsletter.campaigns.models import CampaignStatus, Delivery, DeliveryStatus, WorkerHeartbeat
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus, Tag
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import EXAMPLES, Configure
from tests.worker import wait_for_worker


def add_people(db: Session, count: int, *, tag: str | None = None) -> list[int]:
    tags = [Tag(name=tag)] if tag else []
    people = [
        Subscriber(email=f"p{i}@example.org", name=f"订阅者{i}", created_at=utcnow(), tags=tags)
        for i in range(count)
    ]
    db.add_all(people)
    db.flush()
    return [p.id for p in people]


def load_examples(url: str) -> None:
    with session_scope(url) as db:
        import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")


def outbox_messages(settings: Settings) -> list[email.message.EmailMessage]:
    outbox = Path(settings.mail_url.removeprefix("file://"))
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(outbox.glob("*.eml"))
    ]


def test_snapshot_takes_active_subscribers_with_the_tag(db_url: str) -> None:
    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 3, tag="zju")
        gone = Subscriber(
            email="gone@example.org",
            name="Gone",
            created_at=utcnow(),
            status=SubscriberStatus.unsubscribed,
        )
        other = Subscriber(email="other@example.org", name="Other", created_at=utcnow())
        db.add_all([gone, other])
    with session_scope(db_url) as db:
        everyone = service.create_campaign(db, 61, past=True)
        tagged = service.create_campaign(db, 61, tag="zju", past=True)
        assert (everyone.recipient_count, tagged.recipient_count) == (4, 3)
        assert everyone.subject == "第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性"
        assert counts_repo.delivery_counts(db, everyone.id)["queued"] == 4


def test_unknown_session_and_campaign_are_clear_errors(db_url: str) -> None:
    with session_scope(db_url) as db, pytest.raises(NotFoundError, match="session 99"):
        service.create_campaign(db, 99)
    with session_scope(db_url) as db, pytest.raises(NotFoundError, match="campaign 5"):
        service.progress(db, 5)


def test_claims_never_overlap_between_concurrent_workers(db_url: str) -> None:
    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 300)
        campaign_id = service.create_campaign(db, 61, past=True).id
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with session_scope(db_url) as db:
                batch = repo.claim_batch(db, campaign_id, worker=name, limit=7)
            if not batch:
                return
            with lock:
                claimed.extend(c.delivery_id for c in batch)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 300
    assert len(set(claimed)) == 300


def test_rows_of_a_worker_whose_heartbeat_stopped_come_back_marked_maybe_sent(
    db_url: str,
) -> None:
    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 6)
        campaign_id = service.create_campaign(db, 61, past=True).id
        dead = repo.claim_batch(db, campaign_id, worker="dead", limit=3)
        alive = repo.claim_batch(db, campaign_id, worker="alive", limit=3)
    assert [c.attempts for c in dead + alive] == [0] * 6  # a claim is not an attempt
    beats = {"dead_after": timedelta(seconds=6), "stuck_after": timedelta(minutes=5)}
    with session_scope(db_url) as db:
        assert (
            sweep_repo.requeue_orphans(
                db, dead_after=beats["dead_after"], stuck_after=beats["stuck_after"]
            )
            == 0
        )  # both beat just now
        # "dead" last beat (and claimed) 7 s ago; "alive" claimed then too but still beats.
        old = utcnow() - timedelta(seconds=7)
        db.execute(update(Delivery).values(claimed_at=old))
        db.execute(
            update(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == "dead").values(beat_at=old)
        )
        sweep_repo.record_heartbeat(db, "alive")
        assert (
            sweep_repo.requeue_orphans(
                db,
                campaign_id=campaign_id,
                dead_after=beats["dead_after"],
                stuck_after=beats["stuck_after"],
            )
            == 3
        )
        rows = db.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert [(r.status, r.maybe_sent, r.attempts) for r in rows] == [("queued", True, 0)] * 3 + [
        ("inflight", False, 0)
    ] * 3
    with session_scope(db_url) as db:  # a live worker stuck for longer than stuck_after
        db.execute(update(Delivery).values(claimed_at=utcnow() - timedelta(hours=1)))
        assert (
            sweep_repo.requeue_orphans(
                db, dead_after=beats["dead_after"], stuck_after=beats["stuck_after"]
            )
            == 3
        )


def test_a_maybe_sent_row_refused_on_resend_ends_unconfirmed_not_failed(db_url: str) -> None:
    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 2)
        campaign_id = service.create_campaign(db, 61, past=True).id
        db.execute(update(Delivery).values(maybe_sent=Delivery.id == 1))
        claimed = repo.claim_batch(db, campaign_id, worker="w", limit=2)
        ids = [c.delivery_id for c in claimed]
        repo.mark_failed(db, ids, "550 5.7.1 policy", worker="w", answered=True)
        rows = db.scalars(select(Delivery).order_by(Delivery.id)).all()
        assert [(r.status, r.attempts) for r in rows] == [("unconfirmed", 1), ("failed", 1)]
        assert service.progress(db, campaign_id).unconfirmed == 1


def test_send_mails_everyone_once_and_sending_again_mails_nobody(
    configure: Configure,
) -> None:
    settings = configure(batch_size="7")
    upgrade(settings.database_url)
    load_examples(settings.database_url)
    with session_scope(settings.database_url) as db:
        add_people(db, 20)
        campaign_id = service.create_campaign(db, 61, past=True).id
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    enqueue(start_campaign, campaign_id)  # a second send: rows decide, nobody is mailed again
    wait_for_worker()
    messages = outbox_messages(settings)
    recipients = Counter(str(m["To"]) for m in messages)
    assert len(recipients) == 20
    assert set(recipients.values()) == {1}
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert (progress.status, progress.sent, progress.queued, progress.inflight) == (
        CampaignStatus.finished,
        20,
        0,
        0,
    )
    message_ids = {str(m["Message-ID"]) for m in messages}
    assert len(message_ids) == 20
    assert all(mid.endswith("@example.org>") for mid in message_ids)


def test_unsubscribed_after_creation_is_skipped_at_send_time(configure: Configure) -> None:
    settings = configure()
    upgrade(settings.database_url)
    load_examples(settings.database_url)
    with session_scope(settings.database_url) as db:
        ids = add_people(db, 3)
        campaign_id = service.create_campaign(db, 61, past=True).id
        db.execute(
            update(Subscriber)
            .where(Subscriber.id == ids[0])
            .values(status=SubscriberStatus.unsubscribed)
        )
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    sent_to = {str(m["To"]) for m in outbox_messages(settings)}
    assert len(sent_to) == 2
    assert not any("p0@example.org" in to for to in sent_to)
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
        assert (progress.sent, progress.skipped, progress.status) == (2, 1, "finished")


def test_dead_smtp_server_is_probed_then_pauses_in_process_and_loses_nothing(
    configure: Configure,
) -> None:
    from tests.servers import free_port

    # In-process the command is the worker: it probes along the table, then pauses.
    settings = configure(mail_url=f"smtp://127.0.0.1:{free_port()}", retry_backoff="0.05,0.1")
    upgrade(settings.database_url)
    load_examples(settings.database_url)
    with session_scope(settings.database_url) as db:
        add_people(db, 4)
        campaign_id = service.create_campaign(db, 61, past=True).id
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    with session_scope(settings.database_url) as db:
        progress = service.progress(db, campaign_id)
        statuses = set(db.scalars(select(Delivery.status)))
        attempts = set(db.scalars(select(Delivery.attempts)))
    assert attempts == {0}  # no connection, no answer: no attempt used
    assert progress.status == CampaignStatus.paused
    assert progress.status_reason and "127.0.0.1" in progress.status_reason
    assert "waiting for the relay" in progress.status_reason
    assert "tried 3 times" in progress.status_reason
    assert statuses == {DeliveryStatus.queued}
    assert progress.sent == 0 and progress.failed == 0


def test_pause_resume_cancel(db_url: str) -> None:
    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 3)
        campaign_id = service.create_campaign(db, 61, past=True).id
    with session_scope(db_url) as db:
        with pytest.raises(InvalidStateError, match="cannot resume"):
            service.resume_campaign(db, campaign_id)
        service.start_campaign(db, campaign_id)
        service.pause_campaign(db, campaign_id)
        service.resume_campaign(db, campaign_id)
        service.cancel_campaign(db, campaign_id)
    with session_scope(db_url) as db:
        progress = service.progress(db, campaign_id)
        assert (progress.status, progress.skipped, progress.queued) == ("cancelled", 3, 0)
        with pytest.raises(InvalidStateError, match="cannot start"):
            service.start_campaign(db, campaign_id)


def test_waiting_for_the_relay_follows_the_table_and_can_be_paused_or_cancelled(
    db_url: str,
) -> None:
    from zoneinfo import ZoneInfo

    load_examples(db_url)
    with session_scope(db_url) as db:
        add_people(db, 2)
        campaign_id = service.create_campaign(db, 61, past=True).id
        service.start_campaign(db, campaign_id)
    zone, delays = ZoneInfo("Asia/Shanghai"), [5.0, 60.0]
    steps = []
    for _ in range(3):  # the last step repeats while the relay stays down
        with session_scope(db_url) as db:
            before = utcnow()
            at = service.wait_for_relay(
                db, campaign_id, "waiting for the relay (x)", delays=delays, zone=zone
            )
            assert at is not None
            steps.append(round((at - before).total_seconds()))
            # A second batch meeting the same outage changes nothing.
            assert service.wait_for_relay(db, campaign_id, "y", delays=delays, zone=zone) is None
            campaign = service.require_campaign(db, campaign_id)
            assert campaign.status == CampaignStatus.waiting
            assert campaign.status_reason == (
                f"waiting for the relay (x); next try at {at.astimezone(zone):%H:%M:%S} CST"
            )
            assert service.probe_relay(db, campaign_id) is False  # not due yet
            campaign.relay_retry_at = utcnow()
            assert service.probe_relay(db, campaign_id) is True
    assert steps == [5, 60, 60]
    with session_scope(db_url) as db:
        service.wait_for_relay(db, campaign_id, "down", delays=delays, zone=zone)
        service.pause_campaign(db, campaign_id)  # pausing stops the probing
        service.require_campaign(db, campaign_id).relay_retry_at = utcnow()
        assert service.probe_relay(db, campaign_id) is False
        service.resume_campaign(db, campaign_id)
        service.wait_for_relay(db, campaign_id, "down", delays=delays, zone=zone)
        assert service.cancel_campaign(db, campaign_id).status == CampaignStatus.cancelled
