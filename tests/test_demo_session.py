"""The demo's upcoming session (ahead of now, valid, kept while ahead, moved once past, its
talks moved with it), and what the demo tells a newcomer about the organizer dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from newsletter.cli.demo_session import upcoming_demo_record
from newsletter.sessions.records import load_record
from tests.conftest import EXAMPLES

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


def run_demo(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``newsletter demo --no-serve`` in ``cwd`` with only the given NEWSLETTER_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({f"NEWSLETTER_{name.upper()}": value for name, value in settings.items()})
    env["COLUMNS"] = "400"
    return subprocess.run(
        [NEWSLETTER, "demo", "--no-serve"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_demo_session_is_ahead_with_seats_and_kept_while_ahead(tmp_path: Path) -> None:
    path = upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=NOW)
    record = load_record(path)
    assert record.number == 62 and "演示" in (record.theme or "")
    assert NOW + timedelta(days=6) < record.starts_at < NOW + timedelta(days=8)
    assert record.registration is not None and record.registration.capacity == 30
    deadline = record.registration.deadline
    assert deadline is not None and NOW < deadline < record.starts_at
    written = path.read_text(encoding="utf-8")
    again = upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=NOW)
    assert again == path and path.read_text(encoding="utf-8") == written
    later = NOW + timedelta(days=30)
    moved = load_record(upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=later))
    assert moved.starts_at > later


def test_the_talks_move_with_the_session(tmp_path: Path) -> None:
    sample = load_record(EXAMPLES / "sessions" / "028.yaml")
    record = load_record(upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=NOW))
    offset = record.starts_at - sample.starts_at
    assert record.ends_at is not None and sample.ends_at is not None
    assert record.ends_at - sample.ends_at == offset  # as long as the sample
    assert len(record.talks) == len(sample.talks) == 2
    for talk, original in zip(record.talks, sample.talks, strict=True):
        assert talk.starts_at is not None and talk.ends_at is not None
        assert original.starts_at is not None and original.ends_at is not None
        assert talk.starts_at - original.starts_at == offset
        assert talk.ends_at - original.ends_at == offset
        assert record.starts_at <= talk.starts_at < talk.ends_at <= record.ends_at


def test_a_kept_record_with_talks_outside_the_session_is_written_anew(tmp_path: Path) -> None:
    # What an older demo wrote: the session next week, its talks still at the sample's times.
    path = upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=NOW)
    stale = yaml.safe_load(path.read_text(encoding="utf-8"))
    stale["talks"][0]["starts_at"] = "2019-12-05T12:30:00+08:00"
    path.write_text(yaml.safe_dump(stale, allow_unicode=True), encoding="utf-8")
    again = load_record(upcoming_demo_record(EXAMPLES / "sessions", tmp_path, number=62, now=NOW))
    assert again.talks[0].starts_at is not None
    assert again.starts_at <= again.talks[0].starts_at <= again.starts_at + timedelta(hours=2)


def test_the_demo_points_at_the_dashboard_and_its_token(tmp_path: Path) -> None:
    base_url = "http://127.0.0.1:8765"
    result = run_demo(tmp_path, base_url=base_url)
    assert result.returncode == 0, result.stderr
    # The token exists before anyone tried to sign in, and the demo says where it is.
    token_file = tmp_path / "var" / "admin.token"
    token = token_file.read_text(encoding="utf-8").strip()
    assert token
    assert f"{base_url}/admin" in result.stdout
    assert str(token_file.resolve()) in result.stdout
    assert token not in result.stdout + result.stderr

    # Configured: the demo names the variable, never its value, and writes no token file.
    configured = tmp_path / "configured"
    configured.mkdir()
    secret = "a-configured-admin-token-3f9c"
    again = run_demo(configured, base_url=base_url, admin_token=secret)
    assert again.returncode == 0, again.stderr
    assert "NEWSLETTER_ADMIN_TOKEN" in again.stdout and f"{base_url}/admin" in again.stdout
    assert secret not in again.stdout + again.stderr
    assert not (configured / "var" / "admin.token").exists()
