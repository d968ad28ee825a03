"""How close the shared rate limit stays to its target over a minute, for 1 and N processes.

Each process builds its own ``RedisTokenBucket`` on one key (as Celery worker processes do)
and takes tokens as fast as the bucket allows, ``--chunk`` at a time (a batch slice). All
start at the same wall-clock instant; the granted tokens over the window, divided by its
length, are compared with the limit. Also reported: Redis round trips per granted token.

Run: ``.venv/bin/python benchmarks/ratelimit.py [--rate 200] [--seconds 60] [--processes 1 3]
[--chunk 1] [--redis-url redis://…]``. Without ``--redis-url`` a throwaway redis-server is
started (tests/servers.py). The last line of output is one JSON object: for each process count,
``{"processes", "granted", "seconds", "rate", "error_pct", "round_trips_per_token"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from newsletter.ratelimit import RedisTokenBucket


def _worker(
    url: str,
    key: str,
    rate: float,
    chunk: int,
    seconds: float,
    ready: Barrier,
    go: Event,
    start: Synchronized[float],
    out: Queue[tuple[int, int]],
) -> None:
    limiter = RedisTokenBucket(url, key, rate)
    calls = 0
    original = limiter._try_take

    def counted(n: int) -> int:
        nonlocal calls
        calls += 1
        return original(n)

    limiter._try_take = counted  # type: ignore[method-assign]
    ready.wait()
    go.wait()
    begin, end = start.value, start.value + seconds
    time.sleep(max(0.0, begin - time.time()))
    granted = 0
    calls = 0
    while True:
        limiter.acquire(chunk)
        if time.time() > end:
            break
        granted += chunk
    limiter.close()
    out.put((granted, calls))


def run(url: str, rate: float, processes: int, chunk: int, seconds: float) -> dict[str, Any]:
    """Measure one configuration on a fresh key."""
    ctx = multiprocessing.get_context("spawn")
    key = f"bench:ratelimit:{uuid.uuid4().hex}"
    out: Queue[tuple[int, int]] = ctx.Queue()
    ready = ctx.Barrier(processes + 1)
    go = ctx.Event()
    start: Synchronized[float] = ctx.Value("d", 0.0)
    workers = [
        ctx.Process(target=_worker, args=(url, key, rate, chunk, seconds, ready, go, start, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    ready.wait(timeout=60)
    start.value = time.time() + 0.2
    go.set()
    results = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    granted = sum(g for g, _ in results)
    calls = sum(c for _, c in results)
    measured = granted / seconds
    return {
        "processes": processes,
        "chunk": chunk,
        "granted": granted,
        "seconds": seconds,
        "rate": round(measured, 2),
        "error_pct": round((measured - rate) / rate * 100, 2),
        "round_trips_per_token": round(calls / max(granted, 1), 3),
    }


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.servers import redis_server

    with redis_server() as server:
        if server is None:
            raise SystemExit("redis-server is not installed; pass --redis-url")
        yield server.url


def main() -> None:
    """Parse arguments, run each process count, print a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    rows = []
    with _redis(args.redis_url) as url:
        for count in args.processes:
            row = run(url, args.rate, count, args.chunk, args.seconds)
            rows.append(row)
            print(
                f"{count} process(es), chunk {args.chunk}: {row['granted']} tokens in "
                f"{args.seconds:g} s = {row['rate']:.2f}/s for a limit of {args.rate:g}/s "
                f"({row['error_pct']:+.2f} %), {row['round_trips_per_token']} round trips/token",
                flush=True,
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
