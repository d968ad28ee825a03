"""``newsletter subscribers …``: exit codes, messages on the right stream, no tracebacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from newsletter.cli import subscribers_cmd
from tests.conftest import EXAMPLES, Configure

cli = typer.Typer()
cli.add_typer(subscribers_cmd.app, name="subscribers")


Run = Callable[..., Result]


@pytest.fixture
def run(configure: Configure, tmp_path: Path) -> Run:
    """Run ``newsletter subscribers ARGS`` on the embedded settings and a fresh database.

    The database URL is absolute: engines are cached per URL for the whole process, so the
    default relative ``sqlite:///var/newsletter.db`` would reach an earlier test's file.
    """
    configure(database_url=f"sqlite:///{tmp_path / 'var' / 'subscribers.db'}")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        result = runner.invoke(cli, ["subscribers", *args])
        # Failures are messages, never stack traces.
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    return invoke


def test_help_is_there_for_every_command(run: Run) -> None:
    for command in ([], ["import"], ["add"], ["remove"], ["list"]):
        result = run(*command, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_import_of_a_clean_file_exits_zero(run: Run) -> None:
    result = run("import", str(EXAMPLES / "subscribers.csv"))
    assert result.exit_code == 0, result.output
    assert "20 added, 0 updated, 0 unchanged, 0 kept unsubscribed" in result.stdout
    assert result.stderr == ""
    again = run("import", str(EXAMPLES / "subscribers.csv"))
    assert "0 added, 0 updated, 20 unchanged" in again.stdout


def test_import_with_bad_rows_reports_them_and_exits_one(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        'email,name\na@example.org,A\nfoo@,Foo\nb@example.org,"[b]B, Jr."\nb@example.org,B again\n',
        encoding="utf-8",
    )
    result = run("import", str(path))
    assert result.exit_code == 1
    assert (
        "line 3: 'foo@' is not a valid address: there must be something after the @-sign\n"
        in result.stderr
    )
    assert "line 5: duplicate of line 4 (b@example.org)\n" in result.stderr
    assert "2 rows refused" in result.stderr
    assert "the valid rows were stored (2 rows)" in result.stderr
    assert "2 added" in result.stdout
    listing = run("list")
    assert "[b]B," in listing.stdout  # markup in data is printed, not obeyed


@pytest.mark.parametrize(
    ("content", "words"),
    [("name\nFoo\n", "has no 'email' column"), (None, "no such file")],
)
def test_import_of_an_unusable_file_is_one_clean_error(
    run: Run, tmp_path: Path, content: str | None, words: str
) -> None:
    path = tmp_path / "broken.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run("import", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert words in result.stderr
    assert "broken.csv" in result.stderr


def test_add_remove_and_resubscribe(run: Run) -> None:
    added = run("add", "Zhang.Wei@Example.ORG", "--name", "张伟", "--tag", "zju;cv")
    assert added.exit_code == 0, added.output
    assert "added zhang.wei@example.org (张伟), tags: cv, zju" in added.stdout

    twice = run("add", "zhang.wei@example.org")
    assert twice.exit_code == 1
    assert "error: zhang.wei@example.org is already subscribed" in twice.stderr

    removed = run("remove", "ZHANG.WEI@example.org")
    assert removed.exit_code == 0
    assert "zhang.wei@example.org is unsubscribed" in removed.stdout
    again = run("remove", "zhang.wei@example.org")
    assert "was already unsubscribed" in again.stdout

    refused = run("add", "zhang.wei@example.org")
    assert refused.exit_code == 1
    assert "is unsubscribed" in refused.stderr
    assert "removed by organizer" in refused.stderr
    assert "--resubscribe" in refused.stderr

    back = run("add", "zhang.wei@example.org", "--resubscribe")
    assert back.exit_code == 0
    assert "re-subscribed zhang.wei@example.org" in back.stdout


def test_add_refuses_bad_values_cleanly(run: Run) -> None:
    bad_address = run("add", "foo@")
    assert bad_address.exit_code == 1
    assert "error: 'foo@' is not a valid address" in bad_address.stderr
    bad_locale = run("add", "foo@example.org", "--locale", "klingon")
    assert bad_locale.exit_code == 1
    assert "is not a locale" in bad_locale.stderr


def test_remove_of_an_unknown_address_exits_one(run: Run) -> None:
    result = run("remove", "nobody@example.org")
    assert result.exit_code == 1
    assert "nobody@example.org is not on the subscriber list" in result.stderr


def test_remove_purge_deletes_the_row(run: Run) -> None:
    run("add", "temp@example.org")
    result = run("remove", "temp@example.org", "--purge")
    assert result.exit_code == 0, result.output
    assert "temp@example.org deleted" in result.stdout
    assert "no subscribers match" in run("list").stdout


def test_list_filters_and_counts(run: Run) -> None:
    run("import", str(EXAMPLES / "subscribers.csv"))
    run("remove", "li.na@example.com")

    everyone = run("list", "--limit", "3")
    assert everyone.exit_code == 0, everyone.output
    assert "zhang.wei@example.org" in everyone.stdout
    assert "showing 1–3 of 20" in everyone.stdout
    assert "19 active · 1 unsubscribed · 0 bounced · 0 suppressed" in everyone.stdout

    gone = run("list", "--status", "unsubscribed")
    assert "li.na@example.com" in gone.stdout
    assert "zhang.wei@example.org" not in gone.stdout
    assert "showing 1–1 of 1 (status unsubscribed)" in gone.stdout

    tagged = run("list", "--tag", "ZJU", "--status", "active")
    assert "li.na@example.com" not in tagged.stdout
    assert "(status active, tag ZJU)" in tagged.stdout

    bad = run("list", "--status", "gone")
    assert bad.exit_code == 2  # a usage error, from the option parser
