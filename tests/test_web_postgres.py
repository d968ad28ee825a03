"""The RSVP pages on PostgreSQL, where confirmations reach the database through the asyncio
driver (one statement, or db.run_unit for seats): parallel requests for the last seats never
over-fill them, every answer is recorded, and each seat gets exactly one confirmation mail."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from newsletter.db import session_scope
from newsletter.metrics.repo import pending_notices
from newsletter.rsvp.models import RsvpEvent
from newsletter.sessions.service import import_records
from tests.conftest import Configure, _empty_tables
from tests.servers import free_port
from tests.webapp import Live, form_token, serve_live, write_record

PEOPLE, SEATS = 40, 5


@contextmanager
def serve_on_postgres(
    configure: Configure, postgres_url: str, tmp_path: Path, capacity: int | None
) -> Iterator[Live]:
    """The app on an emptied PostgreSQL database, PEOPLE subscribers, mails to a folder."""
    _empty_tables(postgres_url)
    settings = configure(
        database_url=postgres_url,
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"file://{tmp_path / 'outbox'}",
    )
    with serve_live(settings, tmp_path, people=PEOPLE, capacity=capacity) as built:
        yield built


@pytest.fixture
def live_postgres(configure: Configure, postgres_url: str, tmp_path: Path) -> Iterator[Live]:
    with serve_on_postgres(configure, postgres_url, tmp_path, SEATS) as built:
        yield built


def test_parallel_yes_for_the_last_seats_over_http(live_postgres: Live) -> None:
    live = live_postgres
    forms = []
    for person in range(PEOPLE):
        rsvp, _ = live.links(person)
        forms.append((rsvp, form_token(live.client.get(rsvp).text)))

    def press(form: tuple[str, str]) -> int:
        with httpx.Client(base_url=live.settings.base_url, timeout=30) as client:
            return client.post(form[0], data={"answer": "yes", "csrf": form[1]}).status_code

    with ThreadPoolExecutor(max_workers=PEOPLE) as pool:
        statuses = list(pool.map(press, forms))
    assert statuses == [200] * PEOPLE
    answers = live.rsvps()
    assert len(answers) == PEOPLE
    assert sum(1 for _, _, waitlisted in answers if not waitlisted) == SEATS
    with session_scope(live.settings.database_url) as db:
        events = db.scalar(select(func.count()).select_from(RsvpEvent))
    assert events == PEOPLE
    # One mail each, nothing pending: a confirmation per seat, a place in line per waiting one.
    assert mails_sent(live, PEOPLE) == PEOPLE
    outbox = Path(live.settings.mail_url.removeprefix("file://"))
    subjects = [
        str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"])
        for p in outbox.glob("*.eml")
    ]
    assert sum(s.startswith("你在候补名单") for s in subjects) == PEOPLE - SEATS


def mails_sent(live: Live, expected: int) -> int:
    """The mails in the outbox once the in-process worker has sent every due notice (it is
    handed them after the answers commit), waiting up to 30 s for it."""
    outbox = Path(live.settings.mail_url.removeprefix("file://"))
    deadline = time.monotonic() + 30
    while True:
        with session_scope(live.settings.database_url) as db:
            pending = pending_notices(db)
        sent = len(list(outbox.glob("*.eml")))
        if (pending == 0 and sent >= expected) or time.monotonic() > deadline:
            assert pending == 0
            return sent
        time.sleep(0.1)


@pytest.fixture
def live_unlimited(configure: Configure, postgres_url: str, tmp_path: Path) -> Iterator[Live]:
    with serve_on_postgres(configure, postgres_url, tmp_path, None) as built:
        yield built


def test_a_burst_without_a_seat_limit_records_every_answer_once(
    live_unlimited: Live, tmp_path: Path
) -> None:
    """The one-statement path: every answer, one history row and one mail each; pressing
    again records nothing more; the page follows a re-imported record."""
    live = live_unlimited
    forms = []
    for person in range(PEOPLE):
        rsvp, _ = live.links(person)
        forms.append((rsvp, form_token(live.client.get(rsvp).text)))

    def press(form: tuple[str, str]) -> httpx.Response:
        with httpx.Client(base_url=live.settings.base_url, timeout=30) as client:
            return client.post(form[0], data={"answer": "yes", "csrf": form[1]})

    with ThreadPoolExecutor(max_workers=PEOPLE) as pool:
        pages = list(pool.map(press, forms))
    assert [page.status_code for page in pages] == [200] * PEOPLE
    assert all("已记录你的答复：<strong>是，我会参加</strong>" in page.text for page in pages)
    assert sorted(live.rsvps()) == sorted((p, "yes", False) for p in live.people)
    again = press(forms[0])  # a double click
    assert again.status_code == 200 and "是，我会参加" in again.text
    with session_scope(live.settings.database_url) as db:
        events = db.scalar(select(func.count()).select_from(RsvpEvent))
    assert events == PEOPLE
    assert mails_sent(live, PEOPLE) == PEOPLE

    with session_scope(live.settings.database_url) as db:  # the organizer edits it
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(days=6), capacity=None, theme="新专题")],
            timezone="Asia/Shanghai",
        )
    changed = live.client.post(forms[1][0], data={"answer": "no", "csrf": forms[1][1]})
    assert changed.status_code == 200 and "新专题" in changed.text
    assert "已记录你的答复：<strong>不参加</strong>" in changed.text
