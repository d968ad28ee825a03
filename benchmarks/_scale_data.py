"""The database ``benchmarks/scale.py`` reads: a season of a real salon at a million people.

* ten sessions, imported from ``examples/sessions/`` like an organizer would (no. 28, in room
  348, gets a seat limit so that it has a waitlist);
* N subscribers (default 1,000,000) with Chinese and pinyin names at the usual mail domains,
  about 4 % unsubscribed, bounced or suppressed;
* one finished invitation campaign per session with a delivery row for every subscriber
  (mostly sent, some failed, the people who left skipped): ten million rows;
* answers: 2-5 % yes, some maybe and no per session, some people changing their mind (two
  history rows), a waitlist on the session with seats; the seat counters filled as the
  answer statement keeps them.

Rows go in with PostgreSQL's COPY (psycopg's ``cursor.copy``, which the project depends on
already). The deliveries table's secondary indexes and foreign keys are dropped for the COPY
and put back afterwards from their own definitions (``pg_get_indexdef`` /
``pg_get_constraintdef``), so the schema ends exactly as the migrations made it; building an
index once is several times faster than keeping it through ten million inserts.

SQL here is benchmark set-up, not product code: the product's own statements are what
``scale.py`` measures.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from newsletter.db import session_scope
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records

ROOT = Path(__file__).resolve().parent.parent
# The ten sessions of the season; no. 28 (offline, room 348) gets seats.
SESSION_NUMBERS = tuple(range(19, 29))
SEATED_SESSION = 28
SEATS = 30_000
# The campaign-count columns helper A1's migration 0007 adds, filled when they exist.
COUNT_COLUMNS = (
    "queued_count",
    "inflight_count",
    "sent_count",
    "failed_count",
    "skipped_count",
    "unconfirmed_count",
)

_SURNAMES = [
    ("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"),
    ("杨", "yang"), ("赵", "zhao"), ("黄", "huang"), ("周", "zhou"), ("吴", "wu"),
    ("徐", "xu"), ("孙", "sun"), ("胡", "hu"), ("朱", "zhu"), ("高", "gao"),
    ("林", "lin"), ("何", "he"), ("郭", "guo"), ("马", "ma"), ("罗", "luo"),
    ("梁", "liang"), ("宋", "song"), ("郑", "zheng"), ("谢", "xie"), ("韩", "han"),
    ("唐", "tang"), ("冯", "feng"), ("于", "yu"), ("董", "dong"), ("萧", "xiao"),
    ("叶", "ye"), ("贾", "jia"), ("欧阳", "ouyang"), ("司马", "sima"),
]  # fmt: skip
_GIVEN = [
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"),
    ("丽", "li"), ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"),
    ("勇", "yong"), ("艳", "yan"), ("杰", "jie"), ("涛", "tao"), ("明", "ming"),
    ("超", "chao"), ("秀英", "xiuying"), ("霞", "xia"), ("平", "ping"), ("刚", "gang"),
    ("鑫康", "xinkang"), ("寅", "yin"), ("子涵", "zihan"), ("浩然", "haoran"),
    ("雨桐", "yutong"), ("思远", "siyuan"), ("欣怡", "xinyi"), ("俊杰", "junjie"),
]  # fmt: skip
_LATIN = ["Alice", "Bob", "Carol", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas"]
_DOMAINS = [
    ("qq.com", 30), ("163.com", 18), ("gmail.com", 14), ("126.com", 7), ("outlook.com", 6),
    ("zju.edu.cn", 5), ("foxmail.com", 4), ("sina.com", 3), ("hotmail.com", 3),
    ("pku.edu.cn", 2), ("tsinghua.edu.cn", 2), ("yahoo.com", 1), ("mail.ustc.edu.cn", 1),
    ("alibaba-inc.com", 1), ("example.org", 3),
]  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """How big the database is."""

    subscribers: int
    campaigns: int  # one per session, at most len(SESSION_NUMBERS)

    @property
    def deliveries(self) -> int:
        """Delivery rows: every subscriber in every campaign."""
        return self.subscribers * self.campaigns


def psycopg_url(url: str) -> str:
    """The libpq form of a SQLAlchemy ``postgresql+psycopg://`` URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S+00")


def _copy(cursor: psycopg.Cursor[tuple[object, ...]], sql: str, lines: Iterator[str]) -> None:
    """COPY text lines in blocks (one write per ~100,000 rows: Python's per-row cost is the
    string, not the call)."""
    with cursor.copy(sql) as copy:
        block: list[str] = []
        for line in lines:
            block.append(line)
            if len(block) >= 100_000:
                copy.write("".join(block))
                block.clear()
        if block:
            copy.write("".join(block))


def _people(rng: random.Random, n: int, since: datetime) -> Iterator[str]:
    """Subscriber rows (email, name, locale, status, created_at, status_changed_at,
    status_reason) as COPY text; ids are 1..n in this order."""
    domains = [d for d, _ in _DOMAINS]
    weights = [w for _, w in _DOMAINS]
    for i in range(1, n + 1):
        if rng.random() < 0.08:
            name = rng.choice(_LATIN) + " " + rng.choice(_SURNAMES)[1].title()
            local = name.lower().replace(" ", ".")
            locale = "en"
        else:
            (family, family_py), (given, given_py) = rng.choice(_SURNAMES), rng.choice(_GIVEN)
            name, local, locale = family + given, family_py + given_py, "zh-CN"
        email = f"{local}{i}@{rng.choices(domains, weights)[0]}"
        joined = since + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        roll = rng.random()
        if roll < 0.025:
            status, reason = "unsubscribed", "list-unsubscribe one-click"
        elif roll < 0.037:
            status, reason = "bounced", "550 5.1.1 user unknown"
        elif roll < 0.04:
            status, reason = "suppressed", "organizer"
        else:
            status, reason = "active", None
        changed = _stamp(joined + timedelta(days=30)) if reason else "\\N"
        yield (
            f"{email}\t{name}\t{locale}\t{status}\t{_stamp(joined)}\t{changed}\t"
            f"{reason or chr(92) + 'N'}\n"
        )


def _deliveries(
    rng: random.Random, campaign_id: int, statuses: bytes, sent_from: datetime
) -> Iterator[str]:
    """One campaign's delivery rows (campaign_id, subscriber_id, status, attempts, sent_at,
    last_error, maybe_sent): the people who had left by then skipped, ~0.8 % refused by the
    relay, the rest sent at ~2,000 a second."""
    seconds = [_stamp(sent_from + timedelta(seconds=s)) for s in range(len(statuses) // 2000 + 2)]
    refused = "550 5.1.1 <address>: Recipient address rejected: User unknown"
    for i, left in enumerate(statuses, 1):
        if left:
            yield f"{campaign_id}\t{i}\tskipped\t0\t\\N\t\\N\tf\n"
        elif rng.random() < 0.008:
            yield f"{campaign_id}\t{i}\tfailed\t1\t\\N\t{refused}\tf\n"
        else:
            yield f"{campaign_id}\t{i}\tsent\t1\t{seconds[i // 2000]}\t\\N\tf\n"


def _answers(
    rng: random.Random, session_id: int, n: int, opened: datetime, closes: datetime, seats: int
) -> tuple[list[str], list[str], int, int, int]:
    """One session's answers: rsvps and rsvp_events COPY lines, then seats taken, waiting
    and the next queue number. A share of the people answer between the invitation and the
    session; some first said "maybe" or "yes" and changed their mind (two history rows)."""
    yes_share = rng.uniform(0.02, 0.05)
    maybe_share, no_share = rng.uniform(0.005, 0.01), rng.uniform(0.01, 0.02)
    answering = rng.sample(range(1, n + 1), int(n * (yes_share + maybe_share + no_share)))
    span = (closes - opened).total_seconds()
    # Answers come in a burst after the mail, then trickle until the session.
    times = sorted(opened + timedelta(seconds=span * rng.random() ** 3) for _ in answering)
    rsvps, events = [], []
    taken = waiting = 0
    queue = 1
    for person, at in zip(answering, times, strict=True):
        roll = rng.random() * (yes_share + maybe_share + no_share)
        answer = "yes" if roll < yes_share else "maybe" if roll < yes_share + maybe_share else "no"
        first_at = at
        if rng.random() < 0.1:  # changed their mind: an earlier answer in the history
            first_at = at - timedelta(seconds=rng.uniform(60, 86400))
            first_at = max(first_at, opened)
            earlier = "maybe" if answer != "maybe" else "yes"
            events.append(f"{session_id}\t{person}\t{earlier}\tf\t{_stamp(first_at)}\t\\N\n")
        queue_no = 0
        waitlisted = False
        notice = "\\N"
        if answer == "yes":
            queue_no, queue = queue, queue + 1
            if seats and taken >= seats:
                waitlisted, waiting = True, waiting + 1
            else:
                taken += 1
                notice = "confirmed" if seats else "\\N"
        flag = "t" if waitlisted else "f"
        stamp = _stamp(at)
        rsvps.append(f"{session_id}\t{person}\t{answer}\t0\t{flag}\t{stamp}\t{queue_no}\t{stamp}\n")
        events.append(f"{session_id}\t{person}\t{answer}\t{flag}\t{stamp}\t{notice}\n")
    return rsvps, events, taken if seats else 0, waiting, queue


def _records(folder: Path) -> list[Path]:
    """The ten records, no. 28 with a seat limit (its venue is room 348)."""
    paths = []
    for number in SESSION_NUMBERS:
        source = ROOT / "examples" / "sessions" / f"{number:03d}.yaml"
        target = folder / source.name
        text = source.read_text(encoding="utf-8")
        if number == SEATED_SESSION:
            text += f"registration: {{capacity: {SEATS}}}\n"
        target.write_text(text, encoding="utf-8")
        paths.append(target)
    return paths


def _log(message: str, started: float) -> None:
    print(f"  [{time.perf_counter() - started:7.1f} s] {message}", flush=True)


def _deferred_schema(cursor: psycopg.Cursor[tuple[Any, ...]], table: str) -> list[str]:
    """Drop ``table``'s foreign keys, unique constraints and secondary indexes (not its
    primary key) and return the statements that put them back as they were."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('f', 'u')",
        (table,),
    )
    constraints = cursor.fetchall()
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass "
        "AND NOT x.indisprimary AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        (table,),
    )
    indexes = cursor.fetchall()
    restore = [str(definition) for _, definition in indexes]
    restore += [f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {d}' for name, d in constraints]
    for name, _ in constraints:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    return restore


def build(url: str, shape: Shape, work: Path, *, seed: int = 11) -> dict[str, float]:
    """Migrate and fill the database at ``url``; seconds per step."""
    rng = random.Random(seed)
    started = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        steps[name] = round(now - since, 1)
        _log(f"{name}: {now - since:.1f} s", started)
        return now

    upgrade(url)
    folder = work / "records"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with session_scope(url) as db:
        report = import_records(db, _records(folder), timezone="Asia/Shanghai")
    if report.errors:
        raise SystemExit("records refused: " + "; ".join(report.errors))
    mark = step("migrate + import sessions", started)
    with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute("SET maintenance_work_mem = '1GB'")
        _copy(
            cursor,
            "COPY subscribers (email, name, locale, status, created_at, status_changed_at, "
            "status_reason) FROM STDIN",
            _people(rng, shape.subscribers, datetime(2017, 9, 1, tzinfo=UTC)),
        )
        mark = step(f"COPY {shape.subscribers:,} subscribers", mark)
        cursor.execute("SELECT status <> 'active' FROM subscribers ORDER BY id")
        gone = [bool(row[0]) for row in cursor.fetchall()]
        cursor.execute(
            "SELECT id, number, starts_at FROM sessions WHERE number = ANY(%s) ORDER BY number",
            (list(SESSION_NUMBERS[-shape.campaigns :]),),
        )
        sessions = cursor.fetchall()
        restore = _deferred_schema(cursor, "deliveries")
        for k, (session_id, number, starts_at) in enumerate(sessions):
            created = starts_at - timedelta(days=7)
            cursor.execute(
                "INSERT INTO campaigns (session_id, kind, subject, status, recipient_count, "
                "created_at, started_at, finished_at, last_progress_at, failure_streak, "
                "relay_failures) VALUES (%s, 'invitation', %s, 'finished', %s, %s, %s, %s, %s, "
                "0, 0) RETURNING id",
                (
                    session_id,
                    f"第{number}期机器学习沙龙邀请",
                    shape.subscribers,
                    created,
                    created + timedelta(minutes=5),
                    created + timedelta(minutes=15),
                    created + timedelta(minutes=15),
                ),
            )
            row = cursor.fetchone()
            assert row is not None
            # Who had left by this campaign: the later the campaign, the more of those who
            # are gone today had gone already.
            share = (k + 1) / len(sessions)
            left = bytes(g and (i * 2654435761 % 1000) < share * 1000 for i, g in enumerate(gone))
            _copy(
                cursor,
                "COPY deliveries (campaign_id, subscriber_id, status, attempts, sent_at, "
                "last_error, maybe_sent) FROM STDIN",
                _deliveries(rng, int(row[0]), left, created + timedelta(minutes=5)),
            )
            mark = step(f"COPY campaign {row[0]}: {shape.subscribers:,} deliveries", mark)
        for statement in restore:
            cursor.execute(statement)
        mark = step("deliveries: indexes and constraints back", mark)
        for session_id, number, starts_at in sessions:
            seats = SEATS if number == SEATED_SESSION else 0
            opened = starts_at - timedelta(days=7, minutes=-10)
            rsvps, events, taken, waiting, queue_next = _answers(
                rng, session_id, shape.subscribers, opened, starts_at, seats
            )
            _copy(
                cursor,
                "COPY rsvps (session_id, subscriber_id, answer, guests, waitlisted, "
                "answered_at, queue_no, updated_at) FROM STDIN",
                iter(rsvps),
            )
            _copy(
                cursor,
                "COPY rsvp_events (session_id, subscriber_id, answer, waitlisted, at, notice) "
                "FROM STDIN",
                iter(events),
            )
            cursor.execute(
                "UPDATE sessions SET seats_taken = %s, waiting = %s, queue_next = %s WHERE id = %s",
                (taken, waiting, queue_next, session_id),
            )
        mark = step("COPY answers and history", mark)
        fill_counts(cursor)
        mark = step("campaign counts", mark)
        cursor.execute("VACUUM (ANALYZE)")
        step("VACUUM ANALYZE", mark)
    steps["total"] = round(time.perf_counter() - started, 1)
    return steps


def fill_counts(cursor: psycopg.Cursor[tuple[object, ...]]) -> list[str]:
    """Fill the campaign-count columns that exist (migration 0007) from the delivery rows,
    in one UPDATE; the names of the columns filled (none before 0007)."""
    cursor.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'campaigns' "
        "AND column_name = ANY(%s)",
        (list(COUNT_COLUMNS),),
    )
    present = [str(row[0]) for row in cursor.fetchall()]
    if not present:
        return []
    counted = ", ".join(
        f"count(*) FILTER (WHERE status = '{c.removesuffix('_count')}') AS {c}" for c in present
    )
    assigned = ", ".join(f"{c} = x.{c}" for c in present)
    cursor.execute(
        f"UPDATE campaigns SET {assigned} FROM (SELECT campaign_id, {counted} FROM deliveries "
        "GROUP BY campaign_id) x WHERE campaigns.id = x.campaign_id"
    )
    return present
