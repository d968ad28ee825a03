"""Session records: the examples import; bad records are refused whole and named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.errors import RecordError
from newsletter.sessions import repo
from newsletter.sessions.models import SalonSession, Talk
from newsletter.sessions.records import load_record
from newsletter.sessions.service import import_records
from tests.conftest import EXAMPLES

GOOD = """\
number: 70
series: 机器学习学术沙龙
title: 测试 <script>alert(1)</script>
starts_at: 2021-01-09T19:30:00+08:00
ends_at: 2021-01-09T20:30:00+08:00
venue:
  mode: online
  streams:
    - {name: Mo平台直播, url: "https://momodel.cn"}
talks:
  - kind: paper
    title: A talk
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_examples_import_and_reimport_is_unchanged(db: Session) -> None:
    first = import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
    db.commit()
    assert first.errors == []
    assert len(first.created) == 59 - 2 + 1  # nos. 1–28 and 31–59 (57), plus 61
    assert 61 in first.created and 28 in first.created
    again = import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
    assert again.created == [] and again.updated == [] and len(again.unchanged) == 58
    assert repo.get_by_number(db, 28) is not None
    assert (db.scalar(select(func.count()).select_from(Talk)) or 0) > 100


def test_archive_for_61_lists_every_earlier_session_grouped_by_kind(db: Session) -> None:
    import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
    rows = repo.archive_before(db, 61)
    assert [r.number for r in rows] == [*range(1, 29), *range(31, 60)]
    four = next(r for r in rows if r.number == 4)
    assert [g.label for g in four.groups] == ["论文分享", "机器学习"]
    assert str(four.held_on) == "2019-04-13"
    assert any("douyu" in link.url for link in next(r for r in rows if r.number == 28).links)


def test_update_by_number_replaces_talks_and_bumps_revision(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "070.yaml", GOOD)
    import_records(db, [path], timezone="Asia/Shanghai")
    db.commit()
    path.write_text(GOOD.replace("title: A talk", "title: Another talk"), encoding="utf-8")
    report = import_records(db, [path], timezone="Asia/Shanghai")
    db.commit()
    assert report.updated == [70]
    row = repo.get_by_number(db, 70)
    assert row is not None and row.revision == 1
    assert [t.title for t in row.talks] == ["Another talk"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("ends_at: 2021-01-09T20:30:00+08:00", "ends_at: 2021-01-09T18:30:00+08:00"),
            "ends_at must be after starts_at",
        ),
        (
            ("starts_at: 2021-01-09T19:30:00+08:00", "starts_at: 2021-01-09T19:30:00"),
            "starts_at: Value error, needs a UTC offset",
        ),
        (("    title: A talk", "    title: A talk\n    kind2: x"), "talks[0].kind2: unknown field"),
        (
            ('    - {name: Mo平台直播, url: "https://momodel.cn"}', "    []"),
            "venue: an online venue needs at least one entry in venue.streams",
        ),
        (("number: 70", "number: seventy"), "number: Input should be a valid integer"),
        (("  - kind: paper", "  - kind: poster"), "talks[0].kind: Input should be 'paper'"),
        (("series: 机器学习学术沙龙\n", ""), "series: required field is missing"),
    ],
)
def test_bad_records_name_file_field_and_problem(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, "bad.yaml", GOOD.replace(old, new))
    with pytest.raises(RecordError) as caught:
        load_record(path)
    message = str(caught.value).replace("Value error, ", "")
    assert message.startswith(f"{path}: ")
    assert expected.replace("Value error, ", "") in message


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", GOOD.replace("talks:", "talks: [\n"))
    with pytest.raises(RecordError, match=r"broken\.yaml: not valid YAML at line \d+"):
        load_record(path)


def test_refused_file_stores_nothing_and_others_are_stored(db: Session, tmp_path: Path) -> None:
    good = write(tmp_path, "a.yaml", GOOD)
    bad = write(
        tmp_path,
        "b.yaml",
        GOOD.replace("number: 70", "number: 71").replace(
            "talks:\n  - kind: paper\n    title: A talk\n", "talks: []\n"
        ),
    )
    report = import_records(db, [good, bad], timezone="Asia/Shanghai")
    db.commit()
    assert report.created == [70]
    assert len(report.errors) == 1 and "b.yaml: talks: " in report.errors[0]
    assert repo.get_by_number(db, 71) is None
    assert db.scalar(select(func.count()).select_from(SalonSession)) == 1


def test_same_number_twice_in_one_import_refuses_the_second(db: Session, tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD.replace("A talk", "Other"))
    report = import_records(db, [tmp_path], timezone="Asia/Shanghai")
    assert report.created == [70]
    assert "b.yaml: number: session 70 is also defined in" in report.errors[0]


def test_missing_path_is_an_error(tmp_path: Path, db: Session) -> None:
    with pytest.raises(RecordError, match="no such file or folder"):
        import_records(db, [tmp_path / "nope.yaml"], timezone="Asia/Shanghai")
