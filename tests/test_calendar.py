"""The .ics: stable UID, SEQUENCE from the revision, PUBLISH or CANCEL, the venue or stream."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from icalendar import Calendar
from sqlalchemy.orm import Session

from newsletter.calendar import session_calendar
from newsletter.sessions import repo
from newsletter.sessions.service import import_records
from tests.conftest import EXAMPLES

STAMP = datetime(2026, 11, 23, tzinfo=UTC)


def ics(db: Session, number: int) -> Calendar:
    salon = repo.get_by_number(db, number)
    assert salon is not None
    data = session_calendar(
        salon,
        repo.record_of(salon),
        mail_domain="example.org",
        organizer_name="Mo 人工智能俱乐部",
        organizer_address="salon@example.org",
        page_url=f"https://salon.example.org/sessions/{number}",
        stamp=STAMP,
    )
    return Calendar.from_ical(data)


def test_offline_session_publishes_the_room_with_a_stable_uid(db: Session) -> None:
    import_records(db, [EXAMPLES / "sessions" / "028.yaml"], timezone="Asia/Shanghai")
    calendar = ics(db, 28)
    assert calendar["METHOD"] == "PUBLISH"
    (event,) = calendar.walk("VEVENT")
    assert event["UID"] == "salon-28@example.org"
    assert event["SEQUENCE"] == 0
    assert "蒙民伟楼348室" in str(event["LOCATION"])
    assert event.decoded("DTSTART") == datetime.fromisoformat("2019-12-05T12:30:00+08:00")
    assert "贾鑫康" in str(event["DESCRIPTION"])


def test_online_session_uses_the_stream_and_a_change_bumps_sequence(
    db: Session, tmp_path: Path
) -> None:
    text = (EXAMPLES / "sessions" / "061.yaml").read_text(encoding="utf-8")
    path = tmp_path / "061.yaml"
    path.write_text(text, encoding="utf-8")
    import_records(db, [path], timezone="Asia/Shanghai")
    (event,) = ics(db, 61).walk("VEVENT")
    assert str(event["LOCATION"]).startswith("https://momodel.cn")
    path.write_text(text.replace("19:30:00", "19:45:00") + "cancelled: true\n", encoding="utf-8")
    import_records(db, [path], timezone="Asia/Shanghai")
    calendar = ics(db, 61)
    (event,) = calendar.walk("VEVENT")
    assert calendar["METHOD"] == "CANCEL"
    assert event["SEQUENCE"] == 1 and event["STATUS"] == "CANCELLED"
    assert event["UID"] == "salon-61@example.org"
