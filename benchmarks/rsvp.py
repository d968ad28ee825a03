"""RSVP confirmations per second under a burst, on PostgreSQL, and proof none was lost.

Starts a throwaway PostgreSQL and Redis (the broker the confirmation mails are queued on),
imports one upcoming session (no seat limit, or --capacity seats) and N subscribers,
serves the app with ``newsletter serve --workers W`` and, from a second process, POSTs one
confirmation per subscriber (the request a person's button press makes, with the form token
of the page) with C requests in flight. Prints requests/s, p50/p99 latency, and the number of
answers the database recorded, which must equal the number of requests sent.

Run: ``.venv/bin/python benchmarks/rsvp.py [--n 20000] [--concurrency 32] [--workers 2]``.
The last line is one JSON object: ``{"sent", "recorded", "requests_per_s", "p50_ms",
"p99_ms"}`` (plus the number of non-200 answers, of confirmation mails queued, and the CPU
milliseconds per confirmation of the web processes, of PostgreSQL and of the client, which
other load on the machine barely moves). ``--profile PATH_TO_PY_SPY`` also samples the web
processes and prints the functions they spent the burst in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from newsletter.db import session_scope, utcnow  # noqa: E402
from newsletter.migrate import upgrade  # noqa: E402
from newsletter.rsvp.models import NoticeKind, Rsvp, RsvpEvent  # noqa: E402
from newsletter.sessions import repo as sessions_repo  # noqa: E402
from newsletter.sessions.models import SalonSession  # noqa: E402
from newsletter.sessions.service import import_records  # noqa: E402
from newsletter.tokens import Purpose, sign  # noqa: E402
from subscribers.models import Subscriber  # noqa: E402
from tests.servers import free_port, postgres_server, redis_server  # noqa: E402

KEYS = ["benchmark-secret-key"]
RECORD = """\
number: 99
series: 机器学习开发者沙龙
title: 压力测试
starts_at: {starts}
ends_at: {ends}
venue: {{mode: offline, name: 蒙民伟楼348室}}
talks: [{{kind: paper, title: A}}]
{registration}"""


def prepare(url: str, n: int, folder: Path, capacity: int | None = None) -> list[tuple[str, str]]:
    """The session, N subscribers, and for each the RSVP path and its form token."""
    upgrade(url)
    starts = utcnow() + timedelta(days=7)
    record = folder / "099.yaml"
    record.write_text(
        RECORD.format(
            starts=starts.isoformat(),
            ends=(starts + timedelta(hours=2)).isoformat(),
            registration=f"registration: {{capacity: {capacity}}}\n" if capacity else "",
        ),
        encoding="utf-8",
    )
    with session_scope(url) as db:
        import_records(db, [record], timezone="Asia/Shanghai")
        now = utcnow()
        db.execute(
            insert(Subscriber),
            [
                {
                    "email": f"b{i}@example.org",
                    "name": f"B{i}",
                    "locale": "zh-CN",
                    "status": "active",
                    "created_at": now,
                }
                for i in range(n)
            ],
        )
        salon = sessions_repo.get_by_number(db, 99)
        assert salon is not None
        ids = list(db.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        session_id = salon.id
    requests = []
    for subscriber_id in ids:
        payload = {"s": session_id, "u": subscriber_id}
        requests.append(
            (f"/rsvp/{sign(Purpose.RSVP, payload, KEYS)}", sign(Purpose.CSRF, payload, KEYS))
        )
    return requests


# latencies (s), non-200 answers, wall seconds, the client's own CPU seconds
Results = tuple[list[float], int, float, float]


def client(
    port: int,
    requests: list[tuple[str, str]],
    concurrency: int,
    out: multiprocessing.Queue[Results],
) -> None:
    """The load, from its own process: C requests in flight, one POST per subscriber, each
    on a new connection as from that person's browser (keep-alive connections opened at once
    would all land on one server process: uvicorn's workers share one listening socket).

    A bare asyncio HTTP/1.1 client (prebuilt request bytes, Content-Length framing): on two
    cores shared with the server, a full-featured client costs as much CPU as the server and
    would measure itself. Each latency runs from connecting to reading the last byte; a
    refused, reset or 30 s request counts as a failure, not as a lost measurement.
    """

    def request_bytes(path: str, csrf: str) -> bytes:
        body = f"answer=yes&csrf={csrf}".encode("ascii")
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    prepared = [request_bytes(path, csrf) for path, csrf in reversed(requests)]

    async def main() -> None:
        latencies: list[float] = []
        failures = 0

        async def one() -> None:
            nonlocal failures
            while prepared:
                started = time.perf_counter()
                try:
                    status = await asyncio.wait_for(exchange(prepared.pop()), timeout=30)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    status = b"error"
                latencies.append(time.perf_counter() - started)
                failures += status != b"200"

        async def exchange(request: bytes) -> bytes:
            """One confirmation on its own connection, like one person's browser; the status."""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                return status_line.split(b" ", 2)[1]
            finally:
                writer.close()

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        out.put((latencies, failures, time.perf_counter() - began, time.process_time() - cpu))

    asyncio.run(main())


def answer_order(db: Session) -> dict[str, Any]:
    """Whether the waitlist is in answer order: the order in which the answers were recorded
    is the order of their history rows (ids taken inside the statement that decided each
    answer); the waitlist, read in its own order, must list the same people in the same
    order, and every seated person must have answered before every waiting one."""
    waiting = list(
        db.scalars(
            select(Rsvp.subscriber_id)
            .where(Rsvp.waitlisted.is_(True))
            .order_by(Rsvp.queue_no, Rsvp.id)
        )
    )
    answered = list(
        db.scalars(
            select(RsvpEvent.subscriber_id).where(RsvpEvent.answer == "yes").order_by(RsvpEvent.id)
        )
    )
    seated = set(
        db.scalars(
            select(Rsvp.subscriber_id).where(Rsvp.answer == "yes", Rsvp.waitlisted.is_(False))
        )
    )
    seats = int(
        db.scalar(
            select(func.coalesce(func.sum(1 + Rsvp.guests), 0)).where(
                Rsvp.answer == "yes", Rsvp.waitlisted.is_(False)
            )
        )
        or 0
    )
    counter = int(db.scalar(select(func.max(SalonSession.seats_taken))) or 0)
    queued = [person for person in answered if person not in seated]
    return {
        "in_order": queued == waiting,
        "seated_first": set(answered[: len(seated)]) == seated,
        "waiting": len(waiting),
        "seats": seats,
        "counter": counter if waiting else seats,  # kept only under a seat limit
    }


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants, from
    /proc: the server's cost per request, whatever else shares the machine."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    return total


def postgres_pid(directory: Path) -> int:
    """The postmaster's process id (its backends are its children)."""
    return int((directory / "data" / "postmaster.pid").read_text().split()[0])


def children(pid: int) -> list[int]:
    """The direct children of process ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def start_profiles(py_spy: str, pids: list[int], folder: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling each web process for the burst (collapsed stacks, one file each)."""
    options = ["--rate", "250", "--format", "raw", "--nonblocking"]
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                *options,
                "--output",
                str(folder / f"web-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def profile_summary(folder: Path, top: int = 20) -> list[tuple[str, float, float]]:
    """Where the web processes spent their samples: per module (the file of the innermost
    frame, the "self" time) and per function (inclusive: counted once per stack it is in),
    as shares of all samples; the rows of both, the largest first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in folder.glob("web-*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = stack.split(";")
            place = frames[-1].rpartition("(")[2].split(":")[0]
            place = "/".join(place.split("/")[-2:])  # package/module.py
            own[place] = own.get(place, 0) + samples
            for frame in {frame.split(" (")[0] for frame in frames}:
                inclusive[frame] = inclusive.get(frame, 0) + samples
    rows = sorted(own.items(), key=lambda item: -item[1])[:top]
    rows += sorted(inclusive.items(), key=lambda item: -item[1])[:top]
    return [(name, samples / max(1, total), samples) for name, samples in rows]


def main() -> None:
    """Run the burst and print the figures, the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="confirmations to send")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument(
        "--workers", type=int, default=2, help="web server processes (one per core measured best)"
    )
    parser.add_argument(
        "--capacity", type=int, default=None, help="seats (default: no limit, no waitlist)"
    )
    parser.add_argument(
        "--profile",
        metavar="PY_SPY",
        default=None,
        help="path of a py-spy binary: sample the web processes and print where they spend it",
    )
    parser.add_argument("--profile-dir", default=None, help="keep py-spy's stacks there")
    args = parser.parse_args()
    with postgres_server() as pg, redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        if pg is None or redis is None:
            raise SystemExit("PostgreSQL and Redis are needed (apt-get install postgresql redis)")
        requests = prepare(pg.url, args.n, Path(tmp), args.capacity)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        env.update(
            NEWSLETTER_DATABASE_URL=pg.url,
            NEWSLETTER_SECRET_KEY=KEYS[0],
            NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}",
            NEWSLETTER_MAIL_URL=f"file://{tmp}/outbox",
            NEWSLETTER_BROKER_URL=redis.url,
        )
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "newsletter"),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            cwd=tmp,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx

            deadline = time.monotonic() + 120  # a loaded machine starts two workers slowly
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the web app did not start") from None
                    time.sleep(0.1)
            results: multiprocessing.Queue[Results] = multiprocessing.Queue()
            load = multiprocessing.Process(
                target=client,
                args=(port, requests, args.concurrency, results),
            )
            profiles = []
            if args.profile:
                workers = children(server.pid)
                profiles = start_profiles(args.profile, workers, Path(tmp))
                time.sleep(1)  # py-spy attached
            postmaster = postgres_pid(pg.directory)
            cpu_before, pg_before = server_cpu_s(server.pid), server_cpu_s(postmaster)
            load.start()
            latencies, failures, seconds, client_s = results.get(timeout=900)
            per = 1000 / max(1, len(latencies))
            cpu_ms = (server_cpu_s(server.pid) - cpu_before) * per
            pg_ms = (server_cpu_s(postmaster) - pg_before) * per
            for profile in profiles:
                profile.send_signal(signal.SIGINT)
                profile.wait(30)
            summary = profile_summary(Path(tmp)) if profiles else []
            if profiles and args.profile_dir:
                for path in Path(tmp).glob("web-*.txt"):
                    shutil.copy(path, args.profile_dir)
            load.join(30)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        with session_scope(pg.url) as db:
            recorded = int(db.scalar(select(func.count()).select_from(Rsvp)) or 0)
            # Each confirmed seat's mail waits in the outbox, committed with its answer.
            mails = int(
                db.scalar(
                    select(func.count()).where(RsvpEvent.notice == NoticeKind.confirmed.value)
                )
                or 0
            )
            order = answer_order(db)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    rate = len(latencies) / seconds
    print(
        f"{len(latencies):,} confirmations in {seconds:.1f} s with {args.concurrency} in "
        f"flight, {args.workers} server processes: {rate:,.0f} requests/s"
    )
    print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; non-200 answers: {failures}")
    print(f"answers recorded in PostgreSQL: {recorded:,} of {len(latencies):,} sent")
    print(f"confirmation mails queued with them: {mails:,}")
    print(
        f"CPU per confirmation: web {cpu_ms:.2f} ms (all server processes), PostgreSQL "
        f"{pg_ms:.2f} ms, client {client_s * per:.2f} ms"
    )
    for name, share, _samples in summary:
        print(f"  web profile {share:6.1%}  {name}")
    print(
        f"waitlist in answer order: {order['in_order']} ({order['waiting']:,} waiting, "
        f"{order['seats']:,} seats taken, counter {order['counter']:,}, "
        f"seated first: {order['seated_first']})"
    )
    print(
        json.dumps(
            {
                "sent": len(latencies),
                "recorded": recorded,
                "requests_per_s": round(rate, 1),
                "p50_ms": round(p50, 1),
                "p99_ms": round(p99, 1),
                "non_200": failures,
                "mails_queued": mails,
                "server_cpu_ms": round(cpu_ms, 3),
                "postgres_cpu_ms": round(pg_ms, 3),
                "client_cpu_ms": round(client_s * per, 3),
                "waitlist_in_order": order["in_order"],
                "seats_counter_right": order["counter"] == order["seats"],
            }
        )
    )


if __name__ == "__main__":
    main()
