"""Invitations per second end to end, against what the SMTP sink itself can take.

Creates N subscribers, starts throwaway PostgreSQL and Redis servers, two worker processes
(``newsletter worker --concurrency 1`` each) and Postfix's ``smtp-sink`` on loopback, sends one
campaign of the no. 61 invitation (the sample moved to next week, so that the mail carries its
RSVP buttons as a real invitation does), and prints from the same run:

* end to end: N / (seconds from launching ``newsletter campaign send ID`` to the sink having
  accepted N messages of the campaign);
* the ceiling: Postfix's ``smtp-source`` pushing the same message bytes (``newsletter preview
  61 --out FILE.eml``) into the same sink over 4 sessions, measured just before and just
  after the campaign (their mean is the ceiling; both are printed);
* the ratio end to end / ceiling; the peak RSS of each worker; where the CPU went.

Delivered and duplicates are counted from what the sink received, never from the database:
envelopes from its ``-v`` log (each message's VERP sender names its delivery, as its
Message-ID does; each recipient is one subscriber), or with ``--capture dump`` the Message-ID
of every message the sink wrote to tmpfs (slower: the sink then writes 67 KB per message).

``--dkim rsa`` or ``--dkim ed25519`` signs every mail (a key made by ``openssl genpkey`` in the
working directory, ``NEWSLETTER_DKIM_*`` for the workers); the default ``off`` sends unsigned.

Run: ``.venv/bin/python benchmarks/send.py [--n 10000] [--capture envelope|dump] [--dkim off]``;
everything
listens on 127.0.0.1 and is stopped at the end. The last line of output is one JSON object:
``{"n", "delivered", "duplicates", "msgs_per_s", "ceiling_msgs_per_s", "ratio",
"worker_peak_rss_mb"}`` plus a few more keys (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import email
import email.message
import email.policy
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.servers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _harness

from _harness import (  # noqa: E402
    SMTP_SINK,
    SMTP_SOURCE,
    BenchmarkError,
    MachineCpu,
    Processes,
    ProcessWatch,
    Sink,
    all_cpu_seconds,
    children,
    command_line,
    lf_copy,
    process_tree,
    run,
    smtp_source,
    tree_cpu_seconds,
    wait_until,
)

from tests.servers import free_port, postgres_server, redis_server  # noqa: E402

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
SESSION = 61
FROM_ADDRESS = "Mo 人工智能俱乐部 <salon@example.org>"
BOUNCE_ADDRESS = "bounces@example.org"
CEILING_SENDER = "ceiling@bench.invalid"
NAMES = ("张三", "李雷", "Ann O'Neil", "", "韩梅梅", "Zoë & co", "欧阳娜娜", "Wang Wei")


def address(i: int) -> str:
    """The address of benchmark subscriber ``i``."""
    return f"reader{i:07d}@example.org"


def write_subscribers(path: Path, n: int) -> None:
    """A CSV of ``n`` subscribers (``email,name``), as an organizer would import it."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        writer.writerows((address(i), NAMES[i % len(NAMES)]) for i in range(n))


def upcoming_record(folder: Path) -> Path:
    """Session no. 61's sample record moved to 19:30 a week from now (its length kept)."""
    record = yaml.safe_load((ROOT / "examples" / "sessions" / f"{SESSION:03d}.yaml").read_text())
    starts, ends = (_aware(record[key]) for key in ("starts_at", "ends_at"))
    zone = ZoneInfo(str(record.get("timezone") or "Asia/Shanghai"))
    day = (datetime.now(UTC) + timedelta(days=7)).astimezone(zone).date()
    moved = datetime(day.year, day.month, day.day, 19, 30, tzinfo=zone)
    record.update(starts_at=moved.isoformat(), ends_at=(moved + (ends - starts)).isoformat())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SESSION:03d}.yaml"
    path.write_text(yaml.safe_dump(record, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _aware(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Worker:
    """One ``newsletter worker`` process (Celery's main process) and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    name: str

    def pool_children(self) -> list[int]:
        return children(self.process.pid)


def start_worker(
    processes: Processes, env: dict[str, str], cwd: Path, name: str, *, beat: bool
) -> Worker:
    """Start a worker; return once Celery logs that it is ready (60 s at most)."""
    log = cwd / f"{name}.log"
    argv = [NEWSLETTER, "worker", "--concurrency", "1", "--loglevel", "INFO"]
    if beat:
        argv.append("--beat")
    with log.open("wb") as out:
        process = processes.start(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    return Worker(process, log, name)


def wait_ready(worker: Worker) -> None:
    """Wait for the worker's `ready.` line and its pool child."""

    def ready() -> bool:
        if worker.process.poll() is not None:
            raise BenchmarkError(
                f"{worker.name} exited:\n{worker.log.read_text(errors='replace')[-3000:]}"
            )
        return b" ready." in worker.log.read_bytes() and bool(worker.pool_children())

    wait_until(ready, timeout=60, what=f"{worker.name} to be ready")


def postmaster_pid(pg_directory: Path) -> int:
    """The PostgreSQL server's pid (first line of postmaster.pid)."""
    return int((pg_directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0])


def campaign_status(env: dict[str, str], cwd: Path, campaign_id: int) -> str:
    """`newsletter campaign status ID`'s one line."""
    line = run([NEWSLETTER, "campaign", "status", str(campaign_id)], env=env, cwd=cwd)
    return " ".join(line.split())  # Rich wraps at 80 columns when not on a terminal


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM ends the benchmark through its ``finally`` blocks, like Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def mb(kb: int) -> float:
    return round(kb / 1024, 1)


def main() -> None:
    """Set everything up, measure the ceiling, send, measure again, print, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="campaign size (subscribers)")
    parser.add_argument(
        "--capture",
        choices=("envelope", "dump"),
        default="envelope",
        help="how the sink's deliveries are identified: its -v log of envelopes (default), "
        "or every message dumped to tmpfs and read for its Message-ID (slows the sink)",
    )
    parser.add_argument(
        "--ceiling-count",
        type=int,
        default=None,
        help="messages smtp-source sends for each ceiling measurement (default: min(N, 20000))",
    )
    parser.add_argument("--sessions", type=int, default=4, help="smtp-source sessions")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--beat", action="store_true", help="run the scheduler in worker 1")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra NEWSLETTER_* setting for every command and worker (repeatable)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each worker's pool process with py-spy during the send (raw stacks)",
    )
    parser.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="with --py-spy: only the samples of threads holding the GIL (where the Python "
        "CPU goes) instead of every thread, waiting ones included (--idle)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up after this many seconds without a new message at the sink",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--dkim",
        choices=("off", "rsa", "ed25519"),
        default="off",
        help="sign every mail with a fresh RSA-2048 or Ed25519 key (default: unsigned)",
    )
    parser.add_argument(
        "--peer",
        type=int,
        default=0,
        metavar="M",
        help="then send the same invitation to M subscribers with django-newsletter 1.2 (its "
        "own venv, benchmarks/peers/.venv) into the same sink, and compare",
    )
    args = parser.parse_args()
    n = args.n
    ceiling_count = args.ceiling_count or min(n, 20_000)

    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: apt-get install postfix (it ships both tools)")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")

    work = Path(tempfile.mkdtemp(prefix="bench-send-"))
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    sink_dir = Path(tempfile.mkdtemp(prefix="bench-send-sink-", dir=shm))
    processes = Processes()
    with terminated_as_exit(), contextlib.ExitStack() as stack:
        stack.callback(_cleanup, work, sink_dir, keep=args.keep)
        pg = stack.enter_context(postgres_server())
        redis = stack.enter_context(redis_server())
        # Unwound first: workers stop while PostgreSQL and Redis still answer them.
        stack.callback(processes.stop_all)
        if pg is None:
            raise SystemExit("PostgreSQL is missing: apt-get install postgresql")
        assert redis is not None and redis.process is not None

        ceiling_sender = CEILING_SENDER.encode()
        sink = Sink(
            processes,
            sink_dir,
            dump=args.capture == "dump",
            group=lambda sender: "ceiling" if sender == ceiling_sender else "campaign",
        )
        stack.callback(sink.stop)
        sink.start(free_port())

        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        env.update(
            NEWSLETTER_DATABASE_URL=pg.url,
            NEWSLETTER_BROKER_URL=redis.url,
            NEWSLETTER_MAIL_URL=f"smtp://127.0.0.1:{sink.port}",
            NEWSLETTER_SECRET_KEY="benchmark-secret-key",
            NEWSLETTER_ADMIN_TOKEN="benchmark-admin-token",
            NEWSLETTER_BASE_URL="https://salon.example.org",
            NEWSLETTER_FROM_ADDRESS=FROM_ADDRESS,
            NEWSLETTER_BOUNCE_ADDRESS=BOUNCE_ADDRESS,
            NEWSLETTER_VAR_DIR=str(work / "var"),
        )
        if args.dkim != "off":
            key_file = work / f"dkim-{args.dkim}.pem"
            options = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            if args.dkim == "ed25519":
                options = ["-algorithm", "ed25519"]
            run(["openssl", "genpkey", *options, "-out", str(key_file)], timeout=120)
            env.update(NEWSLETTER_DKIM_SELECTOR="bench", NEWSLETTER_DKIM_PRIVATE_KEY=str(key_file))
        for item in args.env:
            key, _, value = item.partition("=")
            env[key if key.startswith("NEWSLETTER_") else f"NEWSLETTER_{key}"] = value

        def newsletter(*argv: str, timeout: float = 120.0) -> str:
            return run([NEWSLETTER, *argv], env=env, cwd=work, timeout=timeout)

        # ------------------------------------------------------------ setup (not timed)
        started = time.perf_counter()
        newsletter("sessions", "import", str(ROOT / "examples" / "sessions"))
        # The sample sessions are all past; a real invitation is for a session ahead, with
        # RSVP buttons (as the demo does): no. 61 moved to next week, imported again.
        newsletter("sessions", "import", str(upcoming_record(work / "upcoming")))
        people = work / "subscribers.csv"
        write_subscribers(people, n)
        newsletter("subscribers", "import", str(people), timeout=max(300.0, n / 500))
        eml = work / "invitation.eml"
        newsletter("preview", str(SESSION), "--to", address(0), "--out", str(eml))
        message_file = lf_copy(eml, work / "invitation.lf")
        campaign_id = int(
            newsletter("campaign", "create", str(SESSION), timeout=max(120.0, n / 1000)).split()[-1]
        )
        setup_s = time.perf_counter() - started
        message_bytes = eml.stat().st_size

        workers = [
            start_worker(processes, env, work, f"worker{i + 1}", beat=args.beat and i == 0)
            for i in range(args.workers)
        ]
        for worker in workers:
            wait_ready(worker)

        print(
            f"machine: {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
        )
        print(
            f"setup (not timed): {n:,} subscribers imported, campaign {campaign_id} created, "
            f"{len(workers)} workers ready in {setup_s:.1f} s"
        )
        print(
            f"message: session no. {SESSION}, {message_bytes:,} bytes as sent "
            f"(newsletter preview {SESSION} --out {eml.name})"
        )
        print(
            f"sink: smtp-sink on 127.0.0.1:{sink.port}, capture={args.capture}"
            + (" (every message dumped to tmpfs)" if sink.dump else " (-c -v, no dump)")
        )

        def ceiling(phase: str) -> float:
            sink.begin(phase)
            rate = smtp_source(
                sink,
                message_file,
                count=ceiling_count,
                sessions=args.sessions,
                sender=CEILING_SENDER,
                recipient="sink@bench.invalid",
                timeout=max(120.0, ceiling_count / 50),
            )
            print(
                f"ceiling ({phase}): smtp-source, {args.sessions} sessions, "
                f"{ceiling_count:,} messages: {rate:,.0f} msg/s"
            )
            return rate

        ceiling_before = ceiling("ceiling-before")

        # ------------------------------------------------------------ the timed send
        roles = {w.process.pid: w.name for w in workers}
        watched = {
            "postgres": postmaster_pid(pg.directory),
            "redis": redis.process.pid,
            "smtp-sink": sink.pid,
        }
        spies = (
            _start_py_spy(processes, args.py_spy, workers, gil=args.py_spy_gil)
            if args.py_spy
            else []
        )
        with ProcessWatch(roles) as watch:
            base = sink.count()
            sink.begin("pipeline")
            cpu_before = {name: tree_cpu_seconds(pid) for name, pid in watched.items()}
            cpu_before |= {w.name: tree_cpu_seconds(w.process.pid) for w in workers}
            everyone_before = all_cpu_seconds()
            machine_before = MachineCpu.now()
            self_before = time.process_time()
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            sender = processes.start(
                [NEWSLETTER, "campaign", "send", str(campaign_id)], env=env, cwd=work
            )
            first = last_change = t_end = None
            seen_count = 0
            deadline = t0 + max(600.0, n / 100)
            while True:
                now = time.perf_counter()
                count = sink.count() - base
                if count != seen_count:
                    seen_count, last_change = count, now
                    if first is None:
                        first = now
                if count >= n:
                    t_end = now
                    break
                if now > deadline or now - (last_change or t0) > args.stall:
                    break
                time.sleep(0.01)
            t_stop = t_end or time.perf_counter()
            machine = MachineCpu.now() - machine_before
            self_cpu = time.process_time() - self_before
            cpu_after = {name: tree_cpu_seconds(pid) for name, pid in watched.items()}
            cpu_after |= {w.name: tree_cpu_seconds(w.process.pid) for w in workers}
            everyone_after = all_cpu_seconds()
            for spy in spies:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(spy.pid, signal.SIGINT)
            # The send command exits long before the last message; reaped now, its CPU time
            # is the only child usage added since the clock started.
            with contextlib.suppress(subprocess.TimeoutExpired):
                sender.wait(60)
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            send_cpu = (children_after.ru_utime - children_before.ru_utime) + (
                children_after.ru_stime - children_before.ru_stime
            )
            # The last marks reach the database after the last message: wait for "finished".
            status = wait_until(
                lambda: (
                    line
                    if " finished;" in (line := campaign_status(env, work, campaign_id))
                    or t_end is None
                    else None
                ),
                timeout=120,
                interval=0.5,
                what=f"campaign {campaign_id} to finish",
            )
            finished_s = time.perf_counter() - t0
            time.sleep(1.0)  # anything a worker still sends after "finished" lands in this phase
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)

        ceiling_after = ceiling("ceiling-after")
        peer = _run_peer(sink, eml, args.peer) if args.peer else None
        seen = sink.envelopes()["pipeline"]
        if sink.dump:
            seen = sink.dumped("campaign")

        # ------------------------------------------------------------ the figures
        elapsed = t_stop - t0
        delivered = seen.messages
        if sink.dump:
            duplicates = seen.extra_copies(seen.message_ids)
        else:
            duplicates = max(seen.extra_copies(seen.senders), seen.extra_copies(seen.recipients))
        msgs_per_s = delivered / elapsed
        ceiling_rate = (ceiling_before + ceiling_after) / 2
        ratio = msgs_per_s / ceiling_rate
        steady = (delivered - 1) / (t_stop - first) if first is not None and t_stop > first else 0.0

        print()
        print(f"campaign {campaign_id}: {status}")
        print(
            f"sink received (pipeline): {delivered:,} messages; distinct recipients "
            f"{len(seen.recipients):,}; distinct VERP senders {len(seen.senders):,}"
            + (f"; distinct Message-IDs {len(seen.message_ids):,}" if sink.dump else "")
        )
        print(f"duplicates (copies beyond the first, as the sink saw them): {duplicates}")
        if delivered < n:
            print(f"INCOMPLETE: {n - delivered:,} of {n:,} messages never reached the sink")
        first_s = (first - t0) if first is not None else float("nan")
        print(
            f"end to end: {delivered:,} messages in {elapsed:.2f} s = {msgs_per_s:,.0f} msg/s "
            f"(first message after {first_s:.2f} s; first to last {steady:,.0f} msg/s; "
            f"campaign marked finished after {finished_s:.1f} s)"
        )
        print(
            f"ceiling: {ceiling_rate:,.0f} msg/s (before {ceiling_before:,.0f}, "
            f"after {ceiling_after:,.0f})"
        )
        print(f"ratio end to end / ceiling: {ratio:.2f}")
        if peer is not None:
            print(
                f"peer: django-newsletter {peer['version']}, same invitation, same sink: "
                f"{peer['n']:,} messages in {peer['seconds']:.2f} s = {peer['msgs_per_s']:,.1f} "
                f"msg/s (the sink counted {peer['delivered']:,}); ours / peer = "
                f"{msgs_per_s / peer['msgs_per_s']:.1f}×"
            )

        print("peak RSS (VmHWM) per worker: the pool process that runs the tasks; main process")
        task_rss: list[float] = []
        parent_rss: list[float] = []
        for worker in workers:
            parent = next(iter(watch.of(worker.name)), None)
            kids = watch.of(f"{worker.name}/child")
            task_rss.append(mb(max((k.hwm_kb for k in kids), default=0)))
            parent_rss.append(mb(parent.hwm_kb if parent else 0))
            print(
                f"  {worker.name}: pool process {task_rss[-1]:.1f} MB "
                f"({len(kids)} process{'es' if len(kids) != 1 else ''}); "
                f"main process {parent_rss[-1]:.1f} MB"
            )

        print(
            f"CPU during the timed send ({elapsed:.1f} s wall × {os.cpu_count()} cores; "
            f"busy {machine.busy:.1f}, idle {machine.idle:.1f}, stolen by the hypervisor "
            f"{machine.steal:.1f} core-s):"
        )
        known = 0.0
        rows = [(w.name, cpu_after[w.name] - cpu_before[w.name]) for w in workers]
        rows.append(("workers", sum(used for _, used in rows)))
        rows += [(name, cpu_after[name] - cpu_before[name]) for name in watched]
        for name, used in rows:
            known += used if name != "workers" else 0.0
            per_message = (
                f"  {used / delivered * 1e6:6.0f} µs per message sent" if delivered else ""
            )
            print(
                f"  {name:<10} {used:7.1f} core-s  {used / elapsed * 100:5.0f} % of a core"
                + (per_message if not name.startswith("worker") or name == "workers" else "")
            )
        print(f"  {'send cmd':<10} {send_cpu:7.1f} core-s  (newsletter campaign send: start-up)")
        print(f"  {'benchmark':<10} {self_cpu:7.1f} core-s")
        # Tick-sampled accounting: the remainder can come out a little below zero.
        other = max(0.0, machine.busy - known - self_cpu - send_cpu)
        mine = {os.getpid(), sender.pid} | {
            p for root in [*roles, *watched.values()] for p in process_tree(root)
        }
        strangers = sorted(
            (
                (used - everyone_before.get(pid, (name, 0.0))[1], name)
                for pid, (name, used) in everyone_after.items()
                if pid not in mine
            ),
            reverse=True,
        )[:6]
        print(
            f"  {'others':<10} {other:7.1f} core-s  (processes not ours: "
            + (", ".join(f"{name} {used:.1f}" for used, name in strangers if used >= 0.05) or "-")
            + ")"
        )
        problems = _worker_log_problems(workers)
        if problems:
            print("worker logs: " + "; ".join(problems))
        print(f"load average at end: {os.getloadavg()[0]:.2f}")

        summary = {
            "n": n,
            "delivered": delivered,
            "duplicates": duplicates,
            "msgs_per_s": round(msgs_per_s, 1),
            "ceiling_msgs_per_s": round(ceiling_rate, 1),
            "ratio": round(ratio, 3),
            "worker_peak_rss_mb": task_rss,
            "worker_main_peak_rss_mb": parent_rss,
            "seconds": round(elapsed, 2),
            "ceiling_before": round(ceiling_before, 1),
            "ceiling_after": round(ceiling_after, 1),
            "message_bytes": message_bytes,
            "capture": args.capture,
            "dkim": args.dkim,
            "load_at_end": round(os.getloadavg()[0], 2),
        }
        if peer is not None:
            summary |= {
                "peer_msgs_per_s": peer["msgs_per_s"],
                "peer_n": peer["n"],
                "peer_delivered": peer["delivered"],
                "ours_over_peer": round(msgs_per_s / peer["msgs_per_s"], 1),
            }
        print(json.dumps(summary))
        if args.keep:
            print(f"kept: {work} and {sink_dir}", file=sys.stderr)
        if args.py_spy:
            print(f"py-spy stacks: {args.py_spy}", file=sys.stderr)


PEER_VENV = Path(__file__).resolve().parent / "peers" / ".venv"
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "django_newsletter.py"
# django-newsletter imports sorl-thumbnail (or easy-thumbnails) without depending on either.
PEER_REQUIREMENTS = ("django-newsletter==1.2.*", "sorl-thumbnail")


def _peer_python() -> Path:
    """The peer venv's python, made (with django-newsletter 1.2 from PyPI) when missing."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"peer: creating {PEER_VENV} with {', '.join(PEER_REQUIREMENTS)} (once)")
        run([sys.executable, "-m", "venv", str(PEER_VENV)], timeout=300)
        run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], timeout=900)
    return python


def _run_peer(sink: Sink, eml: Path, count: int) -> dict[str, Any]:
    """django-newsletter sends our invitation's two parts to ``count`` people into ``sink``."""
    python = _peer_python()
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    parts = {}
    for kind in ("html", "plain"):
        part = message.get_body((kind,))
        assert part is not None, f"the preview has no {kind} part"
        parts[kind] = eml.with_suffix(f".{kind}")
        parts[kind].write_text(str(part.get_content()), encoding="utf-8")
    sink.begin("peer")
    base = sink.count()
    argv = [str(python), str(PEER_SCRIPT), "--port", str(sink.port), "--n", str(count)]
    argv += ["--html", str(parts["html"]), "--text", str(parts["plain"])]
    argv += ["--subject", str(message["Subject"]), "--name", NAMES[0]]
    # Its own packages only: our `newsletter` must not shadow django-newsletter's.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    output = run(argv, env=env, cwd=eml.parent, timeout=max(600.0, count / 20))
    line = output.strip().splitlines()[-1]
    figures: dict[str, Any] = json.loads(line)
    figures["delivered"] = sink.count() - base
    return figures


def _start_py_spy(
    processes: Processes, directory: Path, workers: list[Worker], *, gil: bool
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (raw stacks) on each worker's pool process, until SIGINT: every
    thread's stack (``--idle``), or with ``gil`` only the thread holding the GIL."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for worker in workers:
        for child in worker.pool_children():
            out = directory / f"{worker.name}-{child}.txt"
            argv = [
                spy,
                "record",
                "--pid",
                str(child),
                "--rate",
                "50",  # samples/s: py-spy's own CPU stays small next to the worker's
                "--format",
                "raw",
                "--gil" if gil else "--idle",
                "--nonblocking",
                "--output",
                str(out),
            ]
            spies.append(processes.start(argv))
            print(f"py-spy: {command_line(child)[:60]} (pid {child}) → {out}")
    time.sleep(1.0)  # let py-spy attach before the clock starts
    return spies


def _worker_log_problems(workers: list[Worker]) -> list[str]:
    problems = []
    for worker in workers:
        text = worker.log.read_text(errors="replace")
        for word in ("ERROR", "WARNING", "Traceback"):
            count = text.count(word)
            if count:
                problems.append(f"{worker.name}: {count} × {word}")
    return problems


def _cleanup(*paths: Path, keep: bool) -> None:
    if keep:
        return
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        raise SystemExit(f"send benchmark: {exc}") from None
