"""A batch over several SMTP connections at once, against a real aiosmtpd relay and a real
PostgreSQL: how many connections, what one connection's 421 costs the others, a relay's limit
of messages per connection, and claims renewed by time while a slow relay answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import func, select, update

from newsletter.campaigns import service
from newsletter.campaigns.heartbeat import give_back_orphans
from newsletter.campaigns.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    WorkerHeartbeat,
)
from newsletter.campaigns.sending import BatchResult, send_batch
from newsletter.config import Settings
from newsletter.db import session_scope
from tests.conftest import Configure, _empty_tables
from tests.smtp import SmtpServer
from tests.test_sending import prepare as create_campaign

pytestmark = pytest.mark.smtp


def prepare(settings: Settings, people: int) -> int:
    """A sending campaign of session 61 to ``people`` subscribers p0…; its id."""
    _empty_tables(settings.database_url)
    campaign_id = create_campaign(settings, people)
    with session_scope(settings.database_url) as db:
        service.start_campaign(db, campaign_id)
    return campaign_id


def send_all(settings: Settings, campaign_id: int) -> list[BatchResult]:
    """Batches one after the other until none claims anything (what a task chain does)."""
    results = []
    while (result := send_batch(settings, campaign_id)).claimed:
        results.append(result)
        assert len(results) < 50, "the campaign does not end"
    return results


def deliveries(settings: Settings) -> list[Delivery]:
    with session_scope(settings.database_url) as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


def assert_everyone_once(relay: SmtpServer, people: int) -> None:
    got = sorted(r.rcpt_tos[0] for r in relay.handler.received)
    assert got == sorted(f"p{i}@example.org" for i in range(people))


def test_a_batch_uses_several_connections_at_once_and_never_more_than_configured(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    relay.handler.data_delay = 0.02  # each answer takes a moment: the lanes overlap
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="3",
        batch_size="40",
    )
    campaign_id = prepare(settings, 40)
    (result,) = send_all(settings, campaign_id)
    assert (result.claimed, result.sent, result.stopped_because) == (40, 40, None)
    assert relay.handler.most_sessions == 3  # at most N, and more than one
    assert relay.handler.sessions == 3  # one connection per lane for the whole batch
    assert_everyone_once(relay, 40)
    assert {(d.status, d.attempts) for d in deliveries(settings)} == {(DeliveryStatus.sent, 1)}


def test_a_421_on_one_connection_retries_its_message_there_and_leaves_the_others_alone(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    relay.handler.data_delay = 0.02
    closed = threading.Event()

    def policy(session: int, accepted: int) -> str | None:
        # The second connection is closed by the relay after its fourth message.
        if session == 2 and accepted == 4 and not closed.is_set():
            closed.set()
            return "421 4.3.2 Service shutting down this connection"
        return None

    relay.handler.session_policy = policy
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="3",
        batch_size="30",
    )
    campaign_id = prepare(settings, 30)
    (result,) = send_all(settings, campaign_id)
    assert closed.is_set(), "the relay never closed the connection: the drill did not run"
    assert (result.sent, result.given_back, result.stopped_because) == (30, 0, None)
    assert_everyone_once(relay, 30)  # the others' messages were not sent again
    assert relay.handler.accepted_on[2] == 4  # the closed connection delivered what it had
    assert relay.handler.sessions == 4  # its lane reconnected once; the other two went on
    assert relay.handler.most_sessions == 3
    # The 421 said nothing about a message: no attempt spent on it, no campaign waiting.
    assert {(d.status, d.attempts) for d in deliveries(settings)} == {(DeliveryStatus.sent, 1)}
    with session_scope(settings.database_url) as db:
        assert service.progress(db, campaign_id).status == CampaignStatus.sending


def test_a_relay_limit_of_messages_per_connection_is_kept_by_reconnecting(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    relay.handler.per_connection = 5
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}?max_messages=5",
        smtp_connections="2",
        batch_size="23",
    )
    campaign_id = prepare(settings, 23)
    (result,) = send_all(settings, campaign_id)
    assert (result.sent, result.stopped_because) == (23, None)
    assert relay.handler.over_limit == 0  # the relay never had to refuse a sixth message
    assert max(relay.handler.accepted_on.values()) == 5
    assert relay.handler.sessions >= 5  # 23 messages, 5 a connection
    assert relay.handler.most_sessions == 2
    assert_everyone_once(relay, 23)


def test_connections_all_closed_at_a_relay_limit_at_once_reconnect_without_waiting(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    """A relay with a limit the mail URL does not know: every connection meets its 421 at
    about the same moment. Each reconnects; it is no outage (no waiting, no attempt)."""
    relay = start_smtp()
    relay.handler.per_connection = 4
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="3",
        batch_size="30",
    )
    campaign_id = prepare(settings, 30)
    (result,) = send_all(settings, campaign_id)
    assert (result.sent, result.stopped_because) == (30, None)
    assert relay.handler.over_limit >= 3 and relay.handler.most_sessions == 3
    assert_everyone_once(relay, 30)
    assert {(d.status, d.attempts) for d in deliveries(settings)} == {(DeliveryStatus.sent, 1)}


def test_a_relay_taking_fewer_connections_than_configured_gets_those_and_no_outage(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    relay = start_smtp()
    relay.handler.max_connections = 2  # "421 Too many connections" to a third
    relay.handler.data_delay = 0.02
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="4",
        batch_size="30",
    )
    campaign_id = prepare(settings, 30)
    (result,) = send_all(settings, campaign_id)
    assert (result.sent, result.given_back, result.stopped_because) == (30, 0, None)
    assert relay.handler.refused_connections == 2 and relay.handler.most_sessions == 2
    assert_everyone_once(relay, 30)
    with session_scope(settings.database_url) as db:
        assert service.progress(db, campaign_id).status == CampaignStatus.sending


def test_a_slow_relay_keeps_the_claims_renewed_so_the_sweeper_leaves_them(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    """Each answer takes longer than the claim timeout: a worker alive and sending must still
    hold its rows, however long one message takes."""
    relay = start_smtp()
    relay.handler.data_delay = 1.5
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="2",
        batch_size="6",
        inflight_timeout="1.0",  # a claim not renewed for a second is taken for stuck
        heartbeat_interval="0.2",
    )
    campaign_id = prepare(settings, 6)
    results: list[BatchResult] = []
    sender = threading.Thread(target=lambda: results.append(send_batch(settings, campaign_id)))
    sender.start()
    given_back = 0
    while sender.is_alive():  # the sweeper, as beat runs it, only much more often
        given_back += give_back_orphans(settings, campaign_id)
        time.sleep(0.05)
    sender.join()
    assert given_back == 0
    assert (results[0].claimed, results[0].sent) == (6, 6)
    assert_everyone_once(relay, 6)
    rows = deliveries(settings)
    assert {(d.status, d.maybe_sent) for d in rows} == {(DeliveryStatus.sent, False)}


def _sending_slowly(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer], people: int
) -> tuple[Settings, SmtpServer, int, threading.Thread, list[BatchResult]]:
    """A batch of ``people`` on one connection to a relay taking 0.3 s a message, started in
    a thread once its first message arrived; heartbeats every 0.2 s (dead after 0.6 s)."""
    relay = start_smtp()
    relay.handler.data_delay = 0.3
    settings = configure(
        database_url=postgres_url,
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        smtp_connections="1",
        batch_size=str(people),
        heartbeat_interval="0.2",
    )
    campaign_id = prepare(settings, people)
    results: list[BatchResult] = []
    sender = threading.Thread(target=lambda: results.append(send_batch(settings, campaign_id)))
    sender.start()
    deadline = time.monotonic() + 30
    while not relay.handler.received:
        assert time.monotonic() < deadline, "the batch did not start sending"
        time.sleep(0.01)
    return settings, relay, campaign_id, sender, results


def test_a_report_waiting_for_the_campaign_row_does_not_silence_the_heartbeat(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    """Another transaction holds the campaign row (a worker's counts, an organizer's pause):
    the batch's report waits for it, but the worker must go on saying it is alive, or the
    sweeper gives its rows to another worker and the same people are mailed twice."""
    settings, relay, campaign_id, sender, _ = _sending_slowly(
        configure, postgres_url, start_smtp, 12
    )
    with session_scope(settings.database_url) as holder:
        holder.execute(select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
        time.sleep(1.2)  # a report (every second) is now waiting for the row
        first = _beat(settings)
        time.sleep(1.2)
        second = _beat(settings)
    sender.join()
    assert second > first, "the heartbeat stopped while the report waited"
    assert give_back_orphans(settings, campaign_id) == 0
    assert_everyone_once(relay, 12)


def test_a_batch_whose_rows_were_given_away_stops_sending_them(
    configure: Configure, postgres_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    """A sweeper took this worker for dead and another worker claimed its rows: the batch
    sees it when it renews its claims and stops, instead of mailing them as well."""
    settings, relay, _, sender, results = _sending_slowly(configure, postgres_url, start_smtp, 12)
    with session_scope(settings.database_url) as db:
        db.execute(
            update(Delivery)
            .where(Delivery.status == DeliveryStatus.inflight)
            .values(claimed_by="another-worker")
        )
    sender.join()
    assert "given to another worker" in (results[0].stopped_because or "")
    assert len(relay.handler.received) < 12  # the rest is the other worker's to send
    rows = deliveries(settings)
    assert {d.claimed_by for d in rows if d.status == DeliveryStatus.inflight} == {"another-worker"}


def _beat(settings: Settings) -> datetime:
    with session_scope(settings.database_url) as db:
        beat: datetime | None = db.scalar(select(func.max(WorkerHeartbeat.beat_at)))
    assert beat is not None
    return beat
