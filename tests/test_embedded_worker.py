"""The embedded worker (no broker): ``enqueue`` hands over and returns, the API and the
dashboard answer before anything is sent, beat's entries run by themselves, a failing task
does not stop the next, a database outage is retried as with a broker, the web app's
shutdown ends the worker, and ``newsletter campaign send`` on a laptop still sends it all.

Real parts: aiosmtpd relays (tests/smtp.py), SQLite, the live web app of tests/webapp.py.
A relay whose first RCPT waits for the test to let it through shows what happens while a
message is on its way; nothing here measures time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Campaign
from newsletter.db import session_scope, utcnow
from tasks import embedded
from tasks.campaigns import start_campaign, sweep
from tasks.dispatch import enqueue
from tasks.rsvp import send_rsvp_notices
from tests.conftest import ROOT, Configure
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_admin import log_in
from tests.webapp import Live, seed, serve_live
from tests.worker import wait_for_worker

StartSmtp = Callable[..., SmtpServer]
ADMIN = {"Authorization": "Bearer test-admin-token"}
NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
# Guards against a hang, never measurements.
GUARD_S = 60.0


class Gate:
    """Holds the relay's first RCPT until :meth:`open`: a message is then on its way."""

    def __init__(self, relay: SmtpServer) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()
        relay.handler.rcpt_policy = self._policy

    def _policy(self, _address: str) -> str | None:
        self.reached.set()
        self.opened.wait(GUARD_S)
        return None

    def open(self) -> None:
        self.opened.set()


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (work that beat starts, or another process does) within the guard."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def received(relay: SmtpServer) -> Counter[str]:
    return Counter(rcpt for message in relay.handler.received for rcpt in message.rcpt_tos)


def status(database_url: str, campaign_id: int) -> campaigns.CampaignProgress:
    with session_scope(database_url) as db:
        return campaigns.progress(db, campaign_id)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "embedded-worker" and t.is_alive()]


def everyone(people: int) -> Counter[str]:
    """Each of seed()'s ``people`` once."""
    return Counter(f"w{i}@example.org" for i in range(people))


@pytest.fixture
def relayed(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> Iterator[tuple[Live, SmtpServer]]:
    """The live app on SQLite (three people, no seat limit), mailing through an aiosmtpd
    relay; beat's entries every 0.2 s."""
    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        sweep_interval="0.2",
    )
    with serve_live(settings, tmp_path, people=3, capacity=None) as live:
        yield live, relay


# --- hand-over: nothing is sent in the caller's thread -------------------------------------


def test_enqueue_returns_while_the_first_message_is_still_on_its_way(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}")
    seed(settings, tmp_path, people=3, capacity=None)
    with session_scope(settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    gate = Gate(relay)
    enqueue(start_campaign, campaign_id)  # before: sent the whole campaign, here
    assert not gate.opened.is_set() and received(relay) == Counter()
    assert gate.reached.wait(GUARD_S)  # the worker is on it, in its own thread
    assert status(settings.database_url, campaign_id).status == "sending"
    gate.open()
    wait_for_worker()
    assert status(settings.database_url, campaign_id).status == "finished"
    assert received(relay) == everyone(3)


def test_an_api_send_answers_before_the_campaign_is_sent(relayed: tuple[Live, SmtpServer]) -> None:
    live, relay = relayed
    created = live.client.post("/api/campaigns", json={"number": 95}, headers=ADMIN).json()
    gate = Gate(relay)
    sent = live.client.post(f"/api/campaigns/{created['id']}/send", headers=ADMIN)
    assert sent.status_code == 200
    assert sent.json()["status"] in ("draft", "sending") and sent.json()["sent"] == 0
    assert received(relay) == Counter()
    assert gate.reached.wait(GUARD_S)
    shown = live.client.get(f"/api/campaigns/{created['id']}", headers=ADMIN).json()
    assert (shown["status"], shown["sent"]) == ("sending", 0)  # answers while the worker sends
    gate.open()
    wait_for_worker()
    shown = live.client.get(f"/api/campaigns/{created['id']}", headers=ADMIN).json()
    assert (shown["status"], shown["sent"]) == ("finished", 3)
    assert received(relay) == everyone(3)


def test_the_dashboard_send_button_answers_before_the_campaign_is_sent(
    relayed: tuple[Live, SmtpServer],
) -> None:
    live, relay = relayed
    with session_scope(live.settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    csrf = log_in(live)
    gate = Gate(relay)
    pressed = live.client.post(f"/admin/campaigns/{campaign_id}/send", data={"csrf": csrf})
    assert pressed.status_code == 303
    assert pressed.headers["location"] == f"/admin/campaigns/{campaign_id}"
    assert received(relay) == Counter()
    assert gate.reached.wait(GUARD_S)
    assert live.client.get(pressed.headers["location"]).status_code == 200
    gate.open()
    wait_for_worker()
    assert status(live.settings.database_url, campaign_id).status == "finished"
    assert received(relay) == everyone(3)


# --- the worker itself ------------------------------------------------------------------------


def test_a_task_that_raises_is_one_log_line_and_the_next_task_runs(
    configure: Configure,
    tmp_path: Path,
    start_smtp: StartSmtp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = start_smtp()
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}")
    seed(settings, tmp_path, people=3, capacity=None)
    with session_scope(settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    with caplog.at_level(logging.INFO, logger="tasks"):
        enqueue(start_campaign, 4040)  # no such campaign: the task raises NotFoundError
        enqueue(start_campaign, campaign_id)
        wait_for_worker()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is None
    line = failures[0].getMessage()
    assert "\n" not in line and "campaigns.start(4040) failed: NotFoundError" in line
    assert status(settings.database_url, campaign_id).status == "finished"
    assert sum(received(relay).values()) == 3
    assert worker_threads()  # still there for the next task


def test_a_database_outage_is_retried_on_the_worker_as_with_a_broker(
    configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens there: every connection is refused, as during a PostgreSQL restart.
    configure(database_url=f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/gone")
    with caplog.at_level(logging.WARNING, logger="tasks"):
        enqueue(send_rsvp_notices)  # before: the OperationalError came out of enqueue

        def retried_twice() -> bool:
            said = [r.getMessage() for r in caplog.records]
            return sum("the database is unreachable" in m for m in said) >= 2

        until(retried_twice, "the task ran again after the outage")
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert all(m.startswith("rsvp.notices(): the database is unreachable") for m in said)
    assert all("trying again in 2 s" in m for m in said)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not embedded.wait_until_idle(timeout=0)  # the retry is queued: it keeps at it


# --- beat, in a web process without a broker -------------------------------------------------


# (A notice nobody asked a sender for is sent by the embedded beat: test_notice_outbox's
# test_without_a_broker_the_web_process_sends_due_notices_itself.)


def test_the_embedded_beat_sweep_starts_a_scheduled_campaign(
    relayed: tuple[Live, SmtpServer],
) -> None:
    live, relay = relayed
    url = live.settings.database_url
    with session_scope(url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
        campaigns.schedule_campaign(db, campaign_id, utcnow() + timedelta(hours=1))
    sweep.apply()  # not due yet: nothing starts
    assert status(url, campaign_id).status == "scheduled"
    with session_scope(url) as db:
        db.get_one(Campaign, campaign_id).scheduled_at = utcnow() - timedelta(seconds=1)
    # Nobody calls the sweep now: the web process's beat runs it (every 0.2 s here).
    until(lambda: status(url, campaign_id).status == "finished", "beat's sweep started it")
    assert received(relay) == everyone(3)


def test_the_web_app_shutdown_stops_the_worker_thread(configure: Configure, tmp_path: Path) -> None:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", sweep_interval="0.2")
    with serve_live(settings, tmp_path, people=1) as live:
        assert len(worker_threads()) == 1  # the lifespan started it, before any hand-over
        created = live.client.post("/api/campaigns", json={"number": 95}, headers=ADMIN)
        assert live.client.post(f"/api/campaigns/{created.json()['id']}/send", headers=ADMIN)
        wait_for_worker()
    assert worker_threads() == []


# --- `newsletter campaign send` on a laptop: the command waits for its worker ---------------


def cli(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``newsletter ARGS`` in a subprocess with this test's NEWSLETTER_* settings."""
    return subprocess.Popen(
        [NEWSLETTER, *args],
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=GUARD_S)
    assert "Traceback" not in out + err, err
    return process.returncode, out, err


@pytest.mark.parametrize("wait", [[], ["--wait"]])
def test_campaign_send_on_a_laptop_mails_every_subscriber_once(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp, wait: list[str]
) -> None:
    relay = start_smtp()
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", batch_size="7")
    seed(settings, tmp_path, people=20, capacity=None)
    code, out, err = finish(cli(tmp_path, "campaign", "create", "95"))
    assert code == 0, err
    code, out, err = finish(cli(tmp_path, "campaign", "send", out.strip(), *wait))
    assert code == 0, err
    assert "finished; 20 sent, 0 failed, 0 skipped, 0 queued, 0 in flight of 20" in out
    assert received(relay) == everyone(20)


def test_ctrl_c_pauses_the_campaign_and_resume_mails_the_rest_once(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    # Five messages a second for 40 people: the batch is still sending when it sees the pause.
    settings = configure(mail_url=f"smtp://127.0.0.1:{relay.port}", rate_limit="5")
    seed(settings, tmp_path, people=40, capacity=None)
    with session_scope(settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    gate = Gate(relay)
    sending = cli(tmp_path, "campaign", "send", str(campaign_id), "--wait")
    assert gate.reached.wait(GUARD_S)
    sending.send_signal(signal.SIGINT)
    try:
        until(lambda: status(settings.database_url, campaign_id).status == "paused", "paused")
    except AssertionError:
        sending.kill()
        raise AssertionError(f"not paused; the command said: {sending.communicate()}") from None
    gate.open()
    code, _, err = finish(sending)
    assert code == 130 and f"campaign {campaign_id} paused" in err
    halted = status(settings.database_url, campaign_id)
    assert halted.status_reason == "interrupted (Ctrl-C) while sending"
    assert (halted.inflight, halted.queued > 0) == (0, True), halted  # rows given back
    assert sum(received(relay).values()) == halted.sent
    code, out, err = finish(cli(tmp_path, "campaign", "resume", str(campaign_id)))
    assert code == 0, err
    assert "finished; 40 sent" in out
    assert received(relay) == everyone(40)


def test_the_api_of_a_served_app_is_answered_while_the_worker_sends(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    """The same through ``newsletter serve`` (a process of its own, embedded mode)."""
    from tests.webapp import newsletter_serve

    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", mail_url=f"smtp://127.0.0.1:{relay.port}"
    )
    seed(settings, tmp_path, people=3, capacity=None)
    gate = Gate(relay)
    with newsletter_serve(settings, tmp_path), httpx.Client(base_url=settings.base_url) as api:
        created = api.post("/api/campaigns", json={"number": 95}, headers=ADMIN).json()
        sent = api.post(f"/api/campaigns/{created['id']}/send", headers=ADMIN)
        assert sent.status_code == 200 and sent.json()["sent"] == 0
        assert gate.reached.wait(GUARD_S)
        gate.open()

        def done() -> bool:
            shown = api.get(f"/api/campaigns/{created['id']}", headers=ADMIN).json()
            return bool(shown["status"] == "finished")

        until(done, "the served app's worker finished the campaign")
    with session_scope(settings.database_url) as db:
        assert db.scalar(select(Campaign.status)) == "finished"
    assert received(relay) == everyone(3)


def test_two_served_processes_without_a_broker_mail_everyone_once(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    """``newsletter serve --workers 2`` with no broker: each process has its own embedded
    worker and beat; the campaign started through one of them is mailed once to everyone,
    whichever worker takes which batch (the claims on the rows decide, not the process)."""
    from tests.webapp import newsletter_serve

    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        batch_size="5",
    )
    seed(settings, tmp_path, people=40, capacity=None)
    with (
        newsletter_serve(settings, tmp_path, "--workers", "2"),
        httpx.Client(base_url=settings.base_url) as api,
    ):
        created = api.post("/api/campaigns", json={"number": 95}, headers=ADMIN).json()
        assert api.post(f"/api/campaigns/{created['id']}/send", headers=ADMIN).status_code == 200

        def done() -> bool:
            shown = api.get(f"/api/campaigns/{created['id']}", headers=ADMIN).json()
            return bool(shown["status"] == "finished")

        until(done, "the served processes finished the campaign")
    assert received(relay) == everyone(40)
