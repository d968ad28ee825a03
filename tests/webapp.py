"""A live web app for tests: uvicorn on loopback over a migrated SQLite database holding one
upcoming session (no. 95, one seat) and three subscribers, and links made for them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.links import recipient_links
from newsletter.migrate import upgrade
from newsletter.rsvp.models import Rsvp
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from newsletter.web import create_app
from newsletter.web.server import server_options
from subscribers.models import Subscriber
from tests.conftest import ROOT, Configure
from tests.servers import free_port

RECORD = """\
number: 95
series: 机器学习开发者沙龙
theme: {theme} <script>x</script>
title: 容量为一的沙龙
starts_at: {starts}
ends_at: {ends}
venue: {{mode: offline, name: 蒙民伟楼348室}}
registration: {{capacity: {capacity}, deadline: {deadline}}}
talks: [{{kind: paper, speaker: 贾鑫康, title: 联邦学习背景下的MAML与域适应方法}}]
"""


class Live:
    """A running web app and what the tests need to make links for it."""

    def __init__(self, settings: Settings, base: str, session_id: int, people: list[int]) -> None:
        self.settings = settings
        self.client = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
        self.session_id = session_id
        self.people = people

    def links(self, person: int) -> tuple[str, str]:
        made = recipient_links(
            self.settings.base_url,
            self.settings.secret_keys,
            session_id=self.session_id,
            session_number=95,
            subscriber_id=self.people[person],
            campaign_id=1,
            unsubscribe_mailbox=None,
        )
        return made.rsvp_yes.removeprefix(self.settings.base_url), made.unsubscribe.removeprefix(
            self.settings.base_url
        )

    def rsvps(self) -> list[tuple[int, str, bool]]:
        with session_scope(self.settings.database_url) as db:
            rows = db.execute(select(Rsvp.subscriber_id, Rsvp.answer, Rsvp.waitlisted))
            return [(row[0], row[1], row[2]) for row in rows]


def write_record(
    tmp_path: Path, *, deadline_in: timedelta, capacity: int | None = 1, theme: str = "测试专题"
) -> Path:
    starts = utcnow() + timedelta(days=7)
    path = tmp_path / "095.yaml"
    path.write_text(
        RECORD.format(
            starts=starts.isoformat(),
            ends=(starts + timedelta(hours=2)).isoformat(),
            deadline=(utcnow() + deadline_in).isoformat(),
            capacity="null" if capacity is None else capacity,
            theme=theme,
        ),
        encoding="utf-8",
    )
    return path


def seed(
    settings: Settings, tmp_path: Path, *, people: int = 3, capacity: int | None = 1
) -> tuple[int, list[int]]:
    """Session no. 95 (``capacity`` seats, None for no limit) and ``people`` subscribers in
    the settings' database; the session's id and the subscribers' ids."""
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(
            db,
            [write_record(tmp_path, deadline_in=timedelta(days=6), capacity=capacity)],
            timezone="Asia/Shanghai",
        )
        subscribers = [
            Subscriber(email=f"w{i}@example.org", name=f"访客{i}", created_at=utcnow())
            for i in range(people)
        ]
        db.add_all(subscribers)
        db.flush()
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        return salon.id, [p.id for p in subscribers]


@contextmanager
def serve_live(
    settings: Settings, tmp_path: Path, *, people: int = 3, capacity: int | None = 1
) -> Iterator[Live]:
    """:func:`seed` the settings' database and serve the app on the port of
    ``settings.base_url`` (in a thread of this process)."""
    session_id, ids = seed(settings, tmp_path, people=people, capacity=capacity)
    port = urlsplit(settings.base_url).port
    server = live_server(settings, port or 80)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    built = Live(settings, settings.base_url, session_id, ids)
    try:
        yield built
    finally:
        built.client.close()
        server.should_exit = True
        thread.join(10)


@contextmanager
def newsletter_serve(settings: Settings, cwd: Path, *args: str) -> Iterator[Path]:
    """``newsletter serve`` in a subprocess, configured by this test's ``NEWSLETTER_*``
    variables, on the port of ``settings.base_url``; yields the file its stderr goes to."""
    port = urlsplit(settings.base_url).port
    log = cwd / "serve.log"
    command = [str(Path(sys.executable).parent / "newsletter"), "serve", "--port", str(port)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "newsletter serve did not start"
            try:
                if httpx.get(f"{settings.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield log
    finally:
        process.terminate()
        process.wait(30)


def live_server(settings: Settings, port: int) -> uvicorn.Server:
    """uvicorn as ``newsletter serve`` runs it (limits, timeouts, proxy trust), on loopback,
    leaving the test's logging alone."""
    options = server_options(settings) | {"log_config": None}
    return uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning", **options)
    )


@pytest.fixture
def live(configure: Configure, tmp_path: Path) -> Iterator[Live]:
    """The app on SQLite (the embedded default): one seat, three people."""
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}")
    with serve_live(settings, tmp_path) as built:
        yield built


def form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)
