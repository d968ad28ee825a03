"""Read paths that ``benchmarks/scale.py`` times at a million subscribers: the attendee CSV
of a session (every cell a person typed made safe, on every database) and a page that reads
only the first answers of the list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.db import session_scope
from newsletter.rsvp import repo
from newsletter.rsvp.export import COLUMNS, session_attendees_csv
from newsletter.rsvp.models import Rsvp
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tests.webapp import write_record

# Names people type, with what a spreadsheet would run as a formula, what CSV must quote,
# whitespace Python strips before looking (ideographic and no-break spaces too) and what
# it does not strip (a zero-width space is not whitespace to Python).
NAMES = [
    "贾鑫康",
    "=1+1",
    "+86 138",
    "-minus",
    "@home",
    "＝全角",
    "  =spaced",
    "\u3000＠ideographic",
    "\xa0-nbsp",
    "\u200b=zero-width",
    "\ttab first",
    "\rcarriage",
    "a,b",
    'say "hi"',
    "line\nbreak",
    "",
    'plain, "quoted" and\r\nbroken',
    "'already",
]


def _seed(url: str, tmp_path: Path) -> int:
    """Session no. 95 (one seat) with an answer for each name: confirmed, waitlisted, maybe,
    no, some with guests, at times with and without microseconds; the session's id."""
    base = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    with session_scope(url) as db:
        import_records(
            db, [write_record(tmp_path, deadline_in=timedelta(days=6))], timezone="Asia/Shanghai"
        )
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        people = [
            Subscriber(
                email=f"{'=' if i % 5 == 0 else ''}p{i}@example.org", name=name, created_at=base
            )
            for i, name in enumerate(NAMES)
        ]
        db.add_all(people)
        db.flush()
        answers = ["yes", "yes", "yes", "maybe", "no"]
        for i, person in enumerate(people):
            answer = answers[i % len(answers)]
            at = base + timedelta(minutes=i, microseconds=0 if i % 2 else 1000 * i + 7)
            db.add(
                Rsvp(
                    session_id=salon.id,
                    subscriber_id=person.id,
                    answer=answer,
                    guests=2 if i % 4 == 0 else 0,
                    waitlisted=answer == "yes" and i > 0,
                    queue_no=i + 1 if answer == "yes" else 0,
                    answered_at=at,
                    updated_at=at + timedelta(seconds=i),
                )
            )
        return salon.id


def test_the_attendee_csv_defuses_formulas_and_quotes_on_every_database(
    db_url: str, tmp_path: Path
) -> None:
    session_id = _seed(db_url, tmp_path)
    with session_scope(db_url) as db:
        served = session_attendees_csv(db, session_id)
    assert "'=1+1" in served and "'\u3000＠ideographic" in served and "\u200b=zero-width" in served
    assert '"say ""hi"""' in served and '"line\nbreak"' in served
    assert ".002007+00:00" in served and "09:31:00+00:00" in served
    assert served.count("\r\n") == len(NAMES) + 2  # the header, every answer, one broken name


def test_an_empty_list_is_the_header_alone(db_url: str, tmp_path: Path) -> None:
    with session_scope(db_url) as db:
        import_records(
            db, [write_record(tmp_path, deadline_in=timedelta(days=6))], timezone="Asia/Shanghai"
        )
        salon = sessions_repo.get_by_number(db, 95)
        assert salon is not None
        assert session_attendees_csv(db, salon.id) == ",".join(COLUMNS) + "\r\n"


def test_a_page_reads_only_the_first_answers_in_list_order(db_url: str, tmp_path: Path) -> None:
    session_id = _seed(db_url, tmp_path)
    with session_scope(db_url) as db:
        everyone = repo.attendees(db, session_id)
        first = repo.attendees(db, session_id, limit=3)
    assert len(everyone) == len(NAMES)
    assert first == everyone[:3]
    assert first[0].answer == "yes" and not first[0].waitlisted
