"""A campaign's delivery counts are kept on its row as deliveries change, and always equal a
GROUP BY over its delivery rows: after a real send with deferrals, failures, skips and a dead
worker's rows given back, after a cancel, and after migration 0007 filled them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, event, func, select, text

from newsletter.campaigns import repo, service, sweep_repo
from newsletter.campaigns.models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from newsletter.config import Settings
from newsletter.db import get_engine, session_scope
from newsletter.migrate import upgrade
from subscribers.models import Subscriber, SubscriberStatus
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import Configure, no_schema
from tests.smtp import SmtpServer
from tests.test_sending import prepare
from tests.worker import wait_for_worker

STATUSES = [status.value for status in DeliveryStatus]


def counted(url: str, campaign_id: int) -> dict[str, int]:
    """The campaign's deliveries by status, counted over the rows."""
    counts = dict.fromkeys(STATUSES, 0)
    with session_scope(url) as db:
        for status, n in db.execute(
            select(Delivery.status, func.count())
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.status)
        ):
            counts[status] = int(n)
    return counts


def kept(url: str, campaign_id: int) -> dict[str, int]:
    """The counts kept on the campaign row."""
    with session_scope(url) as db:
        campaign = db.get(Campaign, campaign_id)
        assert campaign is not None
        return {s: int(getattr(campaign, f"{s}_count")) for s in STATUSES}


def assert_counts_right(url: str, campaign_id: int) -> dict[str, int]:
    """The kept counts equal the GROUP BY; returns them."""
    rows = counted(url, campaign_id)
    assert kept(url, campaign_id) == rows
    return rows


def test_counts_follow_a_send_with_every_kind_of_outcome(
    configure: Configure, db_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    greylisted: set[str] = set()

    def greylist(address: str) -> str | None:  # p4: refused once, then accepted
        if address == "p4@example.org" and address not in greylisted:
            greylisted.add(address)
            return "451 4.7.1 greylisted, try again"
        return None

    relay.handler.refuse_rcpt = {
        "p1@example.org": "451 4.7.1 mailbox busy",  # always: gives up after the back-off
        "p2@example.org": "550 5.1.1 no such user",  # a hard bounce: failed at once
    }
    relay.handler.rcpt_policy = greylist
    settings: Settings = configure(
        database_url=db_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        retry_backoff="0.05,0.1",
        batch_size="4",
    )
    url = settings.database_url
    campaign_id = prepare(settings, 10)
    assert assert_counts_right(url, campaign_id)["queued"] == 10
    with session_scope(url) as db:  # p3 leaves after the snapshot: skipped when claimed
        db.scalars(
            select(Subscriber).where(Subscriber.email == "p3@example.org")
        ).one().status = SubscriberStatus.unsubscribed
        service.start_campaign(db, campaign_id)
    # A worker claims p0 and p1, then dies: its rows go back, "maybe sent".
    with session_scope(url) as db:
        ghost = repo.claim_batch(db, campaign_id, worker="ghost", limit=2)
    assert [c.email for c in ghost] == ["p0@example.org", "p1@example.org"]
    assert assert_counts_right(url, campaign_id)["inflight"] == 2
    time.sleep(0.01)
    with session_scope(url) as db:
        given_back = sweep_repo.requeue_orphans(
            db, dead_after=timedelta(0), stuck_after=timedelta(hours=1)
        )
    assert given_back == 2
    assert assert_counts_right(url, campaign_id)["inflight"] == 0

    enqueue(start_campaign, campaign_id)
    wait_for_worker()

    final = assert_counts_right(url, campaign_id)
    # p1's re-sends were refused after a worker that may have handed it over died:
    # unconfirmed, never failed; p2 bounced; p3 skipped; p4 went through on its retry.
    assert final == {
        "queued": 0,
        "inflight": 0,
        "sent": 7,
        "failed": 1,
        "skipped": 1,
        "unconfirmed": 1,
    }
    assert "p4@example.org" in greylisted
    with session_scope(url) as db:
        progress = service.progress(db, campaign_id)
        assert progress.status == CampaignStatus.finished
        assert (progress.sent, progress.failed, progress.skipped, progress.unconfirmed) == (
            7,
            1,
            1,
            1,
        )
        assert progress.total == 10
        assert repo.pending(db, campaign_id).queued == 0

    # A cancel skips what is queued, and the counts move with it.
    with session_scope(url) as db:
        second = service.create_campaign(db, 61, past=True).id
    assert assert_counts_right(url, second)["queued"] == 8  # p2 bounced, p3 left
    with session_scope(url) as db:
        service.cancel_campaign(db, second)
        # Read in the same transaction: the loaded campaign's counts are not stale.
        assert service.progress(db, second).skipped == 8
    assert assert_counts_right(url, second)["skipped"] == 8


def test_list_reads_every_campaign_in_one_query(configure: Configure, db_url: str) -> None:
    settings = configure(database_url=db_url)
    ids = [prepare(settings, 3)]
    with session_scope(settings.database_url) as db:
        ids += [service.create_campaign(db, 61, past=True).id for _ in range(3)]
    statements: list[str] = []
    engine = get_engine(settings.database_url)

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with session_scope(settings.database_url) as db:
            listed = service.list_progress(db)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [p.id for _, p in listed] == sorted(ids, reverse=True)
    assert all(p.total == 3 and p.queued == 3 and p.session_number == 61 for _, p in listed)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert not [s for s in statements if "deliveries" in s]


STARTS = datetime(2026, 3, 1, tzinfo=UTC)


def _seed_at_0006(url: str) -> None:
    upgrade(url, "0006")
    with get_engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sessions (id, number, series, title, starts_at, ends_at, timezone,"
                " cancelled, revision, record, updated_at) VALUES (1, 7, 's', 't', :at, :at,"
                " 'Asia/Shanghai', false, 0, '{}', :at)"
            ),
            {"at": STARTS},
        )
        for person in range(1, 7):
            connection.execute(
                text(
                    "INSERT INTO subscribers (id, email, name, locale, status, created_at)"
                    " VALUES (:id, :email, 'x', 'zh-CN', 'active', :at)"
                ),
                {"id": person, "email": f"m{person}@example.org", "at": STARTS},
            )
        for campaign in (1, 2, 3):  # 3 has no deliveries at all
            connection.execute(
                text(
                    "INSERT INTO campaigns (id, session_id, kind, subject, status,"
                    " recipient_count, created_at) VALUES (:id, 1, 'invitation', 's',"
                    " 'sending', 0, :at)"
                ),
                {"id": campaign, "at": STARTS},
            )
        rows = [
            (1, 1, "sent"),
            (1, 2, "sent"),
            (1, 3, "failed"),
            (1, 4, "queued"),
            (1, 5, "inflight"),
            (1, 6, "unconfirmed"),
            (2, 1, "skipped"),
            (2, 2, "queued"),
            (2, 3, "queued"),
        ]
        for number, (campaign, person, status) in enumerate(rows, start=1):
            connection.execute(
                text(
                    "INSERT INTO deliveries (id, campaign_id, subscriber_id, status, attempts)"
                    " VALUES (:id, :c, :p, :s, 0)"
                ),
                {"id": number, "c": campaign, "p": person, "s": status},
            )


def test_migration_fills_the_counts_from_the_rows(db_url: str) -> None:
    no_schema(db_url)
    try:
        _seed_at_0006(db_url)
        upgrade(db_url)
        one = assert_counts_right(db_url, 1)
        assert one == {
            "queued": 1,
            "inflight": 1,
            "sent": 2,
            "failed": 1,
            "skipped": 0,
            "unconfirmed": 1,
        }
        assert assert_counts_right(db_url, 2) == dict.fromkeys(STATUSES, 0) | {
            "queued": 2,
            "skipped": 1,
        }
        assert assert_counts_right(db_url, 3) == dict.fromkeys(STATUSES, 0)
        with session_scope(db_url) as db:
            assert sorted(db.scalars(select(Delivery.id))) == list(range(1, 10))
        if db_url.startswith("postgresql"):
            return  # the seed's explicit ids left its sequence behind; a sequence never goes back
        # The rows kept their ids through SQLite's table rebuild (AUTOINCREMENT), and ids go
        # on above them even once the highest rows are gone.
        with session_scope(db_url) as db:
            db.execute(delete(Delivery).where(Delivery.id >= 7))
        with session_scope(db_url) as db:
            db.add(Delivery(campaign_id=3, subscriber_id=6, status="queued", attempts=0))
            db.flush()
            assert db.scalars(select(Delivery.id).where(Delivery.campaign_id == 3)).one() == 10
    finally:
        no_schema(db_url)
        upgrade(db_url)
