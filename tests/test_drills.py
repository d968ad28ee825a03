"""Drills: real PostgreSQL, real Redis, a real aiosmtpd relay and real worker processes.

Each drill sends one campaign through ``newsletter worker`` processes and checks, from what
the relay received, that every subscriber got the invitation exactly once — except messages
in flight at a crash, which may arrive again, always with the same Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter.campaigns import service
from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus
from tasks.celery_app import make_celery
from tests.conftest import EXAMPLES, _empty_tables
from tests.servers import redis_server, start_redis
from tests.smtp import SmtpServer

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
PEOPLE = 240


class Stack:
    """The production shape on loopback: workers are processes started by the drill."""

    def __init__(self, database_url: str, redis_url: str, smtp: SmtpServer, tmp: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        self.env.update(
            NEWSLETTER_DATABASE_URL=database_url,
            NEWSLETTER_BROKER_URL=redis_url,
            NEWSLETTER_MAIL_URL=f"smtp://127.0.0.1:{smtp.port}",
            NEWSLETTER_SECRET_KEY="drill-secret",
            NEWSLETTER_ADMIN_TOKEN="drill-admin",
            NEWSLETTER_BASE_URL="https://salon.example.org",
            NEWSLETTER_FROM_ADDRESS="Mo 人工智能俱乐部 <salon@example.org>",
            NEWSLETTER_BATCH_SIZE="20",
            NEWSLETTER_RETRY_BACKOFF="0.2,0.5,1",
            NEWSLETTER_INFLIGHT_TIMEOUT="3",
            NEWSLETTER_SWEEP_INTERVAL="1",
            NEWSLETTER_VAR_DIR=str(tmp / "var"),
        )
        self.database_url = database_url
        self.smtp = smtp
        self.tmp = tmp
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,
            broker_url=self.env["NEWSLETTER_BROKER_URL"],
            secret_key="drill-secret",
        )

    def start_worker(self, *, beat: bool = False) -> subprocess.Popen[bytes]:
        """A ``newsletter worker`` process; returns once Celery says it is ready."""
        log = self.tmp / f"worker{len(self.workers)}.log"
        argv = [NEWSLETTER, "worker", "--concurrency", "1", "--loglevel", "INFO"]
        if beat:
            argv.append("--beat")
        process = subprocess.Popen(
            argv,
            cwd=self.tmp,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(process)
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.1)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9 the worker and its pool children, as an OOM killer or a pulled plug would."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def create_campaign(self, people: int = PEOPLE) -> int:
        with session_scope(self.database_url) as session:
            import_records(session, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
            session.add_all(
                Subscriber(email=f"p{i:04d}@example.org", name=f"订阅者{i}", created_at=utcnow())
                for i in range(people)
            )
        with session_scope(self.database_url) as session:
            return service.create_campaign(session, 61).id

    def send(self, campaign_id: int) -> None:
        """What ``newsletter campaign send`` does with a broker: enqueue the start task."""
        app = make_celery(self.settings)
        app.send_task("campaigns.start", args=[campaign_id])

    def wait_until(self, campaign_id: int, statuses: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.database_url) as session:
                status = session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
            assert status is not None
            if status in statuses:
                return status
            if time.monotonic() > deadline:
                with session_scope(self.database_url) as session:
                    progress = service.progress(session, campaign_id)
                raise AssertionError(f"campaign still {status} after {timeout}s: {progress}")
            time.sleep(0.2)

    def received(self) -> dict[str, list[str]]:
        """Message-IDs the relay accepted, by recipient."""
        by_recipient: dict[str, list[str]] = defaultdict(list)
        for item in list(self.smtp.handler.received):
            message = email.message_from_bytes(item.data, policy=email.policy.default)
            by_recipient[item.rcpt_tos[0]].append(str(message["Message-ID"]))
        return by_recipient


@pytest.fixture
def stack(
    postgres_url: str,
    redis_url: str,
    start_smtp: Callable[..., SmtpServer],
    tmp_path: Path,
) -> Iterator[Stack]:
    _empty_tables(postgres_url)
    # A fresh Redis database per drill: leftover tasks of an earlier drill must not run.
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    built = Stack(postgres_url, redis_url, start_smtp(), tmp_path)
    try:
        yield built
    finally:
        built.stop_all()


def assert_everyone_once(stack: Stack, *, people: int = PEOPLE, in_flight: int = 0) -> None:
    got = stack.received()
    assert sorted(got) == [f"p{i:04d}@example.org" for i in range(people)]
    repeated = {to: ids for to, ids in got.items() if len(ids) > 1}
    assert all(len(set(ids)) == 1 for ids in got.values()), "a resend changed its Message-ID"
    assert len(repeated) <= in_flight, f"{len(repeated)} recipients got more than one copy"


def test_two_workers_mail_everyone_exactly_once(stack: Stack) -> None:
    stack.start_worker()
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    stack.send(campaign_id)  # sent twice: rows decide, nobody is mailed twice
    assert stack.wait_until(campaign_id, {"finished"}) == "finished"
    assert_everyone_once(stack)
    for number in (0, 1):  # both processes took batches
        assert "campaigns.batch" in (stack.tmp / f"worker{number}.log").read_text(errors="replace")


def test_kill_9_a_worker_mid_campaign_then_another_finishes(stack: Stack) -> None:
    first = stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    deadline = time.monotonic() + 60
    while len(stack.smtp.handler.received) < 50:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stack.kill(first)
    killed_at = len(stack.smtp.handler.received)
    assert killed_at < PEOPLE, "the first worker finished before the kill; make PEOPLE larger"
    stack.start_worker(beat=True)
    assert stack.wait_until(campaign_id, {"finished"}) == "finished"
    # At most one batch (20) was in flight in the killed worker.
    assert_everyone_once(stack, in_flight=20)
    with session_scope(stack.database_url) as session:
        reclaimed = session.scalar(select(Delivery.id).where(Delivery.attempts > 1).limit(1))
    assert reclaimed is not None, "the dead worker's rows were never given back"


def test_redis_restart_mid_campaign_still_finishes(
    postgres_url: str, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    with redis_server() as first:
        assert first is not None
        stack = Stack(postgres_url, first.url, start_smtp(), tmp_path)
        port = first.port
        try:
            stack.start_worker(beat=True)
            campaign_id = stack.create_campaign()
            stack.send(campaign_id)
            deadline = time.monotonic() + 60
            while len(stack.smtp.handler.received) < 40:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert first.process is not None
            first.process.terminate()
            first.process.wait(10)
            assert len(stack.smtp.handler.received) < PEOPLE, "finished before the restart"
            time.sleep(1.0)
            restarted = start_redis(port, tmp_path)
            try:
                assert stack.wait_until(campaign_id, {"finished"}, timeout=120) == "finished"
                assert_everyone_once(stack, in_flight=20)
            finally:
                restarted.terminate()
                restarted.wait(10)
        finally:
            stack.stop_all()


def test_relay_answering_421_for_a_while_delivers_everyone_after_retries(stack: Stack) -> None:
    stack.smtp.handler.refuse_first = 30
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "finished"
    assert_everyone_once(stack)
    with session_scope(stack.database_url) as session:
        retried = session.scalar(select(Delivery.id).where(Delivery.attempts > 1).limit(1))
    assert retried is not None


def test_relay_refusing_some_addresses_fails_those_and_suppresses_hard_bounces(
    stack: Stack,
) -> None:
    refused = {f"p{i:04d}@example.org" for i in (3, 50, 120)}
    stack.smtp.handler.refuse_rcpt = {
        address: "550 5.1.1 <recipient>: Recipient address rejected: User unknown"
        for address in refused
    }
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "finished"
    got = stack.received()
    assert set(got) == {f"p{i:04d}@example.org" for i in range(PEOPLE)} - refused
    with session_scope(stack.database_url) as session:
        failed = session.execute(
            select(Subscriber.email, Subscriber.status, Delivery.last_error)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.status == DeliveryStatus.failed)
        ).all()
    assert {row.email for row in failed} == refused
    assert all(row.status == SubscriberStatus.bounced for row in failed)
    assert all("5.1.1" in (row.last_error or "") for row in failed)


def test_error_budget_exceeded_pauses_the_campaign_with_the_reason(stack: Stack) -> None:
    stack.smtp.handler.refuse_rcpt = {
        f"p{i:04d}@example.org": "550 5.7.1 Message rejected as spam" for i in range(0, PEOPLE, 3)
    }
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "paused"
    with session_scope(stack.database_url) as session:
        progress = service.progress(session, campaign_id)
    assert progress.status_reason and "error budget" in progress.status_reason
    assert "5.7.1" in progress.status_reason
    assert progress.queued > 0  # the rest of the list was not burned


def test_pause_resume_and_cancel_mid_flight(stack: Stack) -> None:
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    deadline = time.monotonic() + 60
    while len(stack.smtp.handler.received) < 30:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with session_scope(stack.database_url) as session:
        service.pause_campaign(session, campaign_id)
    # Within one batch (20 here, reports every 100 messages) nothing more leaves.
    time.sleep(2.0)
    at_pause = len(stack.smtp.handler.received)
    time.sleep(1.5)
    assert len(stack.smtp.handler.received) == at_pause < PEOPLE
    with session_scope(stack.database_url) as session:
        assert service.progress(session, campaign_id).inflight == 0
        service.resume_campaign(session, campaign_id)
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished"}) == "finished"
    assert_everyone_once(stack)

    second = stack.create_campaign(people=0)  # same people, a second campaign
    stack.send(second)
    deadline = time.monotonic() + 60
    while len(stack.smtp.handler.received) < PEOPLE + 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with session_scope(stack.database_url) as session:
        service.cancel_campaign(session, second)
    time.sleep(2.0)
    with session_scope(stack.database_url) as session:
        progress = service.progress(session, second)
    assert progress.status == "cancelled"
    assert progress.queued == 0 and progress.inflight == 0
    assert progress.sent + progress.skipped == PEOPLE
    assert len(stack.smtp.handler.received) == PEOPLE + progress.sent
