"""The ``newsletter`` command as a user runs it: a real process, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import email
import email.message
import email.policy
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, ROOT

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [NEWSLETTER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory in which ``newsletter demo`` has run once."""
    cwd = tmp_path_factory.mktemp("demo")
    result = run(cwd, "demo", "--no-serve")
    assert result.returncode == 0, result.stderr
    return cwd


def test_demo_fills_the_outbox_once_per_subscriber(demo_dir: Path) -> None:
    with (EXAMPLES / "subscribers.csv").open(encoding="utf-8") as handle:
        expected = {row["email"].lower() for row in csv.DictReader(handle)}
    files = sorted((demo_dir / "var" / "outbox").glob("*.eml"))
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files
    ]
    sent_to = Counter(m["To"].addresses[0].addr_spec.lower() for m in messages)
    assert set(sent_to) == expected
    assert set(sent_to.values()) == {1}
    # The demo's own upcoming session, numbered after the newest sample (no. 61).
    assert all("第 62 期" in str(m["Subject"]) for m in messages)


def test_demo_again_mails_nobody_twice(demo_dir: Path) -> None:
    before = sorted(p.name for p in (demo_dir / "var" / "outbox").glob("*.eml"))
    result = run(demo_dir, "demo", "--no-serve")
    assert result.returncode == 0, result.stderr
    assert "nobody is mailed twice" in result.stdout
    after = sorted(p.name for p in (demo_dir / "var" / "outbox").glob("*.eml"))
    assert after == before


def test_status_after_the_demo_counts_every_delivery(demo_dir: Path) -> None:
    result = run(demo_dir, "campaign", "status", "1")
    assert result.returncode == 0
    assert "finished" in result.stdout and "20 sent" in result.stdout


def test_sessions_list_shows_the_examples(demo_dir: Path) -> None:
    result = run(demo_dir, "sessions", "list")
    assert result.returncode == 0, result.stderr
    assert "联邦学习的鲁棒性" in result.stdout and "59 sessions" in result.stdout  # 58 + demo


def test_preview_writes_html_and_eml(demo_dir: Path) -> None:
    html = run(demo_dir, "preview", "28", "--out", "p28.html")
    assert html.returncode == 0, html.stderr
    assert "贾鑫康" in (demo_dir / "p28.html").read_text(encoding="utf-8")
    eml = run(demo_dir, "preview", "61", "--to", "nobody@example.org", "--out", "p61.eml")
    assert eml.returncode == 0, eml.stderr
    message = email.message_from_bytes(
        (demo_dir / "p61.eml").read_bytes(),
        policy=email.policy.default,
    )
    assert message.get_content_type() == "multipart/alternative"


def test_preview_of_the_reminder(demo_dir: Path) -> None:
    result = run(demo_dir, "preview", "62", "--reminder", "--out", "r62.eml")
    assert result.returncode == 0, result.stderr
    message = email.message_from_bytes(
        (demo_dir / "r62.eml").read_bytes(), policy=email.policy.default
    )
    assert str(message["Subject"]).startswith("提醒：")
    assert isinstance(message, email.message.EmailMessage)
    text = message.get_body(("plain",))
    assert text is not None and "你已报名参加" in text.get_content()
    # Nobody in particular: the shape of a check-in code, not one a door would accept.
    assert "62-0-PREVIEW0" in text.get_content()
    invitation = run(demo_dir, "preview", "62", "--out", "i62.eml")
    assert invitation.returncode == 0, invitation.stderr
    invited = email.message_from_bytes(
        (demo_dir / "i62.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(invited, email.message.EmailMessage)
    invitation_text = invited.get_body(("plain",))
    assert invitation_text is not None and "沙龙回顾" in invitation_text.get_content()
    assert "沙龙回顾" not in text.get_content()  # the invitation's archive is not in it


def test_bad_record_exits_non_zero_with_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("number: 3\nseries: x\ntitle: y\n", encoding="utf-8")
    result = run(tmp_path, "sessions", "import", str(bad))
    assert result.returncode == 1
    assert "bad.yaml: starts_at: required field is missing" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("campaign", "status", "42"),
        ("campaign", "create", "999"),
        ("preview", "999"),
        ("sessions", "import", "missing-folder"),
    ],
)
def test_errors_are_one_clear_line_not_a_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run(tmp_path, *args)
    assert result.returncode != 0
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr + result.stdout


def command_paths() -> list[list[str]]:
    """Every command of the CLI, as the words a user types (groups and leaves alike)."""
    import typer

    from newsletter.cli import app

    def walk(command: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        # Typer 0.29 carries its own click; a group is whatever has sub-commands.
        if isinstance(getattr(command, "commands", None), dict):
            for name, sub in sorted(command.commands.items()):
                found += walk(sub, [*path, name])
        return found

    return walk(typer.main.get_command(app), [])


def test_every_command_has_help() -> None:
    """Walks the whole command tree, so a new command without help text fails here."""
    from typer.testing import CliRunner

    from newsletter.cli import app

    paths = command_paths()
    for expected in (["campaign", "followup"], ["rsvp", "checkin"], ["sessions", "import"]):
        assert expected in paths
    runner = CliRunner()
    for words in paths:
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (words, result.output)
        assert "Usage" in result.output, words
        if words:
            # The command says what it does (its docstring), not only its usage line.
            assert len(result.output.split("Usage", 1)[1].strip().splitlines()) > 2, words
    # And the installed console script answers too.
    script = run(ROOT, "--help")
    assert script.returncode == 0 and "Usage" in script.stdout


def test_demo_serves_the_rsvp_link_it_prints(tmp_path: Path, browser: Any) -> None:
    """The issue's "done": the demo prints a link; opening it in a browser and pressing the
    button records an answer that ``newsletter rsvp list`` shows."""
    import httpx

    from tests.servers import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}", COLUMNS="400")
    log = tmp_path / "demo.log"
    process = subprocess.Popen(
        [NEWSLETTER, "demo"],
        cwd=tmp_path,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        link = None
        while link is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            found = re.search(rf"(http://127\.0\.0\.1:{port}/rsvp/\S+)", log.read_text())
            served = "Serving the RSVP web app" in log.read_text()
            link = found.group(1) if found and served else None
            time.sleep(0.2)
        for _ in range(100):
            try:
                page = httpx.get(link, timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert page.status_code == 200
        assert "第 62 期" in page.text and "报名已截止" not in page.text
        tab = browser.new_page(viewport={"width": 375, "height": 800})
        try:
            tab.goto(link)
            tab.get_by_role("button", name="确认答复").click()
            tab.wait_for_load_state()
            assert tab.get_by_text("已记录你的答复").is_visible()
        finally:
            tab.close()
    finally:
        process.terminate()
        process.wait(15)
    listed = run(tmp_path, "rsvp", "list", "62")
    assert listed.returncode == 0, listed.stderr
    assert "张伟" in listed.stdout and "是 1（座位 1/30）" in listed.stdout


def test_preview_with_archive_rows_links_to_the_public_archive(demo_dir: Path) -> None:
    """NEWSLETTER_ARCHIVE_ROWS reaches the campaign's compiled mail (preview compiles it the
    way a campaign does): the latest 10 of no. 61's 57 earlier sessions, then a link."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_ARCHIVE_ROWS"] = "10"
    env["NEWSLETTER_BASE_URL"] = "https://salon.example.org"
    result = subprocess.run(
        [NEWSLETTER, "preview", "61", "--out", "rows10.html"],
        cwd=demo_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    html = (demo_dir / "rows10.html").read_text(encoding="utf-8")
    assert "更早的 47 期见" in html and 'href="https://salon.example.org/archive"' in html
    every = demo_dir / "p61-every.html"
    assert run(demo_dir, "preview", "61", "--out", every.name).returncode == 0
    every_html = every.read_text(encoding="utf-8")
    # One date cell (nowrap) per archive row: 47 rows fewer, and no link without the setting.
    assert every_html.count("nowrap>") - html.count("nowrap>") == 47
    assert "更早的" not in every_html
