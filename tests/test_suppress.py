"""Suppression lists: ``newsletter subscribers suppress FILE`` and ``list --status suppressed
--csv``; a suppressed address is never brought back by an import or a sign-up."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from newsletter.cli import subscribers_cmd
from newsletter.db import session_scope
from newsletter.migrate import upgrade
from subscribers import lists, repo, service
from subscribers.models import SubscriberStatus
from subscribers.signup import sign_up
from tests.conftest import Configure

cli = typer.Typer()
cli.add_typer(subscribers_cmd.app, name="subscribers")

LIST = """\
# bounced elsewhere, from the old provider
Ada@Example.org

active@example.org
  spaced@example.net\t
not-an-address
already@example.org
bounced@example.org
ada@example.org
foo@
"""


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["subscribers", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


@pytest.fixture
def url(configure: Configure, tmp_path: Path) -> str:
    settings = configure(database_url=f"sqlite:///{tmp_path / 'var' / 'suppress.db'}")
    upgrade(settings.database_url)
    return settings.database_url


def test_help(url: str) -> None:
    for command in (["suppress", "--help"], ["list", "--help"]):
        result = run(*command)
        assert result.exit_code == 0 and "Usage" in result.output
    assert "--csv" in run("list", "--help").output


def test_suppress_file_applies_good_lines_and_reports_bad_ones(url: str, tmp_path: Path) -> None:
    assert run("add", "active@example.org", "--name", "Act").exit_code == 0
    assert run("add", "already@example.org").exit_code == 0
    assert run("add", "bounced@example.org").exit_code == 0
    with session_scope(url) as db:
        service.suppress(db, email="already@example.org", reason="by hand")
        service.suppress(
            db, email="bounced@example.org", status=SubscriberStatus.bounced, reason="5.1.1"
        )
    path = tmp_path / "suppress.txt"
    path.write_text(LIST, encoding="utf-8")
    result = run("suppress", str(path))
    assert result.exit_code == 1  # a line was refused
    assert "2 added as suppressed, 1 suppressed, 3 already suppressed, 2 bad lines" in (
        result.stdout.replace("\n", " ")
    )
    assert "line 6:" in result.stderr and "line 10:" in result.stderr
    assert "line 2:" not in result.stderr  # the address of line 2 is fine
    with session_scope(url) as db:
        status = {
            address: repo.get_by_email(db, address)
            for address in (
                "ada@example.org",
                "spaced@example.net",
                "active@example.org",
                "already@example.org",
                "bounced@example.org",
            )
        }
        found = {k: v.status if v else None for k, v in status.items()}
    assert found == {
        "ada@example.org": "suppressed",
        "spaced@example.net": "suppressed",
        "active@example.org": "suppressed",
        "already@example.org": "suppressed",
        "bounced@example.org": "bounced",  # kept: the bounce says more
    }
    again = run("suppress", str(path))
    assert "0 added as suppressed, 0 suppressed, 6 already suppressed" in again.stdout.replace(
        "\n", " "
    )


def test_a_suppressed_address_is_not_brought_back(
    url: str, tmp_path: Path, configure: Configure
) -> None:
    path = tmp_path / "list.txt"
    path.write_text("new@example.org\n", encoding="utf-8")
    assert run("suppress", str(path)).exit_code == 0
    people = tmp_path / "people.csv"
    people.write_text("email,name\nnew@example.org,New\nother@example.org,O\n", encoding="utf-8")
    assert run("import", str(people)).exit_code == 0
    with session_scope(url) as db:
        person = repo.get_by_email(db, "new@example.org")
        assert person is not None and person.status == "suppressed"
        settings = configure()
        outcome = sign_up(db, settings, "NEW@example.org", "New", [])
        assert not outcome.queued
        person = repo.get_by_email(db, "new@example.org")
        assert person is not None and person.status == "suppressed"
        assert service.count_active(db) == 1  # only other@


def test_list_suppressed_as_csv_is_spreadsheet_safe(url: str, tmp_path: Path) -> None:
    assert run("add", "formula@example.org", "--name", '=HYPERLINK("x")').exit_code == 0
    assert run("add", "keep@example.org", "--name", "Keep").exit_code == 0
    path = tmp_path / "list.txt"
    path.write_text("formula@example.org\n+plus@example.org\n", encoding="utf-8")
    assert run("suppress", str(path)).exit_code == 0
    result = run("list", "--status", "suppressed", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == list(lists.CSV_COLUMNS)
    by_email = {row[0]: row for row in rows[1:]}
    assert set(by_email) == {"formula@example.org", "'+plus@example.org"}
    assert by_email["formula@example.org"][1] == '\'=HYPERLINK("x")'
    assert by_email["formula@example.org"][3] == "suppressed"
    assert all(row[4] == "suppression list list.txt" for row in rows[1:])
    everyone = list(csv.reader(io.StringIO(run("list", "--csv").stdout)))
    assert len(everyone) == 4  # the header and three people, keep@ active among them


def test_suppress_list_on_both_databases(db_url: str) -> None:
    with session_scope(db_url) as db:
        report = lists.suppress_list(
            db, ["a@example.org", "# x", "", "bad", "a@example.org"], reason="list"
        )
    assert (report.added, report.suppressed, report.already) == (1, 0, 1)
    assert [number for number, _ in report.errors] == [4]
    with session_scope(db_url) as db:
        rows = "".join(lists.subscribers_csv(db, status="suppressed"))
    assert "a@example.org" in rows


def test_unreadable_file_is_a_clean_error(url: str, tmp_path: Path) -> None:
    result = run("suppress", str(tmp_path / "missing.txt"))
    assert result.exit_code == 1 and "missing.txt" in result.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00a")
    result = run("suppress", str(binary))
    assert result.exit_code == 1 and "not UTF-8" in result.stderr
