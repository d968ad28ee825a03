"""RSVP confirmations per second under a burst, on PostgreSQL, and proof none was lost.

Starts a throwaway PostgreSQL and Redis (the broker the confirmation mails are queued on),
imports one upcoming session (no seat limit, or --capacity seats) and N subscribers,
serves the app with ``newsletter serve --workers W`` and, from a second process, POSTs one
confirmation per subscriber (the request a person's button press makes, with the form token
of the page) with C requests in flight. Prints requests/s, p50/p99 latency, and the number of
answers the database recorded, which must equal the number of requests sent.

Run: ``.venv/bin/python benchmarks/rsvp.py [--n 20000] [--concurrency 32] [--workers 2]``.
The last line is one JSON object: ``{"sent", "recorded", "requests_per_s", "p50_ms",
"p99_ms"}`` (plus the number of non-200 answers, of confirmation mails queued, and the
server's CPU milliseconds per confirmation, which other load on the machine barely moves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
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


Results = tuple[list[float], int, float]  # latencies (s), non-200 answers, wall seconds


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

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        out.put((latencies, failures, time.perf_counter() - began))

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

            deadline = time.monotonic() + 30
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
            cpu_before = server_cpu_s(server.pid)
            load.start()
            latencies, failures, seconds = results.get(timeout=900)
            cpu_ms = (server_cpu_s(server.pid) - cpu_before) * 1000 / max(1, len(latencies))
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
    print(f"server CPU per confirmation: {cpu_ms:.2f} ms (all server processes)")
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
                "waitlist_in_order": order["in_order"],
                "seats_counter_right": order["counter"] == order["seats"],
            }
        )
    )


if __name__ == "__main__":
    main()
