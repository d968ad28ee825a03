"""CSV import: every bad row reported by the line it starts on, the valid rows stored at once,
nobody re-subscribed; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from newsletter.db import get_engine, session_scope
from subscribers import service
from subscribers.csv_import import ImportFileError, ImportReport, ImportStoreError, import_csv
from subscribers.models import Subscriber, SubscriberStatus, Tag
from tests.conftest import EXAMPLES


def write(tmp_path: Path, content: str | bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def stored(db: Session) -> dict[str, Subscriber]:
    db.expire_all()
    return {p.email: p for p in db.scalars(select(Subscriber))}


def errors(report: ImportReport) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in report.errors]


def test_the_example_list_imports_and_a_second_import_changes_nothing(db: Session) -> None:
    report = import_csv(db, EXAMPLES / "subscribers.csv")
    db.commit()
    rows = len((EXAMPLES / "subscribers.csv").read_text(encoding="utf-8").splitlines()) - 1
    assert (report.added, report.errors) == (rows, [])
    people = stored(db)
    assert people["zhang.wei@example.org"].name == "张伟"
    assert sorted(t.name for t in people["zhang.wei@example.org"].tags) == ["federated", "zju"]
    assert people["alice.morgan@example.com"].locale == "en"

    again = import_csv(db, EXAMPLES / "subscribers.csv")
    db.commit()
    assert (again.added, again.updated, again.unchanged) == (0, 0, rows)


def test_bad_rows_are_reported_by_line_and_only_valid_rows_are_stored(
    db: Session, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "email,name,locale,tags\n"  # 1
        "good1@example.org,Good One,,zju\n"  # 2
        "foo@,Bad Address,,\n"  # 3
        '"Wang, Fang"@example.org,x,,\n'  # 4: junk after a quoted field
        "good2@example.org,Wang, Fang,en,\n"  # 5: an unquoted comma: too many fields
        "good3@example.org\n"  # 6: missing name column
        "\n"  # 7: blank, skipped
        "good4@example.org,Four,klingon-lang-x,\n"  # 8: bad locale
        ",Nobody,,\n"  # 9: empty address
        "GOOD1@Example.org,Again,,\n"  # 10: duplicate of line 2
        'good5@example.org,"Five\nLines",,\n'  # 11-12: a name with a line break
        "good6@example.org,Six,,a\x07b\n"  # 13: control character in a tag
        "good7@example.org,Seven,en,cv\n",  # 14
    )
    report = import_csv(db, path)
    db.commit()
    lines = [line for line, _ in errors(report)]
    assert lines == [3, 4, 5, 6, 8, 9, 10, 11, 13]
    reasons = dict(errors(report))
    assert reasons[3] == "'foo@' is not a valid address: there must be something after the @-sign"
    assert "closing quote" in reasons[4]
    assert "5 fields but the header has 4" in reasons[5]
    assert "missing column 'name'" in reasons[6]
    assert "is not a locale" in reasons[8]
    assert reasons[9] == "the email column is empty"
    assert reasons[10] == "duplicate of line 2 (good1@example.org)"
    assert "line break" in reasons[11]
    assert "control character" in reasons[13]
    assert report.errors[0].raw == "foo@,Bad Address,,"
    assert (report.added, report.stored) == (2, 2)
    assert set(stored(db)) == {"good1@example.org", "good7@example.org"}


def test_a_quoted_multiline_field_reports_the_line_where_its_record_starts(
    db: Session, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "email,name\n"
        'a@example.org,"Zhang, Wei"\n'  # 2: comma inside quotes is fine
        'b@example.org,"Li\n\nNa"\n'  # 3-5: refused, reported at 3
        "c@\n"  # 6: the line counting continues correctly after it
        'd@example.org,"He said ""hi"""\n'  # 7
        'e@example.org,"never closed\n'  # 8: runs to the end of the file
        "f@example.org,F\n",
    )
    report = import_csv(db, path)
    db.commit()
    assert [line for line, _ in errors(report)] == [3, 6, 8]
    assert "never closed" in errors(report)[2][1]
    people = stored(db)
    assert people["a@example.org"].name == "Zhang, Wei"
    assert people["d@example.org"].name == 'He said "hi"'
    assert set(people) == {"a@example.org", "d@example.org"}


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_endings_count_lines_alike(
    db: Session, tmp_path: Path, newline: str
) -> None:
    rows = ["Email,Name", "a@example.org,A", "bad", "b@example.org,B"]
    path = write(tmp_path, newline.join(rows) + newline)
    report = import_csv(db, path)
    assert errors(report) == [(3, "missing column 'name' (1 field, the header has 2)")]
    assert report.added == 2


def test_a_byte_order_mark_and_header_case_are_handled(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffEMAIL, Name ,Tags,Phone\nA@Example.org,A,ZJU; zju;cv,123\n")
    report = import_csv(db, path)
    db.commit()
    assert (report.added, report.errors, report.ignored_columns) == (1, [], ["phone"])
    person = stored(db)["a@example.org"]
    assert sorted(t.name for t in person.tags) == ["cv", "zju"]
    assert person.locale == "zh-CN"


def test_undecodable_bytes_are_reported_by_line(db: Session, tmp_path: Path) -> None:
    content = (
        b"email,name\n"
        + "a@example.org,张伟\n".encode()
        + b"b@example.org,"
        + "李娜".encode("gbk")
        + b"\n"
        + "c@example.org,王芳\n".encode()
    )
    report = import_csv(db, write(tmp_path, content))
    db.commit()
    assert [line for line, _ in errors(report)] == [3]
    assert "not UTF-8" in errors(report)[0][1]
    assert set(stored(db)) == {"a@example.org", "c@example.org"}


def test_the_file_and_the_database_fold_addresses_alike(db: Session, tmp_path: Path) -> None:
    service.add_subscriber(db, "foo@example.org", name="Old", locale="en", tags=["zju"])
    service.add_subscriber(db, "same@example.org", name="Same", tags=["cv"])
    service.add_subscriber(db, "keep@example.org", name="Keep", locale="en")
    db.commit()
    path = write(
        tmp_path,
        "email,name,locale,tags\n"
        "FOO@Example.ORG,New Name,,federated\n"  # updated: name, a tag added, locale kept
        "Same@Example.org,Same,,CV\n"  # unchanged
        "keep@example.org,,,\n"  # unchanged: blanks never erase stored values
        "new@example.org,New,,\n",
    )
    report = import_csv(db, path)
    db.commit()
    assert (report.added, report.updated, report.unchanged, report.errors) == (1, 1, 2, [])
    people = stored(db)
    assert (people["foo@example.org"].name, people["foo@example.org"].locale) == ("New Name", "en")
    assert sorted(t.name for t in people["foo@example.org"].tags) == ["federated", "zju"]
    assert (people["keep@example.org"].name, people["keep@example.org"].locale) == ("Keep", "en")
    assert people["new@example.org"].locale == "zh-CN"


def test_an_import_never_reactivates_anyone(db: Session, tmp_path: Path) -> None:
    gone = service.add_subscriber(db, "gone@example.org", name="Gone").subscriber
    service.unsubscribe(db, gone.id, "one-click")
    service.suppress(
        db, email="bounced@example.org", status=SubscriberStatus.bounced, reason="5.1.1"
    )
    service.suppress(db, email="blocked@example.org", reason="organizer")
    db.commit()
    path = write(
        tmp_path,
        "email,name,tags\n"
        "Gone@example.org,New Name,zju\n"
        "bounced@example.org,B,zju\n"
        "BLOCKED@example.org,C,\n"
        "fresh@example.org,Fresh,zju\n",
    )
    report = import_csv(db, path)
    db.commit()
    assert (report.added, report.kept_unsubscribed, report.errors) == (1, 3, [])
    people = stored(db)
    assert people["gone@example.org"].status == SubscriberStatus.unsubscribed
    assert people["gone@example.org"].name == "Gone"  # left exactly as it was
    assert people["gone@example.org"].tags == []
    assert people["bounced@example.org"].status == SubscriberStatus.bounced
    assert people["blocked@example.org"].status == SubscriberStatus.suppressed
    assert service.count_active(db) == 1


@pytest.fixture
def failing_insert(db_url: str) -> Iterator[str]:
    """A real database trigger that refuses one address, to make the write fail half-way."""
    engine = get_engine(db_url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text(
                    "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.email = 'boom@example.org' THEN RAISE EXCEPTION 'boom refused'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_boom BEFORE INSERT ON subscribers "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_boom()"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_boom BEFORE INSERT ON subscribers "
                    "WHEN NEW.email = 'boom@example.org' "
                    "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
                )
            )
    try:
        yield "boom@example.org"
    finally:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("DROP TRIGGER refuse_boom ON subscribers"))
                connection.execute(text("DROP FUNCTION refuse_boom()"))
            else:
                connection.execute(text("DROP TRIGGER refuse_boom"))


def test_the_valid_rows_are_stored_all_or_nothing(
    db_url: str, tmp_path: Path, failing_insert: str
) -> None:
    # 7,000 rows: the refused one is in the second block, after 5,000 rows were written.
    lines = ["email,name,tags"]
    lines += [f"p{i}@example.org,P{i},t{i % 7}" for i in range(6_999)]
    lines.append(f"{failing_insert},Boom,new-tag")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ImportStoreError) as caught, session_scope(db_url) as db:
        import_csv(db, path)
    assert "nothing was stored" in str(caught.value)
    assert str(path) in str(caught.value)
    with session_scope(db_url) as db:
        assert db.scalars(select(Subscriber)).first() is None
        assert db.scalars(select(Tag)).first() is None


def test_many_rows_go_in_bulk_and_report_progress(db: Session, tmp_path: Path) -> None:
    service.add_subscriber(db, "p5@example.org", name="Five", tags=["old"])
    service.suppress(db, email="p7@example.org", reason="blocked")
    db.commit()
    count = 12_000
    lines = ["email,name,locale,tags"]
    lines += [
        f"P{i}@Example.org,Person {i},{'en' if i % 3 else ''},t{i % 5};all" for i in range(count)
    ]
    path = write(tmp_path, "\n".join(lines) + "\n")
    seen: list[tuple[str, int, int]] = []
    started = time.perf_counter()
    report = import_csv(
        db, path, progress=lambda phase, done, total: seen.append((phase, done, total))
    )
    db.commit()
    elapsed = time.perf_counter() - started
    assert (report.added, report.updated, report.kept_unsubscribed) == (count - 2, 1, 1)
    assert elapsed < 20, f"{count} rows took {elapsed:.1f}s"
    assert seen[-1] == ("storing", count, count)
    assert ("reading", path.stat().st_size, path.stat().st_size) in seen
    assert service.count_active(db) == count - 1
    assert service.count_active(db, tag="all") == count - 1
    assert service.count_active(db, tag="t3") == count // 5
    five = stored(db)["p5@example.org"]
    assert (five.name, sorted(t.name for t in five.tags)) == ("Person 5", ["all", "old", "t0"])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "is empty"),
        ("name,locale\nFoo,en\n", "has no 'email' column"),
        ("email\nfoo@example.org\n", "has no 'name' column"),
        ("email;name\nfoo@example.org;Foo\n", "separated by something else than commas"),
        ("email,name,email\n", "appears twice"),
        ("\n\n", "is empty"),
        ("email,name".encode("utf-16"), "UTF-16"),
        (b"PK\x03\x04rest-of-a-zip", "Excel workbook"),
        (b"\x00\x01\x02binary", "not a text file"),
    ],
)
def test_a_file_that_cannot_be_imported_is_one_clear_error(
    db: Session, tmp_path: Path, content: str | bytes, words: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ImportFileError) as caught:
        import_csv(db, path)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)
    assert stored(db) == {}


def test_a_missing_file_or_a_folder_is_one_clear_error(db: Session, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="no such file"):
        import_csv(db, tmp_path / "nope.csv")
    with pytest.raises(ImportFileError, match="is a directory"):
        import_csv(db, tmp_path)


def test_the_import_runs_in_the_callers_transaction(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@example.org,A\n")
    import_csv(db, path)
    db.rollback()
    assert stored(db) == {}
