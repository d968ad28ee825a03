"""The demo's upcoming session. Every sample record is from the past, and a past session
takes no answers, so the demo writes one session that is still ahead: the richest sample
(no. 28: a room, two talks, a registration) moved to next week, its talks moved with it, with
seats and a deadline, numbered after the newest sample and marked as demo data in its theme."""

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

    Kept as it is while it is still more than a day ahead (and its talks lie within it), so
    running the demo again changes nothing; otherwise it starts at 19:30 (the session's zone) a
    week from ``now``, lasting as long as the sample, every talk moved by the same amount, with
    30 seats, one guest each, and answers closing the evening before.
    """
    path = folder / f"demo-{number:03d}.yaml"
    if path.exists():
        kept = yaml.safe_load(path.read_text(encoding="utf-8"))
        if (
            isinstance(kept, dict)
            and _aware(kept.get("starts_at")) > now + timedelta(days=1)
            and _talks_within(kept)
        ):
            return path
    record: dict[str, Any] = yaml.safe_load((samples / TEMPLATE_RECORD).read_text(encoding="utf-8"))
    zone = ZoneInfo(str(record.get("timezone") or "Asia/Shanghai"))
    day = (now + timedelta(days=7)).astimezone(zone).date()
    starts = datetime(day.year, day.month, day.day, 19, 30, tzinfo=zone)
    offset = starts - _aware(record["starts_at"])
    for talk in record.get("talks") or []:
        for key in ("starts_at", "ends_at"):
            if talk.get(key) is not None:
                talk[key] = _moved(talk[key], offset, zone)
    record.update(
        number=number,
        theme=DEMO_THEME,
        starts_at=starts.isoformat(),
        ends_at=_moved(record["ends_at"], offset, zone),
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


def _moved(value: object, offset: timedelta, zone: ZoneInfo) -> str:
    """A time of the sample record moved by ``offset``, written in the session's zone."""
    return (_aware(value) + offset).astimezone(zone).isoformat()


def _talks_within(record: dict[str, Any]) -> bool:
    """Whether every talk of a written record starts and ends inside its session (a record
    written by an older demo kept the sample's talk times, which the importer refuses)."""
    starts, ends = _aware(record.get("starts_at")), _aware(record.get("ends_at"))
    for talk in record.get("talks") or []:
        times = (
            [talk.get(key) for key in ("starts_at", "ends_at")] if isinstance(talk, dict) else []
        )
        if any(t is not None and not starts <= _aware(t) <= ends for t in times):
            return False
    return True


def _aware(value: object) -> datetime:
    """A start time read back from YAML (a datetime or an ISO string); the epoch if neither."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return datetime.fromtimestamp(0).astimezone()
