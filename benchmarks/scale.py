"""Read paths at a million subscribers and ten million deliveries, on PostgreSQL.

Starts a throwaway PostgreSQL, migrates it with the project's migrations and builds with COPY
(see ``benchmarks/_scale_data.py``) 1,000,000 subscribers, ten sessions, ten finished
campaigns of 1,000,000 deliveries each and the answers to them; ANALYZE. Then times every
read path an organizer uses, each ``--n`` times after two warm-up runs:

* the dashboard and the JSON API through the real app: ``newsletter serve --workers 1`` on
  loopback, httpx with one keep-alive connection, logged in through the login form with the
  admin token (as ``tests/test_admin.py`` does) or with the bearer token for /api;
* ``campaign list``, ``campaign status``, ``sessions list`` and ``rsvp list --csv``: the CLI
  command in this process (typer's runner: the command's own code and output, no Python
  start-up), the repo/service function it calls, and once each the command end to end as a
  new process, with Python's start-up and the CLI's imports measured apart;

prints p50 / p95 / max per path, then ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement each
path ran (caught with a SQLAlchemy ``before_cursor_execute`` listener while the path runs once
in this process), flagging a Seq Scan on deliveries, subscribers or rsvps and any plan over
50 ms; the last line is one JSON object.

Run: ``.venv/bin/python benchmarks/scale.py [--keep DIR] [--n 30] [--subscribers 1000000]
[--campaigns 10]``. Building takes minutes; ``--keep DIR`` keeps the database in DIR and
reuses it on the next run (migrations newer than the build are applied, the counts refilled
and the tables analysed again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for newsletter and tests.servers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _scale_data, as send.py does

import httpx  # noqa: E402
import psycopg  # noqa: E402
from _scale_data import (  # noqa: E402
    SEATED_SESSION,
    Shape,
    build,
    fill_counts,
    psycopg_url,
)

from tests.servers import _as_postgres_user, free_port, postgres_bin  # noqa: E402

TOKEN = "scale-benchmark-admin-token"
TARGET_MS = 200.0
SLOW_PLAN_MS = 50.0
WATCHED_TABLES = ("deliveries", "subscribers", "rsvps")


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres(directory: Path) -> Iterator[str]:
    """PostgreSQL with its data in ``directory/data`` (made on first use), on a free port;
    the SQLAlchemy URL. Durability off as in the tests' server (throwaway data); the
    planner's and memory settings are PostgreSQL's defaults, as on a small server."""
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is needed (apt-get install postgresql)")
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(
            _as_postgres_user([*initdb, "-E", "UTF8", "--locale", "C"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    port = free_port()
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100 "
        "-c max_wal_size=8GB"
    )
    pg_ctl = str(bindir / "pg_ctl")
    subprocess.run(
        _as_postgres_user(
            [pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(directory / "log"), "start"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
        )


def ready_database(url: str, directory: Path, shape: Shape) -> dict[str, Any]:
    """Build the database, or reuse the one built before in ``directory`` with this shape
    (migrating it to the newest revision and refilling the counts when that moved it)."""
    from newsletter.migrate import current_revision, head_revision, upgrade

    marker = directory / "built.json"
    built = json.loads(marker.read_text()) if marker.exists() else {}
    if built.get("shape") == [shape.subscribers, shape.campaigns]:
        print(f"reusing the database built in {directory} ({built['steps']['total']} s then)")
        if current_revision(url) != head_revision():
            upgrade(url)
            with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
                cursor = connection.cursor()
                print(f"  migrated to {head_revision()}; counts filled: {fill_counts(cursor)}")
                cursor.execute("VACUUM (ANALYZE)")
        return built
    if built or current_revision(url) is not None:
        raise SystemExit(f"{directory} holds another database: remove it or pick another DIR")
    print(
        f"building: {shape.subscribers:,} subscribers, {shape.campaigns} campaigns, "
        f"{shape.deliveries:,} deliveries (load: {load()})"
    )
    steps = build(url, shape, directory)
    built = {"shape": [shape.subscribers, shape.campaigns], "steps": steps}
    marker.write_text(json.dumps(built))
    return built


# --------------------------------------------------------------------------- measuring


def load() -> str:
    """The machine's load averages now (1, 5, 15 minutes)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Figures:
    """Timings of one read path, in milliseconds."""

    name: str
    how: str
    times: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile (p95 of 30 runs: the 29th)."""
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    def summary(self) -> dict[str, float]:
        """p50, p95 and max."""
        return {
            "p50_ms": round(self.quantile(0.5), 1),
            "p95_ms": round(self.quantile(0.95), 1),
            "max_ms": round(max(self.times), 1),
        }


def timed(name: str, how: str, run: Callable[[], object], n: int) -> Figures:
    """``run`` twice to warm up, then ``n`` times measured."""
    figures = Figures(name, how)
    for _ in range(2):
        run()
    for _ in range(n):
        started = time.perf_counter()
        run()
        figures.times.append((time.perf_counter() - started) * 1000)
    return figures


def env_for(url: str, port: int, folder: Path) -> dict[str, str]:
    """The NEWSLETTER_* settings the server and the CLI run with (no broker: embedded)."""
    return {
        "NEWSLETTER_DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "scale-benchmark-secret-key",
        "NEWSLETTER_ADMIN_TOKEN": TOKEN,
        "NEWSLETTER_BASE_URL": f"http://127.0.0.1:{port}",
        "NEWSLETTER_MAIL_URL": f"file://{folder}/outbox",
    }


@dataclass(frozen=True)
class Targets:
    """What the paths read: the seated session and the newest campaign."""

    number: int
    campaign_id: int


def web_paths(targets: Targets) -> list[tuple[str, str, bool]]:
    """(name, URL path, dashboard login or API bearer) for every HTTP read path."""
    n, c = targets.number, targets.campaign_id
    return [
        ("dashboard /admin (sessions, campaigns)", "/admin", True),
        (f"dashboard session page /admin/sessions/{n}", f"/admin/sessions/{n}", True),
        (f"dashboard campaign page /admin/campaigns/{c}", f"/admin/campaigns/{c}", True),
        (f"dashboard CSV /admin/sessions/{n}/rsvps.csv", f"/admin/sessions/{n}/rsvps.csv", True),
        ("API /api/campaigns", "/api/campaigns", False),
        (f"API /api/campaigns/{c}", f"/api/campaigns/{c}", False),
        ("API /api/sessions", "/api/sessions", False),
        (f"API CSV /api/sessions/{n}/rsvps.csv", f"/api/sessions/{n}/rsvps.csv", False),
    ]


def cli_commands(targets: Targets) -> list[tuple[str, list[str]]]:
    """(name, argv after ``newsletter``) for every CLI read path."""
    return [
        ("campaign list", ["campaign", "list"]),
        (
            f"campaign status {targets.campaign_id}",
            ["campaign", "status", str(targets.campaign_id)],
        ),
        ("sessions list", ["sessions", "list"]),
        (f"rsvp list {targets.number} --csv", ["rsvp", "list", str(targets.number), "--csv"]),
    ]


def functions(url: str, targets: Targets) -> list[tuple[str, Callable[[], object]]]:
    """(name, call) of the repo and service functions the CLI commands call."""
    from newsletter.campaigns import repo as campaigns_repo
    from newsletter.campaigns import service
    from newsletter.db import session_scope
    from newsletter.rsvp import repo as rsvp_repo
    from newsletter.rsvp.export import attendees_csv
    from newsletter.sessions import repo as sessions_repo

    # What `campaign list` calls: one query over the kept counts since migration 0007
    # (service.list_progress), a progress() per campaign before.
    list_progress = getattr(service, "list_progress", None)

    def campaign_list() -> object:
        with session_scope(url) as db:
            if list_progress is not None:
                return list_progress(db, 50)
            return [service.progress(db, c.id) for c in campaigns_repo.list_campaigns(db, 50)]

    def campaign_status() -> object:
        with session_scope(url) as db:
            return service.progress(db, targets.campaign_id)

    def sessions_list() -> object:
        with session_scope(url) as db:
            return sessions_repo.list_with_counts(db)

    def attendee_csv() -> object:
        with session_scope(url) as db:
            salon = sessions_repo.get_by_number(db, targets.number)
            assert salon is not None
            return attendees_csv(rsvp_repo.attendees(db, salon.id))

    from newsletter.rsvp import export

    def database_csv() -> object:
        with session_scope(url) as db:
            salon = sessions_repo.get_by_number(db, targets.number)
            assert salon is not None
            return export.session_attendees_csv(db, salon.id)

    found = [(f"fn session_attendees_csv({targets.number})", database_csv)]
    return [
        ("fn campaign list (50)", campaign_list),
        (f"fn progress({targets.campaign_id})", campaign_status),
        ("fn sessions_repo.list_with_counts", sessions_list),
        (f"fn attendees_csv(attendees({targets.number}))", attendee_csv),
        *(found if hasattr(export, "session_attendees_csv") else []),
    ]


def serve(env: dict[str, str], port: int, folder: Path) -> subprocess.Popen[bytes]:
    """``newsletter serve --workers 1`` on ``port``, answering /healthz."""
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "newsletter"), "serve", "--port", str(port)],
        cwd=folder,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "serve.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the web app did not start:\n" + (folder / "serve.log").read_text())
        time.sleep(0.2)


def logged_in(client: httpx.Client) -> None:
    """Log ``client`` in through the dashboard's form, as a person does."""
    response = client.post("/admin/login", data={"token": TOKEN})
    if response.status_code != 303 or response.headers.get("location") != "/admin":
        raise SystemExit(f"the dashboard login failed: {response.status_code}")


def fetcher(client: httpx.Client, path: str, admin: bool) -> Callable[[], object]:
    """A GET of ``path`` that must answer 200 (the bearer token for the API)."""
    headers = {} if admin else {"Authorization": f"Bearer {TOKEN}"}

    def get() -> object:
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:200]}")
        return response.content

    return get


def runner_call(argv: list[str]) -> Callable[[], object]:
    """The CLI command in this process; it must exit 0."""
    from typer.testing import CliRunner

    from newsletter.cli import app

    runner = CliRunner()

    def call() -> object:
        result = runner.invoke(app, argv)
        if result.exit_code != 0:
            raise SystemExit(f"newsletter {' '.join(argv)}: {result.output[-500:]}")
        return result.output

    return call


def end_to_end(env: dict[str, str], folder: Path, targets: Targets) -> list[tuple[str, float]]:
    """Each CLI command once as a new process, and what start-up alone costs."""
    newsletter = str(Path(sys.executable).parent / "newsletter")
    runs = [
        ("python -c pass (interpreter start-up)", [sys.executable, "-c", "pass"]),
        ("python -c 'import newsletter.cli' (the CLI's imports)",
         [sys.executable, "-c", "import newsletter.cli"]),
    ]  # fmt: skip
    runs += [(f"newsletter {name}", [newsletter, *argv]) for name, argv in cli_commands(targets)]
    out = []
    child_env = {**os.environ, **env}
    for name, argv in runs:
        started = time.perf_counter()
        subprocess.run(argv, cwd=folder, env=child_env, check=True, capture_output=True)
        out.append((name, (time.perf_counter() - started) * 1000))
    return out


# --------------------------------------------------------------------------- EXPLAIN


@dataclass
class Plan:
    """EXPLAIN of one distinct statement a path ran."""

    statement: str
    runs: int  # how many times the path ran it (an N+1 shows here)
    text: str
    ms: float
    flags: list[str]


def captured(run: Callable[[], object]) -> list[tuple[str, Any]]:
    """Every statement (and its parameters) SQLAlchemy sent while ``run`` ran once."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", listen)
    try:
        run()
    finally:
        event.remove(Engine, "before_cursor_execute", listen)
    return seen


_EXECUTION = re.compile(r"Execution Time: ([\d.]+) ms")
_SEQ_SCAN = re.compile(r"Seq Scan on (\w+)")


def explain(url: str, statements: list[tuple[str, Any]]) -> list[Plan]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each distinct read statement, in a transaction
    rolled back (nothing it runs stays)."""
    plans: list[Plan] = []
    order: dict[str, tuple[Any, int]] = {}
    for statement, parameters in statements:
        if not re.match(r"\s*(SELECT|WITH)\b", statement, re.IGNORECASE):
            continue
        first, runs = order.get(statement, (parameters, 0))
        order[statement] = (first, runs + 1)
    with psycopg.connect(psycopg_url(url)) as connection:
        for statement, (parameters, runs) in order.items():
            rows = connection.execute(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters or None
            ).fetchall()
            connection.rollback()
            text = "\n".join(str(row[0]) for row in rows)
            found = _EXECUTION.search(text)
            ms = float(found.group(1)) if found else 0.0
            flags = [
                f"Seq Scan on {table}"
                for table in sorted(set(_SEQ_SCAN.findall(text)))
                if table in WATCHED_TABLES
            ]
            if ms > SLOW_PLAN_MS:
                flags.append(f"{ms:.0f} ms > {SLOW_PLAN_MS:.0f} ms")
            plans.append(Plan(statement, runs, text, ms, flags))
    return plans


def in_process_paths(url: str, targets: Targets) -> list[tuple[str, Callable[[], object]]]:
    """Every path, run in this process (the web app through Starlette's test client, the
    CLI through typer's runner), for catching its statements."""
    from fastapi.testclient import TestClient

    from newsletter.web import create_app

    client = TestClient(create_app(), base_url="http://127.0.0.1", follow_redirects=False)
    client.post("/admin/login", data={"token": TOKEN})
    paths: list[tuple[str, Callable[[], object]]] = []
    for name, path, admin in web_paths(targets):
        paths.append((name, fetcher(client, path, admin)))
    for name, argv in cli_commands(targets):
        paths.append((f"cli {name}", runner_call(argv)))
    return paths


# --------------------------------------------------------------------------- main


def table(rows: list[Figures]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| path | how | p50 ms | p95 ms | max ms | ≤ 200 ms p95 |",
        "|---|---|---|---|---|---|",
    ]
    for f in rows:
        s = f.summary()
        ok = "yes" if s["p95_ms"] <= TARGET_MS else "**no**"
        lines.append(
            f"| {f.name} | {f.how} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Build (or reuse), time, explain; the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the database here and reuse it")
    parser.add_argument("--n", type=int, default=30, help="measured runs per path")
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=10, help="one per session, at most 10")
    parser.add_argument("--no-explain", action="store_true", help="skip the EXPLAIN section")
    args = parser.parse_args()
    shape = Shape(args.subscribers, min(args.campaigns, 10))
    directory = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="scale-pg-"))
    folder = Path(tempfile.mkdtemp(prefix="scale-run-"))
    try:
        with postgres(directory) as url:
            built = ready_database(url, directory, shape)
            measure(url, folder, shape, built, args.n, explain_plans=not args.no_explain)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def measure(
    url: str, folder: Path, shape: Shape, built: dict[str, Any], n: int, *, explain_plans: bool
) -> None:
    """Time every read path, print the table, the plans and the JSON line."""
    port = free_port()
    env = env_for(url, port, folder)
    os.environ.update(env)  # the in-process CLI and app read the same settings
    from newsletter.config import get_settings

    get_settings.cache_clear()
    with psycopg.connect(psycopg_url(url)) as connection:
        number_row = connection.execute(
            "SELECT s.number, max(c.id) FROM sessions s JOIN campaigns c ON c.session_id = s.id "
            "WHERE s.number = %s GROUP BY s.number",
            (SEATED_SESSION,),
        ).fetchone()
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert number_row is not None and revision is not None
    targets = Targets(int(number_row[0]), int(number_row[1]))
    print(f"\nschema at migration {revision[0]}; load before timing: {load()}")
    rows: list[Figures] = []
    server = serve(env, port, folder)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            logged_in(client)
            for name, path, admin in web_paths(targets):
                rows.append(timed(name, "HTTP, serve", fetcher(client, path, admin), n))
                print(f"  {name}: {rows[-1].summary()}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    for name, argv in cli_commands(targets):
        rows.append(timed(f"newsletter {name}", "CLI in process", runner_call(argv), n))
        print(f"  newsletter {name}: {rows[-1].summary()}", flush=True)
    for name, call in functions(url, targets):
        rows.append(timed(name, "function", call, n))
        print(f"  {name}: {rows[-1].summary()}", flush=True)
    once = end_to_end(env, folder, targets)
    after = load()
    print(
        f"\n## {shape.subscribers:,} subscribers, {shape.deliveries:,} deliveries, "
        f"{n} runs per path (load before/after: see above / {after})\n"
    )
    print(table(rows))
    print("\nOnce, as a new process (wall ms):\n")
    for name, ms in once:
        print(f"  {ms:8.0f}  {name}")
    plans: dict[str, list[Plan]] = {}
    if explain_plans:
        print("\n## EXPLAIN (ANALYZE, BUFFERS) of the statements each path runs\n")
        for name, run in in_process_paths(url, targets):
            run()  # warm, then catch
            plans[name] = explain(url, captured(run))
        report_plans(plans)
    worst = max(rows, key=lambda f: f.quantile(0.95))
    print(
        json.dumps(
            {
                "subscribers": shape.subscribers,
                "deliveries": shape.deliveries,
                "runs": n,
                "build_s": built["steps"]["total"],
                "load_after": after,
                "paths": {f.name: f.summary() for f in rows},
                "end_to_end_ms": {name: round(ms) for name, ms in once},
                "worst_p95_ms": round(worst.quantile(0.95), 1),
                "worst_path": worst.name,
                "target_met": worst.quantile(0.95) <= TARGET_MS,
                "flagged_plans": {
                    name: sorted({flag for p in found for flag in p.flags})
                    for name, found in plans.items()
                    if any(p.flags for p in found)
                },
            },
            ensure_ascii=False,
        )
    )


def report_plans(plans: dict[str, list[Plan]]) -> None:
    """Each path's statements with their plans, then a summary table."""
    for name, found in plans.items():
        print(f"### {name}: {sum(p.runs for p in found)} read statements, {len(found)} distinct\n")
        for plan in found:
            mark = "  <-- " + "; ".join(plan.flags) if plan.flags else ""
            print(f"-- run {plan.runs}x, {plan.ms:.1f} ms{mark}")
            print(re.sub(r"\s+", " ", plan.statement).strip()[:400])
            print("\n".join("   " + line for line in plan.text.splitlines()))
            print()
    print("| path | read statements | distinct | slowest plan ms | flags |\n|---|---|---|---|---|")
    for name, found in plans.items():
        flags = sorted({flag for p in found for flag in p.flags})
        slowest = max((p.ms for p in found), default=0.0)
        total = sum(p.runs for p in found)
        print(f"| {name} | {total} | {len(found)} | {slowest:.1f} | {'; '.join(flags) or '-'} |")
    print()


if __name__ == "__main__":
    main()
