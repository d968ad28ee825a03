"""The demo's upcoming session. Every sample record is from the past, and a past session
takes no answers, so the demo writes one session that is still ahead: the richest sample
(no. 28: a room, two talks, a registration) moved to next week, with seats and a deadline,
numbered after the newest sample and marked as demo data in its theme."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

TEMPLATE_RECORD = "028.yaml"
SEATS = 30
DEMO_THEME = "演示场次（示例数据，用来试用报名页面）"


def upcoming_demo_record(samples: Path, folder: Path, *, number: int, now: datetime) -> Path:
    """The path of the demo session's record in ``folder``, written if missing or past.

    Kept as it is while it is still more than a day ahead, so running the demo again changes
    nothing; otherwise it starts at 19:30 (the session's zone) a week from ``now``, with 30
    seats, one guest each, and answers closing the evening before.
    """
    path = folder / f"demo-{number:03d}.yaml"
    if path.exists():
        kept = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(kept, dict) and _aware(kept.get("starts_at")) > now + timedelta(days=1):
            return path
    record: dict[str, Any] = yaml.safe_load((samples / TEMPLATE_RECORD).read_text(encoding="utf-8"))
    zone = ZoneInfo(str(record.get("timezone") or "Asia/Shanghai"))
    day = (now + timedelta(days=7)).astimezone(zone).date()
    starts = datetime(day.year, day.month, day.day, 19, 30, tzinfo=zone)
    record.update(
        number=number,
        theme=DEMO_THEME,
        starts_at=starts.isoformat(),
        ends_at=(starts + timedelta(hours=2)).isoformat(),
        registration={
            "capacity": SEATS,
            "plus_ones": 1,
            "deadline": (
                starts - timedelta(hours=21, minutes=30)
            ).isoformat(),  # 22:00 the day before
        },
    )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(record, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _aware(value: object) -> datetime:
    """A start time read back from YAML (a datetime or an ISO string); the epoch if neither."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return datetime.fromtimestamp(0).astimezone()
