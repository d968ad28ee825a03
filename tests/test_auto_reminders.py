"""Automatic reminders: due once per session and offset (a controlled clock, and beat itself),
confirmed "yes" only, never for a cancelled or started session, late ones, two processes at
once, and the dashboard's list and cancel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter.campaigns import reminders
from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus, Delivery
from newsletter.config import Settings, get_settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import NotFoundError
from newsletter.migrate import upgrade
from newsletter.rsvp.models import Answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.sessions.service import import_records
from tasks import embedded
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_admin import log_in
from tests.test_reminders import answer, setup, write_record
from tests.webapp import Live, live
from tests.worker import wait_for_worker

__all__ = ["live"]  # the fixture

STARTS = datetime.fromisoformat("2099-12-05T04:30:00+00:00")


def reminder_rows(url: str) -> list[tuple[int, str | None, str, int]]:
    """(session number, occasion, status, recipients) of every reminder campaign."""
    with session_scope(url) as db:
        rows = db.execute(
            select(Campaign, SalonSession.number)
            .join(SalonSession, SalonSession.id == Campaign.session_id)
            .where(Campaign.kind == CampaignKind.reminder)
            .order_by(Campaign.id)
        )
        return [(n, c.occasion, c.status, c.recipient_count) for c, n in rows]


def recipients_of(url: str, number: int, occasion: str) -> set[int]:
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, number)
        assert salon is not None
        return set(
            db.scalars(
                select(Delivery.subscriber_id)
                .join(Campaign, Campaign.id == Delivery.campaign_id)
                .where(Campaign.session_id == salon.id, Campaign.occasion == occasion)
            )
        )


@pytest.fixture
def conf(configure: Configure) -> Settings:
    return configure(reminders="PT5H")


def test_each_offset_once_to_confirmed_yes_only(
    db_url: str, tmp_path: Path, conf: Settings
) -> None:
    folder = tmp_path / "records"
    people = setup(
        db_url,
        folder,
        write_record(folder, 96, reminders=["P1D", "PT2H"]),
        write_record(folder, 97, reminders=["P1D"]),  # cancelled below, after an answer
        write_record(folder, 98, reminders=[]),  # no reminders at all
        write_record(folder, 99),  # none in the record: NEWSLETTER_REMINDERS (PT5H)
        people=7,
    )
    yes, also_yes, waiting, maybe, no, other_yes, silent = people
    for person in (yes, also_yes):
        answer(db_url, 96, person, Answer.yes)
    with session_scope(db_url) as db:  # capacity 4: fill it so that the next yes waits
        salon = sessions_repo.get_by_number(db, 96)
        assert salon is not None
        salon.capacity = 2
    answer(db_url, 96, waiting, Answer.yes)
    answer(db_url, 96, maybe, Answer.maybe)
    answer(db_url, 96, no, Answer.no)
    for number in (97, 98, 99):
        answer(db_url, number, other_yes, Answer.yes)
    with session_scope(db_url) as db:
        import_records(
            db, [write_record(folder, 97, cancelled=True, reminders=["P1D"])], timezone="UTC"
        )

    assert reminders.make_due(db_url, conf, STARTS - timedelta(days=2)) == []
    first = reminders.make_due(db_url, conf, STARTS - timedelta(hours=23))
    assert len(first) == 1
    assert reminder_rows(db_url) == [(96, "P1D", CampaignStatus.draft, 2)]
    assert recipients_of(db_url, 96, "P1D") == {yes, also_yes}
    # Beat runs again and again: nothing more until the next offset's moment.
    for hours in (23, 22, 5.5):
        assert reminders.make_due(db_url, conf, STARTS - timedelta(hours=hours)) == []
    assert len(reminders.make_due(db_url, conf, STARTS - timedelta(hours=4.5))) == 1  # 99, PT5H
    assert len(reminders.make_due(db_url, conf, STARTS - timedelta(hours=1))) == 1  # 96, PT2H
    for minutes in (59, 1, -1, -600):  # until the start, and after it: nothing
        assert reminders.make_due(db_url, conf, STARTS - timedelta(minutes=minutes)) == []
    assert reminder_rows(db_url) == [
        (96, "P1D", CampaignStatus.draft, 2),
        (99, "PT5H", CampaignStatus.draft, 1),
        (96, "PT2H", CampaignStatus.draft, 2),
    ]
    assert recipients_of(db_url, 96, "PT2H") == {yes, also_yes}
    assert silent not in recipients_of(db_url, 99, "PT5H")


def test_a_late_reminder_is_sent_once_and_only_the_nearest(
    db_url: str, tmp_path: Path, conf: Settings
) -> None:
    folder = tmp_path / "records"
    (person,) = setup(
        db_url,
        folder,
        write_record(folder, 96, reminders=["P1D"]),
        write_record(folder, 97, reminders=["P1D", "PT3H"]),
        people=1,
    )
    answer(db_url, 96, person, Answer.yes)
    answer(db_url, 97, person, Answer.yes)
    # Imported (or beat back) one hour before the start: each moment has passed.
    late = STARTS - timedelta(hours=1)
    assert len(reminders.make_due(db_url, conf, late)) == 2
    assert reminders.make_due(db_url, conf, late + timedelta(minutes=1)) == []
    assert reminder_rows(db_url) == [
        (96, "P1D", CampaignStatus.draft, 1),
        (97, "P1D", CampaignStatus.cancelled, 0),  # skipped: PT3H was due too
        (97, "PT3H", CampaignStatus.draft, 1),
    ]
    with session_scope(db_url) as db:
        salon = sessions_repo.get_by_number(db, 97)
        assert salon is not None
        plan = {p.occasion: p for p in reminders.session_plan(db, salon, conf)}
    assert plan["P1D"].state == "cancelled"
    assert plan["P1D"].reason == "skipped: a later reminder (PT3H) was due at the same time"
    assert plan["PT3H"].state == "sent"


def test_nobody_confirmed_records_the_moment_and_sends_nothing(
    db_url: str, tmp_path: Path, conf: Settings
) -> None:
    folder = tmp_path / "records"
    (person,) = setup(db_url, folder, write_record(folder, 96, reminders=["P1D"]), people=1)
    answer(db_url, 96, person, Answer.maybe)
    assert reminders.make_due(db_url, conf, STARTS - timedelta(hours=2)) == []
    assert reminder_rows(db_url) == [(96, "P1D", CampaignStatus.finished, 0)]
    answer(db_url, 96, person, Answer.yes)  # a yes afterwards: the moment is gone
    assert reminders.make_due(db_url, conf, STARTS - timedelta(hours=1)) == []


def test_two_beats_at_once_make_each_reminder_once(
    db_url: str, tmp_path: Path, conf: Settings
) -> None:
    folder = tmp_path / "records"
    records = [write_record(folder, n, reminders=["P1D", "PT2H"]) for n in (96, 97, 98)]
    people = setup(db_url, folder, *records, people=3)
    for number in (96, 97, 98):
        for person in people:
            answer(db_url, number, person, Answer.yes)
    now = STARTS - timedelta(hours=20)
    workers = 4
    barrier = threading.Barrier(workers)
    started: list[list[int]] = []
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            barrier.wait()
            started.append(reminders.make_due(db_url, conf, now))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(c for run in started for c in run) == sorted(
        c for run in started for c in set(run)
    )
    assert sum(len(run) for run in started) == 3  # one P1D reminder per session, in all
    assert sorted(reminder_rows(db_url)) == [
        (n, "P1D", CampaignStatus.draft, 3) for n in (96, 97, 98)
    ]


def test_cancelled_before_its_moment_is_never_made(
    db_url: str, tmp_path: Path, conf: Settings
) -> None:
    folder = tmp_path / "records"
    (person,) = setup(db_url, folder, write_record(folder, 96, reminders=["P1D", "PT2H"]), people=1)
    answer(db_url, 96, person, Answer.yes)
    reminders.cancel(db_url, conf, 96, "PT2H")
    reminders.cancel(db_url, conf, 96, "PT2H")  # twice: harmless
    for hours in (23, 1):
        reminders.make_due(db_url, conf, STARTS - timedelta(hours=hours))
    assert reminder_rows(db_url) == [
        (96, "PT2H", CampaignStatus.cancelled, 0),
        (96, "P1D", CampaignStatus.draft, 1),
    ]
    with pytest.raises(NotFoundError, match="no reminder PT3H"):
        reminders.cancel(db_url, conf, 96, "PT3H")


# --- beat itself --------------------------------------------------------------------------------


@pytest.fixture
def smtp(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


def test_beat_sends_each_reminder_once(
    configure: Configure,
    smtp: SmtpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The embedded worker's beat (as `newsletter serve` runs it) with a session starting in
    a few seconds: the PT1H reminder (its moment passed) at once, PT2S two seconds before the
    start, each to the two confirmed people once, and nothing after the start."""
    settings = configure(mail_url=f"smtp://127.0.0.1:{smtp.port}", sweep_interval="0.2")
    url = settings.database_url
    upgrade(url)
    folder = tmp_path / "records"
    starts = utcnow() + timedelta(seconds=6)
    times: dict[str, Any] = {
        "starts_at": starts.isoformat(),
        "ends_at": (starts + timedelta(hours=2)).isoformat(),
        "reminders": ["PT1H", "PT2S"],
    }
    yes, also_yes, maybe = setup(url, folder, write_record(folder, 96, **times), people=3)
    for person, reply in ((yes, Answer.yes), (also_yes, Answer.yes), (maybe, Answer.maybe)):
        answer(url, 96, person, reply)
    caplog.set_level(logging.DEBUG, logger="tasks.reminders")
    embedded.start(beat=True)

    def beat_runs_after_start() -> int:
        return sum(
            1
            for r in caplog.records
            if r.name == "tasks.reminders" and r.created > starts.timestamp()
        )

    deadline = time.monotonic() + 60  # far beyond the 6 s it takes: only a hang reaches it
    while beat_runs_after_start() < 5:
        assert time.monotonic() < deadline, "beat did not run after the session started"
        time.sleep(0.1)
    embedded.stop()
    wait_for_worker()
    # The answers' own confirmation mails go out too (beat's notices): count the reminders.
    got = sorted(
        r.rcpt_tos[0] for r in smtp.handler.received if _subject(r.data).startswith("提醒：")
    )
    assert got == sorted(["p0@example.org", "p1@example.org"] * 2), got
    assert sorted(str(o) for _, o, _, _ in reminder_rows(url)) == ["PT1H", "PT2S"]
    assert {status for _, _, status, _ in reminder_rows(url)} == {CampaignStatus.finished}
    assert get_settings().sweep_interval == 0.2


def _subject(data: bytes) -> str:
    import email
    import email.policy

    return str(email.message_from_bytes(data, policy=email.policy.default)["Subject"])


# --- the dashboard ------------------------------------------------------------------------------


def test_dashboard_lists_and_cancels_a_reminder(live: Live) -> None:
    csrf = log_in(live)
    page = live.client.get("/admin/sessions/95")
    assert page.status_code == 200
    assert "自动提醒" in page.text and "P1D" in page.text and "待发送" in page.text
    action = "/admin/sessions/95/reminders/P1D/cancel"
    assert action in page.text
    assert live.client.post(action, data={"csrf": "forged"}).status_code == 403
    for bad in (
        "/admin/sessions/95/reminders/PT9H/cancel",
        "/admin/sessions/95/reminders/x/cancel",
        "/admin/sessions/96/reminders/P1D/cancel",
    ):
        assert live.client.post(bad, data={"csrf": csrf}).status_code in (400, 404), bad
    done = live.client.post(action, data={"csrf": csrf})
    assert done.status_code == 303 and done.headers["location"] == "/admin/sessions/95"
    after = live.client.get("/admin/sessions/95").text
    assert "已取消" in after and action not in after
    url = live.settings.database_url
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        starts = salon.starts_at
    # Beat at the moment, and later: the cancelled reminder is never made.
    for hours in (23, 1):
        assert reminders.make_due(url, live.settings, starts - timedelta(hours=hours)) == []
    assert reminder_rows(url) == [(95, "P1D", CampaignStatus.cancelled, 0)]
