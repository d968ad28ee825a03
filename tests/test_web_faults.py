"""The web app under faults, on a real PostgreSQL that the tests stop and start: 503 with
Retry-After (never a 500) while it is down, service again without a restart, no answer lost
or half-recorded during a burst; and no database call that holds up the event loop."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from newsletter.db import get_engine, session_scope
from newsletter.rsvp.models import Rsvp, RsvpEvent
from newsletter.web.links import form_token
from tests.conftest import Configure, _empty_tables, require
from tests.servers import Server, _as_postgres_user, free_port, postgres_bin, postgres_server
from tests.webapp import Live, newsletter_serve, seed, serve_live

ADMIN = {"Authorization": "Bearer test-admin-token"}
PEOPLE = 120


class Postgres:
    """A throwaway PostgreSQL that a test can stop (``-m fast``) and start again."""

    def __init__(self, server: Server) -> None:
        self.server = server
        bindir = postgres_bin()
        assert bindir is not None
        self._pg_ctl = str(bindir / "pg_ctl")
        self._data = str(server.directory / "data")

    def stop(self) -> None:
        subprocess.run(
            _as_postgres_user([self._pg_ctl, "-D", self._data, "-m", "fast", "-w", "stop"]),
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",  # the postgres user may not enter the test's directory
        )

    def start(self) -> None:
        options = (
            f"-p {self.server.port} -k {self.server.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres_user(
                [
                    self._pg_ctl,
                    "-D",
                    self._data,
                    "-o",
                    options,
                    "-w",
                    "-l",
                    str(self.server.directory / "log"),
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",  # the postgres user may not enter the test's directory
        )


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own (the shared one must keep running)."""
    with postgres_server() as server:
        yield Postgres(require(server, "PostgreSQL"))


@pytest.fixture
def live_on_own_postgres(
    configure: Configure, postgres: Postgres, tmp_path: Path
) -> Iterator[tuple[Live, Postgres]]:
    settings = configure(
        database_url=postgres.server.url,
        base_url=f"http://127.0.0.1:{_port()}",
        mail_url=f"file://{tmp_path / 'outbox'}",
    )
    with serve_live(settings, tmp_path, people=PEOPLE, capacity=None) as live:
        yield live, postgres


def _port() -> int:
    return free_port()


def _csrf(live: Live, person: int) -> str:
    return form_token({"s": live.session_id, "u": live.people[person]})


def test_a_database_outage_is_a_503_with_retry_after_then_service_resumes(
    live_on_own_postgres: tuple[Live, Postgres],
) -> None:
    live, postgres = live_on_own_postgres
    rsvp, unsubscribe = live.links(0)
    assert live.client.get(rsvp).status_code == 200
    postgres.stop()
    try:
        page = live.client.get(rsvp)
        answer = live.client.post(rsvp, data={"answer": "yes", "csrf": _csrf(live, 0)})
        api = live.client.get("/api/sessions", headers=ADMIN)
        one_click = live.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        ready = live.client.get("/readyz")
        alive = live.client.get("/healthz")
    finally:
        postgres.start()
    for response in (page, answer, one_click):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"].isdigit()
        assert "暂时无法服务" in response.text
    assert api.status_code == 503 and "unavailable" in api.json()["detail"]
    assert api.headers["retry-after"].isdigit()
    assert ready.status_code == 503 and ready.headers["retry-after"].isdigit()
    assert ready.json()["checks"]["database"].startswith("unavailable")
    assert alive.status_code == 200
    # The same process, no restart: new connections replace the ones the outage broke.
    assert live.client.get("/readyz").json() == {"ready": True, "checks": {"database": "ok"}}
    assert live.client.get(rsvp).status_code == 200
    done = live.client.post(rsvp, data={"answer": "yes", "csrf": _csrf(live, 0)})
    assert done.status_code == 200
    assert live.client.get("/api/sessions", headers=ADMIN).status_code == 200
    assert (live.people[0], "yes", False) in live.rsvps()


def test_drill_stopping_postgres_during_an_rsvp_burst_loses_no_answer(
    live_on_own_postgres: tuple[Live, Postgres],
) -> None:
    live, postgres = live_on_own_postgres
    forms = [(live.links(person)[0], _csrf(live, person)) for person in range(PEOPLE)]
    answers = ["yes", "no", "maybe"]
    outage_latencies: list[float] = []
    down = threading.Event()

    def press(person: int) -> tuple[int, int]:
        path, csrf = forms[person]
        with httpx.Client(base_url=live.settings.base_url, timeout=30) as client:
            started = time.monotonic()
            status = client.post(
                path, data={"answer": answers[person % 3], "csrf": csrf}
            ).status_code
            if status == 503 and down.is_set():
                outage_latencies.append(time.monotonic() - started)
            return person, status

    def outage() -> None:
        time.sleep(0.3)  # into the burst
        postgres.stop()
        down.set()
        time.sleep(2)
        postgres.start()
        down.clear()

    stopper = threading.Thread(target=outage)
    stopper.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = []
        for person in range(PEOPLE):
            results.append(pool.submit(press, person))
            time.sleep(0.03)  # a burst that outlasts the outage
        outcomes = [future.result() for future in results]
    stopper.join()
    statuses = [status for _, status in outcomes]
    print(
        f"\ndrill: {statuses.count(200)} recorded, {statuses.count(503)} × 503"
        + (
            f"; 503 took median {statistics.median(outage_latencies) * 1000:.0f} ms,"
            f" max {max(outage_latencies) * 1000:.0f} ms"
            if outage_latencies
            else ""
        )
    )
    assert all(200 <= s < 400 or s in (409, 503) for s in statuses), statuses
    assert 503 in statuses and 200 in statuses  # the outage fell inside the burst
    with session_scope(live.settings.database_url) as db:
        recorded = {row.subscriber_id: row.answer for row in db.scalars(select(Rsvp))}
        history = {(event.subscriber_id, event.answer) for event in db.scalars(select(RsvpEvent))}
    for person, status in outcomes:
        subscriber = live.people[person]
        if status == 200:  # confirmed to the person: in the database, with its history row
            assert recorded.get(subscriber) == answers[person % 3]
    for subscriber, answer in recorded.items():  # nothing half-recorded
        assert (subscriber, answer) in history
    # After the restart, with the same process: every one who got a 503 can answer now.
    for person, status in outcomes:
        if status == 503:
            path, csrf = forms[person]
            again = live.client.post(path, data={"answer": answers[person % 3], "csrf": csrf})
            assert again.status_code == 200


def test_a_locked_row_holds_up_only_its_own_request(
    configure: Configure, postgres_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    settings = configure(database_url=postgres_url, base_url=f"http://127.0.0.1:{_port()}")
    with serve_live(settings, tmp_path) as live:
        _, unsubscribe = live.links(0)
        engine = get_engine(postgres_url)
        outcome: dict[str, int] = {}

        def one_click() -> None:
            with httpx.Client(base_url=settings.base_url, timeout=60) as client:
                response = client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
                outcome["status"] = response.status_code

        with engine.connect() as locker:
            with locker.begin():
                locker.execute(
                    text("SELECT id FROM subscribers WHERE id = :id FOR UPDATE"),
                    {"id": live.people[0]},
                )
                clicking = threading.Thread(target=one_click)
                clicking.start()
                _wait_for_lock_wait(postgres_url)  # the POST now waits on our lock
                # Short client timeout: on a blocked event loop this raises instead.
                alive = httpx.get(f"{settings.base_url}/healthz", timeout=5)
                assert alive.status_code == 200
                assert clicking.is_alive() and "status" not in outcome  # still waiting
            clicking.join(30)
        assert outcome["status"] == 200


def _wait_for_lock_wait(url: str) -> None:
    """Return once a backend of the database waits for a row lock."""
    engine = get_engine(url)
    for _ in range(300):
        with engine.connect() as connection:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the unsubscribe request never waited for the lock")


def test_with_the_broker_down_answers_are_kept_and_readyz_names_the_broker(
    configure: Configure, tmp_path: Path
) -> None:
    dead_broker = f"redis://127.0.0.1:{_port()}/0"  # nothing listens there
    settings = configure(base_url=f"http://127.0.0.1:{_port()}", broker_url=dead_broker)
    session_id, people = seed(settings, tmp_path, people=2, capacity=None)
    with newsletter_serve(settings, tmp_path), httpx.Client(base_url=settings.base_url) as client:
        live = Live(settings, settings.base_url, session_id, people)
        rsvp, _ = live.links(0)
        answer = client.post(rsvp, data={"answer": "yes", "csrf": _csrf(live, 0)})
        ready = client.get("/readyz")
        created = client.post("/api/campaigns", json={"number": 95}, headers=ADMIN)
        sent = client.post(f"/api/campaigns/{created.json()['id']}/send", headers=ADMIN)
    # The answer is recorded and its confirmation mail waits in the outbox for the broker.
    assert answer.status_code == 200 and "是，我会参加" in answer.text
    with session_scope(settings.database_url) as db:
        events = list(db.scalars(select(RsvpEvent)))
    assert [(e.subscriber_id, e.answer) for e in events] == [(people[0], "yes")]
    assert events[0].notice is not None and events[0].notice_due_at is not None
    assert ready.status_code == 503 and ready.headers["retry-after"].isdigit()
    checks = ready.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("unavailable")
    # Not started, and said so: the campaign is kept, sending it again is harmless.
    campaign_id = created.json()["id"]
    assert sent.status_code == 503 and sent.headers["retry-after"].isdigit()
    assert f"campaign {campaign_id} is saved but not started" in sent.json()["detail"]
