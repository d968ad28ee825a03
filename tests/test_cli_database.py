"""The command as a user runs it when the database or the mail URL is wrong: one line naming
what is wrong (without its password), a non-zero exit, no traceback, and no waiting forever.
Read-only commands never migrate.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from newsletter.migrate import current_revision, head_revision, upgrade
from tests.conftest import EXAMPLES
from tests.servers import free_port

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
READ_ONLY = [
    ("sessions", "list"),
    ("subscribers", "list"),
    ("campaign", "status", "1"),
    ("campaign", "list"),
    ("rsvp", "list", "61"),
    ("preview", "61"),
    ("db", "status"),
]


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``newsletter ARGS`` in ``cwd`` with only the given NEWSLETTER_* settings.

    The timeout is a guard, not a measurement: a command that hangs fails the test.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environment.update({f"NEWSLETTER_{name.upper()}": value for name, value in env.items()})
    environment["COLUMNS"] = "200"
    return subprocess.run(
        [NEWSLETTER, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line on stderr (the command exited non-zero, no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def campaign_dir(tmp_path: Path) -> Path:
    """A directory with session 61, one subscriber and a draft campaign 1 (embedded SQLite)."""
    for args in (
        ("sessions", "import", str(EXAMPLES / "sessions" / "061.yaml")),
        ("subscribers", "add", "reader@example.org", "--name", "读者"),
        ("campaign", "create", "61", "--past"),
    ):
        result = run(tmp_path, *args)
        assert result.returncode == 0, result.stderr
    return tmp_path


@pytest.mark.parametrize(
    "password", ["SECRET/x", "SECRET#x", "SECRET?x", "SECRET@x/y", "SECRET/é#?@%"]
)
def test_send_wait_with_a_malformed_mail_url_fails_in_one_line(
    campaign_dir: Path, password: str
) -> None:
    # Before: the error quoted the whole URL, and `--wait` then waited forever for rows
    # that the dead sending thread had claimed.
    url = f"smtp://mailer:{password}@mail.example.org:587?starttls=true"
    result = run(campaign_dir, "campaign", "send", "1", "--wait", mail_url=url)
    line = one_error_line(result)
    assert "SECRET" not in result.stdout + result.stderr
    assert "mail.example.org" in line and "percent-encoded" in line
    # Nothing was claimed or changed: the campaign is still a draft with its one recipient.
    status = run(campaign_dir, "campaign", "status", "1")
    assert status.returncode == 0, status.stderr
    assert "draft" in status.stdout and "1 queued" in status.stdout


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_commands_on_a_new_directory_say_how_to_upgrade(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    line = one_error_line(run(tmp_path, *args))
    assert "no database at sqlite:///var/newsletter.db" in line
    assert "newsletter db upgrade" in line
    assert not (tmp_path / "var" / "newsletter.db").exists()  # not created by a read


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_commands_do_not_migrate_a_database_that_is_behind(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    line = one_error_line(run(tmp_path, *args, database_url=url))
    assert f"is at schema revision 0003, behind this version's {head_revision()}" in line
    assert "run `newsletter db upgrade`" in line
    assert current_revision(url) == "0003"


def test_an_empty_database_is_reported_as_such(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()
    line = one_error_line(run(tmp_path, "campaign", "list", database_url=url))
    assert "has no tables yet: run `newsletter db upgrade`" in line


def test_writing_commands_still_upgrade_first_and_db_status_then_agrees(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    imported = run(
        tmp_path, "sessions", "import", str(EXAMPLES / "sessions" / "061.yaml"), database_url=url
    )
    assert imported.returncode == 0, imported.stderr
    assert current_revision(url) == head_revision()
    status = run(tmp_path, "db", "status", database_url=url)
    assert status.returncode == 0 and head_revision() in status.stdout


@pytest.mark.parametrize(
    "args", [*READ_ONLY, ("sessions", "import", "."), ("db", "upgrade"), ("campaign", "send", "1")]
)
def test_an_unreachable_database_is_one_line_naming_the_host_not_the_password(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    port = free_port()  # nothing listens there: every connection is refused
    url = f"postgresql+psycopg://app:SECRET/é@127.0.0.1:{port}/newsletter"
    line = one_error_line(run(tmp_path, *args, database_url=url))
    assert (
        f"cannot use the database at postgresql+psycopg://***@127.0.0.1:{port}/newsletter" in line
    )
    assert "SECRET" not in line


@pytest.mark.parametrize("args", [("campaign", "list"), ("sessions", "import", str(EXAMPLES))])
def test_a_database_from_a_newer_version_is_one_line_for_reads_and_writes(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "newer.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    line = one_error_line(run(tmp_path, *args, database_url=url))
    assert "0099" in line and "newer version" in line
