"""Shared fixtures: a migrated database on SQLite and on a real PostgreSQL, settings, transports.

Data-layer tests take the ``db_url`` fixture, which runs every such test twice: on SQLite and
on PostgreSQL. Locally a missing PostgreSQL skips; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from newsletter import config as config_module
from newsletter.config import Settings
from newsletter.db import Base, get_engine, get_sessionmaker
from newsletter.migrate import upgrade
from tests.browser import browser
from tests.servers import Server, postgres_server, redis_server
from tests.smtp import start_smtp

# Fixtures shared by every test module. The browser is defined here once: a session fixture
# imported into two test modules would be two fixtures, and a second Playwright instance
# cannot start inside the first one's event loop.
__all__ = ["browser", "start_smtp"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(server: Server | None, what: str) -> Server:
    """Skip locally, fail in CI, when a real server cannot be started."""
    if server is None:
        if IN_CI:
            pytest.fail(f"{what} is required in CI but could not be started")
        pytest.skip(f"{what} is not installed")
    return server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for the whole test run."""
    url = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL")
    if url:
        upgrade(url)
        yield url
        return
    with postgres_server() as server:
        running = require(server, "PostgreSQL")
        upgrade(running.url)
        yield running.url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server for the whole test run."""
    with redis_server() as server:
        yield require(server, "Redis").url


def _empty_tables(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as connection:
        # The installation id (one row, made by migration 0004) outlives the data, as it does
        # in a real database: Message-IDs need it.
        names = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name != "installation")
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def no_schema(url: str) -> None:
    """Leave the database at ``url`` with no tables at all, for a test that builds an older
    schema and upgrades it (the suite's PostgreSQL is shared and at head: a fresh schema;
    SQLite: a new file, after the engine lets go of the old one)."""
    if url.startswith("postgresql"):
        with get_engine(url).begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        get_engine(url).dispose()
    else:
        get_engine(url).dispose()
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        return url
    url = str(request.getfixturevalue("postgres_url"))
    _empty_tables(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database, for tests that do not concern the database engine."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Session]:
    """An ORM session on ``db_url``; the test commits what it wants kept."""
    db = get_sessionmaker(db_url)()
    try:
        yield db
    finally:
        db.rollback()
        db.close()


class Configure:
    """Set NEWSLETTER_* variables for one test and reload the process settings from them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def __call__(self, **values: str) -> Settings:
        for name, value in values.items():
            self._monkeypatch.setenv(f"NEWSLETTER_{name.upper()}", value)
        config_module.get_settings.cache_clear()
        return config_module.get_settings()


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Embedded-default settings rooted in a temp dir (the working directory of the test)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)
    setter = Configure(monkeypatch)
    setter(
        secret_key="test-secret-key",
        admin_token="test-admin-token",
        from_address="Mo 人工智能俱乐部 <salon@example.org>",
        base_url="https://salon.example.org",
    )
    yield setter
    config_module.get_settings.cache_clear()


@pytest.fixture
def settings(configure: Configure) -> Settings:
    """The embedded defaults (SQLite and outbox under ./var of a temp dir), as process settings."""
    return configure()


@pytest.fixture(autouse=True)
def _embedded_worker_per_test() -> Iterator[None]:
    """Tasks run under the settings of the test that handed them over: the embedded worker a
    test started stops after it (what it still had queued is dropped, as at a process exit),
    and the notice senders it asked for are forgotten with them."""
    yield
    from tasks import embedded, rsvp

    embedded.stop()
    rsvp._last_kick.clear()


@pytest.fixture(autouse=True)
def _fresh_login_throttle() -> Iterator[None]:
    """Each test starts with no wrong admin tokens counted (the count lives in the process)."""
    from newsletter.web.login_throttle import throttle

    throttle.clear()
    yield
    throttle.clear()
