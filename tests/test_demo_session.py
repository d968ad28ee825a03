"""The demo's upcoming session: ahead of now, valid, kept while ahead, moved once past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.cli.demo_session import upcoming_demo_record
from newsletter.sessions.records import load_record
from tests.conftest import EXAMPLES

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


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
