"""Drills: real PostgreSQL, real Redis, a real aiosmtpd relay and real worker processes.

Each drill sends one campaign through ``newsletter worker`` processes and checks, from what
the relay received, that every subscriber got the invitation exactly once — except messages
in flight at a crash, which may arrive again, always with the same Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.campaigns import service
from newsletter.campaigns.models import Campaign, Delivery, DeliveryStatus
from newsletter.config import Settings
from newsletter.db import get_engine, session_scope, utcnow
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber, SubscriberStatus
from tasks.celery_app import make_celery
from tests.conftest import EXAMPLES, _empty_tables
from tests.servers import (
    Server,
    free_port,
    postgres_bin,
    postgres_server,
    redis_server,
    start_redis,
)
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
            # Dead workers are found by their heartbeat (3 × 0.5 s), not by this timeout.
            NEWSLETTER_INFLIGHT_TIMEOUT="600",
            NEWSLETTER_HEARTBEAT_INTERVAL="0.5",
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
        with session_scope(self.database_url) as db:
            import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
            db.add_all(
                Subscriber(email=f"p{i:04d}@example.org", name=f"订阅者{i}", created_at=utcnow())
                for i in range(people)
            )
        with session_scope(self.database_url) as db:
            return service.create_campaign(db, 61, past=True).id

    def send(self, campaign_id: int) -> None:
        """What ``newsletter campaign send`` does with a broker: enqueue the start task."""
        app = make_celery(self.settings)
        app.send_task("campaigns.start", args=[campaign_id])

    def wait_for_received(self, count: int, timeout: float = 60) -> None:
        """Until the relay has accepted ``count`` messages (a fault is injected after that)."""
        deadline = time.monotonic() + timeout
        while len(self.smtp.handler.received) < count:
            assert time.monotonic() < deadline, f"stuck below {count} accepted"
            time.sleep(0.01)

    def wait_until(self, campaign_id: int, statuses: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.database_url) as db:
                status = db.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
            assert status is not None
            if status in statuses:
                return status
            if time.monotonic() > deadline:
                with session_scope(self.database_url) as db:
                    progress = service.progress(db, campaign_id)
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


def assert_counts_are_the_rows(stack: Stack) -> None:
    """Every campaign's counts, kept on its row, equal a count of its delivery rows by
    status: read in one statement (one snapshot), so it holds even while workers write."""
    counted = {
        status: select(func.count())
        .where(Delivery.campaign_id == Campaign.id, Delivery.status == status)
        .scalar_subquery()
        for status in DeliveryStatus
    }
    kept = [getattr(Campaign, f"{status.value}_count") for status in DeliveryStatus]
    with session_scope(stack.database_url) as db:
        rows = db.execute(select(Campaign.id, *kept, *counted.values())).all()
    assert rows
    half = len(DeliveryStatus)
    for row in rows:
        assert tuple(row[1 : 1 + half]) == tuple(row[1 + half :]), f"campaign {row[0]}: {row}"


def assert_everyone_once(stack: Stack, *, people: int = PEOPLE, in_flight: int = 0) -> None:
    assert_counts_are_the_rows(stack)
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
    stack.wait_for_received(50)
    stack.kill(first)
    killed_at = len(stack.smtp.handler.received)
    assert killed_at < PEOPLE, "the first worker finished before the kill; make PEOPLE larger"
    stack.start_worker(beat=True)
    assert stack.wait_until(campaign_id, {"finished"}) == "finished"
    # At most one batch (20) was in flight in the killed worker.
    assert_everyone_once(stack, in_flight=20)
    with session_scope(stack.database_url) as db:
        reclaimed = db.scalar(select(Delivery.id).where(Delivery.maybe_sent).limit(1))
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
            stack.wait_for_received(40)
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


def test_relay_answering_421_for_a_while_waits_then_delivers_everyone(stack: Stack) -> None:
    stack.smtp.handler.refuse_first = 6  # "421 4.7.0 Try again later" to six DATA commands
    stack.start_worker(beat=True)
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"waiting", "paused"}, timeout=60) == "waiting"
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "finished"
    assert_everyone_once(stack)
    with session_scope(stack.database_url) as db:
        attempts = set(db.scalars(select(Delivery.attempts)))
    assert attempts == {1}  # a 421 is about the relay: no message used an attempt on it


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
    with session_scope(stack.database_url) as db:
        failed = db.execute(
            select(Subscriber.email, Subscriber.status, Delivery.last_error)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.status == DeliveryStatus.failed)
        ).all()
    assert {row.email for row in failed} == refused
    assert all(row.status == SubscriberStatus.bounced for row in failed)
    assert all("5.1.1" in (row.last_error or "") for row in failed)
    assert_counts_are_the_rows(stack)


def test_error_budget_exceeded_pauses_the_campaign_with_the_reason(stack: Stack) -> None:
    stack.smtp.handler.refuse_rcpt = {
        f"p{i:04d}@example.org": "550 5.7.1 Message rejected as spam" for i in range(0, PEOPLE, 3)
    }
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "paused"
    with session_scope(stack.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert progress.status_reason and "error budget" in progress.status_reason
    assert "5.7.1" in progress.status_reason
    assert progress.queued > 0  # the rest of the list was not burned
    assert_counts_are_the_rows(stack)


def test_pause_resume_and_cancel_mid_flight(stack: Stack) -> None:
    stack.start_worker()
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    stack.wait_for_received(30)
    with session_scope(stack.database_url) as db:
        service.pause_campaign(db, campaign_id)
    # Within one batch (20 here, reports every 100 messages) nothing more leaves.
    time.sleep(2.0)
    at_pause = len(stack.smtp.handler.received)
    time.sleep(1.5)
    assert len(stack.smtp.handler.received) == at_pause < PEOPLE
    with session_scope(stack.database_url) as db:
        assert service.progress(db, campaign_id).inflight == 0
        service.resume_campaign(db, campaign_id)
    stack.send(campaign_id)
    assert stack.wait_until(campaign_id, {"finished"}) == "finished"
    assert_everyone_once(stack)

    second = stack.create_campaign(people=0)  # same people, a second campaign
    stack.send(second)
    stack.wait_for_received(PEOPLE + 20)
    with session_scope(stack.database_url) as db:
        service.cancel_campaign(db, second)
    time.sleep(2.0)
    with session_scope(stack.database_url) as db:
        progress = service.progress(db, second)
    assert progress.status == "cancelled"
    assert progress.queued == 0 and progress.inflight == 0
    assert progress.sent + progress.skipped == PEOPLE
    assert len(stack.smtp.handler.received) == PEOPLE + progress.sent
    assert_counts_are_the_rows(stack)


# --- faults: kills during retry waits, a PostgreSQL restart, a relay outage ----------------

GREYLIST_PEOPLE = 600
GREYLIST_TABLE = "1,1,2,2"  # five answered attempts at most


def test_kill_9_during_retry_waits_with_a_greylisting_relay(stack: Stack) -> None:
    """Every 20th address is always deferred (451); 15 % of the other RCPTs are deferred at
    random. Two workers are killed with -9 while rows are claimed and waiting out their
    back-off. Everyone ends mailed (one Message-ID) or failed after all five answered
    attempts; no accepted message is failed; a claim or a kill costs no attempt."""
    always = {f"p{i:04d}@example.org" for i in range(7, GREYLIST_PEOPLE, 20)}
    chance = random.Random(20261201)

    def greylist(address: str) -> str | None:
        if address in always or chance.random() < 0.15:
            return "451 4.7.1 Greylisted, please try again later"
        return None

    stack.smtp.handler.rcpt_policy = greylist
    stack.env.update(NEWSLETTER_RETRY_BACKOFF=GREYLIST_TABLE, NEWSLETTER_ERROR_BUDGET="0.5")
    started = time.monotonic()
    workers = [stack.start_worker(beat=True), stack.start_worker()]
    campaign_id = stack.create_campaign(people=GREYLIST_PEOPLE)
    stack.send(campaign_id)
    kills = 0
    for threshold in (150, 350):
        stack.wait_for_received(threshold)
        victim = workers.pop(0)  # the oldest: the beat worker first, then the other
        stack.kill(victim)
        kills += 1
        workers.append(stack.start_worker(beat=kills == 1))  # beat lives on
    assert stack.wait_until(campaign_id, {"finished", "paused"}, timeout=120) == "finished"
    elapsed = time.monotonic() - started

    got = stack.received()
    refusals = stack.smtp.handler.rcpt_refusals
    limit = len(GREYLIST_TABLE.split(",")) + 1
    with session_scope(stack.database_url) as db:
        rows = db.execute(
            select(Subscriber.email, Delivery.status, Delivery.attempts, Delivery.maybe_sent).join(
                Delivery, Delivery.subscriber_id == Subscriber.id
            )
        ).all()
    by_status: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_status[row.status].append(row.email)
        if row.status == DeliveryStatus.sent:
            assert len(set(got[row.email])) == 1, "a sent message missing or with two IDs"
        elif row.status == DeliveryStatus.failed:
            assert row.email not in got, "a message the relay accepted was marked failed"
            assert row.attempts == limit, f"failed after {row.attempts} attempts, not {limit}"
            assert refusals[row.email] >= limit  # each counted attempt was a real 451
        else:
            assert row.status == DeliveryStatus.unconfirmed and row.maybe_sent, row
    assert set(by_status) <= {"sent", "failed", "unconfirmed"}
    assert set(by_status["failed"]) | set(by_status["unconfirmed"]) >= always - set(got)
    assert len(by_status["failed"]) >= len(always) // 2  # the drill did exercise give-ups
    assert_counts_are_the_rows(stack)
    print(
        f"\ngreylisting drill: N={GREYLIST_PEOPLE}, kills={kills}, "
        f"451 answers={sum(refusals.values())}, sent={len(by_status['sent'])}, "
        f"failed={len(by_status['failed'])} (all after {limit} attempts), "
        f"unconfirmed={len(by_status['unconfirmed'])}, "
        f"copies={sum(len(ids) for ids in got.values())}, wall={elapsed:.1f}s"
    )


def _pg_ctl(server: Server, action: str) -> None:
    """Stop or start the drill's own PostgreSQL (same data directory, port and options)."""
    bindir = postgres_bin()
    assert bindir is not None and server.directory is not None
    data = server.directory / "data"
    argv = [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(server.directory / "log")]
    if action == "stop":
        argv += ["-m", "fast", "stop"]
    else:
        options = (
            f"-p {server.port} -k {server.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        argv += ["-o", options, "start"]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def test_postgresql_restart_mid_campaign_no_traceback_everyone_once(
    redis_url: str, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with postgres_server() as server:
        if server is None:
            pytest.skip("PostgreSQL is not installed")
        upgrade(server.url)
        stack = Stack(server.url, redis_url, start_smtp(), tmp_path)
        try:
            started = time.monotonic()
            stack.start_worker(beat=True)
            stack.start_worker()
            campaign_id = stack.create_campaign(people=400)
            stack.send(campaign_id)
            stack.wait_for_received(100)
            _pg_ctl(server, "stop")
            at_stop = len(stack.smtp.handler.received)
            time.sleep(4.0)  # workers meet the outage: failed reports, heartbeats, sweeps
            _pg_ctl(server, "start")
            assert stack.wait_until(campaign_id, {"finished", "paused"}) == "finished"
            elapsed = time.monotonic() - started
            assert_everyone_once(stack, people=400, in_flight=40)
            logs = [(tmp_path / f"worker{n}.log").read_text(errors="replace") for n in range(2)]
            assert at_stop < 400, "finished before the restart; make the campaign larger"
            assert all("Traceback" not in text for text in logs), logs
            assert any("the database is unreachable" in text for text in logs)
            print(
                f"\nPostgreSQL restart drill: N=400, down 4 s after {at_stop} accepted, "
                f"copies={sum(len(ids) for ids in stack.received().values())}, "
                f"wall={elapsed:.1f}s"
            )
        finally:
            stack.stop_all()
            get_engine(server.url).dispose()


def test_relay_down_for_a_while_waits_then_finishes_by_itself(stack: Stack) -> None:
    started = time.monotonic()
    stack.start_worker(beat=True)
    campaign_id = stack.create_campaign()
    stack.send(campaign_id)
    stack.wait_for_received(60)
    stack.smtp.stop()
    assert stack.wait_until(campaign_id, {"waiting", "paused"}, timeout=60) == "waiting"
    with session_scope(stack.database_url) as db:
        progress = service.progress(db, campaign_id)
    assert progress.status_reason and progress.status_reason.startswith("waiting for the relay")
    assert "next try at" in progress.status_reason
    shown = subprocess.run(
        [NEWSLETTER, "campaign", "status", str(campaign_id)],
        env=stack.env,
        cwd=stack.tmp,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "waiting" in shown.stdout and "next try at" in shown.stdout, shown
    time.sleep(3.0)  # a few probes find it down
    stack.smtp.restart()
    assert stack.wait_until(campaign_id, {"finished", "paused"}) == "finished"  # no resume
    assert_everyone_once(stack, in_flight=20)
    with session_scope(stack.database_url) as db:
        attempts = set(db.scalars(select(Delivery.attempts)))
    assert attempts == {1}  # the outage cost no message an attempt
    print(f"\nrelay outage drill: N={PEOPLE}, down ~3 s, wall={time.monotonic() - started:.1f}s")


def test_a_task_meeting_a_dead_database_says_so_in_one_line_and_runs_again(
    redis_url: str, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    stack = Stack(nowhere, redis_url, start_smtp(), tmp_path)
    try:
        stack.start_worker()
        make_celery(stack.settings).send_task("campaigns.batch", args=[1])
        log = tmp_path / "worker0.log"
        deadline = time.monotonic() + 60
        line = "campaigns.batch(1): the database is unreachable"
        while log.read_text(errors="replace").count(line) < 2:  # it ran again by itself
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text
        assert "trying again in 2 s" in text
    finally:
        stack.stop_all()
