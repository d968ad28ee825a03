"""The public pages' queries on SQLite and PostgreSQL: the archive's rows and search, the next
sessions, and the validators' state, which must move when a session ends or is imported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.sessions import public_repo
from newsletter.sessions.service import import_records

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sessions"
# Between no. 59 (2020) and no. 61 (2020-10-18 19:30 +08:00): no. 61 is still to come.
BEFORE_61 = datetime(2020, 10, 18, 0, 0, tzinfo=UTC)


def test_archive_search_and_next_sessions(db: Session) -> None:
    import_records(db, sorted(EXAMPLES.glob("*.yaml")), timezone="Asia/Shanghai")
    db.commit()
    rows = public_repo.past_rows(db, BEFORE_61)
    assert [r.number for r in rows][-1] == 59 and len(rows) == 57
    assert [s.number for s in public_repo.upcoming(db, BEFORE_61)] == [61]
    assert [r.number for r in public_repo.past_rows(db, BEFORE_61 + timedelta(days=1))][-1] == 61
    by_speaker = public_repo.past_rows(db, datetime(2030, 1, 1, tzinfo=UTC), "叶寅")
    assert [r.number for r in by_speaker] == [61]
    assert 28 in [r.number for r in public_repo.past_rows(db, BEFORE_61, "fate")]
    assert public_repo.past_rows(db, BEFORE_61, "%") == []
    assert public_repo.past_rows(db, BEFORE_61, "_") == []


def test_state_moves_when_a_session_ends(db: Session) -> None:
    import_records(db, sorted(EXAMPLES.glob("*.yaml")), timezone="Asia/Shanghai")
    db.commit()
    before = public_repo.site_state(db, BEFORE_61)
    after = public_repo.site_state(db, BEFORE_61 + timedelta(days=1))
    assert before.sessions == after.sessions == 58
    assert (before.ended, after.ended) == (57, 58)
    assert before != after
