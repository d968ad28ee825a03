"""``newsletter subscribers export|erase`` and ``POST /api/subscribers/export|erase``: the
same export and erasure, clean errors, the question before erasing, the admin token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner, Result

from newsletter.cli import subscribers_cmd
from newsletter.db import session_scope
from newsletter.links import preferences_link
from newsletter.migrate import upgrade
from subscribers import service
from subscribers.models import Subscriber, SubscriberStatus
from tests.conftest import Configure
from tests.webapp import Live, live

__all__ = ["live"]  # the fixture

cli = typer.Typer()
cli.add_typer(subscribers_cmd.app, name="subscribers")
ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def url(configure: Configure, tmp_path: Path) -> str:
    database = f"sqlite:///{tmp_path / 'var' / 'gdpr.db'}"
    configure(database_url=database)
    upgrade(database)
    with session_scope(database) as db:
        service.add_subscriber(db, "ann@example.org", name="安妮", tags=["读书会"])
    return database


def run(*args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(cli, ["subscribers", *args], input=stdin)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def _status(url: str, email: str) -> str | None:
    with session_scope(url) as db:
        return db.scalar(select(Subscriber.status).where(Subscriber.email == email))


def test_help_is_there(url: str) -> None:
    for command in ("export", "erase"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_export_prints_the_json(url: str) -> None:
    result = run("export", "Ann@Example.org")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["subscriber"]["email"] == "ann@example.org" and data["tags"] == ["读书会"]


def test_erase_asks_first_and_erases_on_yes(url: str) -> None:
    refused = run("erase", "ann@example.org", stdin="n\n")
    assert refused.exit_code == 1 and "nothing was erased" in refused.stderr
    assert _status(url, "ann@example.org") == SubscriberStatus.active
    done = run("erase", "ann@example.org", stdin="y\n")
    assert done.exit_code == 0, done.output
    assert "no personal data is held any more" in done.stdout
    assert _status(url, "ann@example.org") is None
    again = run("export", "ann@example.org")  # the address is no longer held
    assert again.exit_code == 1 and "not on the subscriber list" in again.stderr


def test_erase_with_yes_does_not_ask(url: str) -> None:
    done = run("erase", "--yes", "ann@example.org")
    assert done.exit_code == 0 and "Erase" not in done.output
    with session_scope(url) as db:
        person = db.scalars(select(Subscriber)).one()
        assert person.status == SubscriberStatus.erased and person.name == ""


@pytest.mark.parametrize("command", ["export", "erase"])
def test_unknown_and_invalid_addresses_are_one_line_errors(url: str, command: str) -> None:
    for address, said in (
        ("bob@example.org", "not on the subscriber list"),
        ("not-an-address", ""),
    ):
        result = run(command, "--yes", address) if command == "erase" else run(command, address)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith("error:") and said in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2


def test_api_export_and_erase_need_the_token(live: Live) -> None:
    body = {"email": "W0@example.org"}
    for path in ("/api/subscribers/export", "/api/subscribers/erase"):
        assert live.client.post(path, json=body).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert live.client.post(path, json=body, headers=wrong).status_code == 401
    assert live.client.get("/api/subscribers/export", headers=ADMIN).status_code == 405
    exported = live.client.post("/api/subscribers/export", json=body, headers=ADMIN)
    assert exported.status_code == 200
    assert exported.json()["subscriber"]["email"] == "w0@example.org"
    erased = live.client.post("/api/subscribers/erase", json=body, headers=ADMIN)
    assert erased.status_code == 200
    assert erased.json() == {"subscriber_id": live.people[0], "answers_given_up": 0}
    for path in ("/api/subscribers/export", "/api/subscribers/erase"):
        gone = live.client.post(path, json=body, headers=ADMIN)
        assert gone.status_code == 404 and "not on the subscriber list" in gone.json()["detail"]
        bad = live.client.post(path, json={"email": "x"}, headers=ADMIN)
        assert bad.status_code == 422
    with session_scope(live.settings.database_url) as db:
        person = db.get(Subscriber, live.people[0])
        assert person is not None and person.status == SubscriberStatus.erased
    # The preference link in their old mails now opens a clear "no longer exists" page.
    link = preferences_link(
        live.settings.base_url, live.settings.secret_keys, subscriber_id=person.id
    )
    page = live.client.get(link.removeprefix(live.settings.base_url))
    assert page.status_code == 404 and "已不存在" in page.text


def test_the_routes_are_in_the_openapi_document(live: Live) -> None:
    paths = live.client.get("/openapi.json").json()["paths"]
    for path in ("/api/subscribers/export", "/api/subscribers/erase"):
        assert set(paths[path]) == {"post"}
        assert "requestBody" in paths[path]["post"]
