"""``newsletter subscribers import``: single opt-in by default, ``--confirm`` for double opt-in
(new people pending, one confirmation mail each through a real relay), and erased addresses
skipped and reported by line, whatever the flag (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from newsletter.cli import subscribers_cmd
from newsletter.config import Settings
from newsletter.db import session_scope
from subscribers.csv_import import import_csv
from subscribers.erased import record_erasure
from subscribers.models import SubscriberStatus
from subscribers.signup import Confirmed
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_signup import add_person, confirm_path, kinds_of, messages, person, press

cli = typer.Typer()
cli.add_typer(subscribers_cmd.app, name="subscribers")

CSV = """email,name,tags
ada@example.org,Ada,nlp
bob@example.org,Bob,
erased@example.org,Erased Person,
known@example.org,Known,
pending@example.org,Pending,
"""


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["subscribers", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def prepared(db_url: str, configure: Configure, relay: SmtpServer, tmp_path: Path) -> Path:
    settings = configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    add_person(db_url, "known@example.org", SubscriberStatus.active)
    add_person(db_url, "pending@example.org", SubscriberStatus.pending)
    with session_scope(db_url) as db:
        record_erasure(db, "erased@example.org", settings.secret_keys)
    path = tmp_path / "people.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_import_with_confirm_adds_pending_people_and_mails_each_one_confirmation(
    db_url: str, configure: Configure, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    relay = start_smtp()
    path = prepared(db_url, configure, relay, tmp_path)
    result = run("import", str(path), "--confirm")
    assert result.exit_code == 0, result.output
    assert "2 added, 1 updated, 0 unchanged, 0 kept unsubscribed, 1 erased skipped" in (
        result.stdout
    )
    assert "skipped (line 4)" in result.stdout
    assert "2 new addresses added as pending" in result.stdout
    assert "erased@example.org" not in result.output  # lines, never the address
    for address in ("ada@example.org", "bob@example.org"):
        added = person(db_url, address)
        assert added is not None
        assert (added.status, added.source) == ("pending", "import")
        assert len(messages(relay, address)) == 1  # sent before the command ended
    assert person(db_url, "erased@example.org") is None
    assert person(db_url, "known@example.org").status == "active"  # type: ignore[union-attr]
    assert messages(relay, "known@example.org") == []
    assert messages(relay, "pending@example.org") == []  # kept as it is
    assert len(relay.handler.received) == 2
    ada = person(db_url, "ada@example.org")
    assert ada is not None and [t.name for t in ada.tags] == ["nlp"]
    settings = Settings(database_url=db_url, secret_key="test-secret-key")
    assert press(settings, confirm_path(messages(relay, "ada@example.org")[0])) is (
        Confirmed.confirmed
    )
    assert person(db_url, "ada@example.org").status == "active"  # type: ignore[union-attr]


def test_import_without_confirm_is_single_opt_in_and_still_skips_erased_addresses(
    db_url: str, configure: Configure, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    relay = start_smtp()
    path = prepared(db_url, configure, relay, tmp_path)
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    assert "1 erased skipped" in result.stdout
    assert "signed up and have not confirmed yet" in result.stdout
    ada = person(db_url, "ada@example.org")
    assert ada is not None and ada.status == "active"
    assert kinds_of(db_url, ada.id) == []
    assert person(db_url, "erased@example.org") is None
    assert person(db_url, "pending@example.org").status == "pending"  # type: ignore[union-attr]
    assert relay.handler.received == []


def test_erased_addresses_are_found_under_an_older_secret_key(
    db_url: str, configure: Configure, tmp_path: Path
) -> None:
    """After a key rotation the erasure made under the old key still holds."""
    with session_scope(db_url) as db:
        record_erasure(db, "erased@example.org", ["old-key"])
    path = tmp_path / "people.csv"
    path.write_text("email,name\nErased@Example.org,X\nnew@example.org,Y\n", encoding="utf-8")
    with session_scope(db_url) as db:
        report = import_csv(db, path, keys=["new-key", "old-key"])
    assert (report.added, report.erased_lines) == (1, [2])
    assert person(db_url, "erased@example.org") is None


def test_the_confirm_flag_is_in_the_help(configure: Configure) -> None:
    configure()
    result = run("import", "--help")
    assert result.exit_code == 0 and "--confirm" in result.stdout
    assert "single" in result.stdout
