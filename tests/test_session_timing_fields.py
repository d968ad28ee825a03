"""The record's timing fields for a session's life: reminder offsets and the waitlist's
promotion cutoff and confirmation window, stored on the session row in one spelling."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.errors import RecordError
from newsletter.sessions import repo
from newsletter.sessions.offsets import iso_duration, parse_offsets
from newsletter.sessions.records import load_record
from newsletter.sessions.service import import_records
from tests.test_session_records import GOOD, write

TIMED = (
    GOOD
    + """\
reminders: [P1D, PT2H, PT24H]
registration:
  capacity: 30
  promotion_cutoff: PT24H
  confirm_within: PT12H
"""
)


def test_timing_fields_are_stored_on_the_session(db: Session, tmp_path: Path) -> None:
    import_records(db, [write(tmp_path, "070.yaml", TIMED)], timezone="Asia/Shanghai")
    db.commit()
    row = repo.get_by_number(db, 70)
    assert row is not None
    assert row.reminder_offsets == "P1D,PT2H"  # PT24H is P1D: one reminder, not two
    assert (row.promotion_cutoff_s, row.confirm_within_s) == (86_400, 43_200)


def test_a_record_without_them_keeps_the_defaults(db: Session, tmp_path: Path) -> None:
    import_records(db, [write(tmp_path, "070.yaml", GOOD)], timezone="Asia/Shanghai")
    db.commit()
    row = repo.get_by_number(db, 70)
    assert row is not None
    assert (row.reminder_offsets, row.promotion_cutoff_s, row.confirm_within_s) == (None,) * 3


def test_an_empty_reminder_list_means_none(db: Session, tmp_path: Path) -> None:
    text = GOOD + "reminders: []\n"
    import_records(db, [write(tmp_path, "070.yaml", text)], timezone="Asia/Shanghai")
    db.commit()
    row = repo.get_by_number(db, 70)
    assert row is not None and row.reminder_offsets == ""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("reminders: [tomorrow]\n", "reminders[0]"),
        ("reminders: [-P1D]\n", "reminders: give positive ISO 8601 durations"),
        ("registration: {promotion_cutoff: PT0S}\n", "registration.promotion_cutoff"),
    ],
)
def test_bad_timing_fields_name_the_field(tmp_path: Path, extra: str, expected: str) -> None:
    path = write(tmp_path, "bad.yaml", GOOD + extra)
    with pytest.raises(RecordError) as caught:
        load_record(path)
    assert expected in str(caught.value).replace("Value error, ", "")


def test_offsets_have_one_spelling() -> None:
    assert [iso_duration(o) for o in parse_offsets("PT24H, PT2H, P1D, PT90M, P1DT30S")] == [
        "P1D",
        "PT2H",
        "PT1H30M",
        "P1DT30S",
    ]
    with pytest.raises(ValueError, match="'soon' is not an ISO 8601 duration"):
        parse_offsets("P1D,soon")
    assert Settings(reminders="PT2H, P1D").reminder_offsets == [
        timedelta(hours=2),
        timedelta(days=1),
    ]
    with pytest.raises(ValueError, match="'PT0S': an offset before the start must be positive"):
        Settings(reminders="PT0S")
