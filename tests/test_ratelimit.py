"""The sending rate limit, on a real Redis: shared by processes, bounded bursts, outages.

Timings are measured, not faked, so every test checks a lower bound too: a limiter that lets
everything through fails them, and so does one that is much too slow.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from newsletter.config import Settings
from newsletter.ratelimit import (
    LocalTokenBucket,
    NoLimit,
    RateLimiter,
    RateLimiterUnavailable,
    RedisTokenBucket,
    limiter_for,
)
from tests.servers import Server, _wait_for_port, redis_server

if TYPE_CHECKING:
    from tests.conftest import Configure

pytestmark = pytest.mark.redis

RATE = 200.0  # tokens per second in the rate tests
TOLERANCE = 0.10  # the ±10 % the limiter promises


@pytest.fixture
def key() -> str:
    """A bucket of its own for each test."""
    return f"test:ratelimit:{uuid.uuid4().hex}"


def _count_grants(limiter: RateLimiter, chunk: int, start: float, end: float) -> int:
    """Acquire ``chunk`` tokens at a time from ``start`` until ``end`` (wall clock)."""
    time.sleep(max(0.0, start - time.time()))
    granted = 0
    while True:
        limiter.acquire(chunk)
        if time.time() > end:
            return granted
        granted += chunk


def _worker(
    url: str,
    key: str,
    chunk: int,
    seconds: float,
    ready: Barrier,
    go: Event,
    start: Synchronized[float],
    out: Queue[int],
) -> None:
    # Runs in a spawned process with its own limiter, as a Celery worker process would.
    limiter = RedisTokenBucket(url, key, RATE)
    ready.wait()
    go.wait()
    out.put(_count_grants(limiter, chunk, start.value, start.value + seconds))
    limiter.close()


def _shared_rate(url: str, key: str, chunks: list[int], seconds: float) -> int:
    """Run one process per chunk size on the same bucket; return the tokens granted in all."""
    ctx = multiprocessing.get_context("spawn")  # no forked copy of pytest's threads or sockets
    out: Queue[int] = ctx.Queue()
    ready = ctx.Barrier(len(chunks) + 1)
    go = ctx.Event()
    start: Synchronized[float] = ctx.Value("d", 0.0)
    processes = [
        ctx.Process(target=_worker, args=(url, key, chunk, seconds, ready, go, start, out))
        for chunk in chunks
    ]
    for process in processes:
        process.start()
    # Every process has started and imported; then all begin at the same wall-clock time.
    ready.wait(timeout=60)
    start.value = time.time() + 0.1
    go.set()
    granted = sum(out.get(timeout=seconds + 30) for _ in processes)
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    return granted


def _assert_rate(granted: int, seconds: float, burst: float) -> None:
    # A token bucket grants at most burst + rate·T in T seconds; at least rate·T less 10 %.
    assert granted <= burst + RATE * seconds + RATE * 0.02, f"{granted / seconds:.1f}/s"
    assert granted >= RATE * seconds * (1 - TOLERANCE), f"{granted / seconds:.1f}/s"
    assert abs(granted / seconds - RATE) <= RATE * TOLERANCE


def test_three_processes_share_one_limit(redis_url: str, key: str) -> None:
    granted = _shared_rate(redis_url, key, [1, 1, 5], seconds=5.0)
    _assert_rate(granted, 5.0, RedisTokenBucket(redis_url, key, RATE).burst)


def test_one_process_gets_the_limit(redis_url: str, key: str) -> None:
    limiter = RedisTokenBucket(redis_url, key, RATE)
    start = time.time()
    granted = _count_grants(limiter, 1, start, start + 3.0)
    limiter.close()
    _assert_rate(granted, 3.0, limiter.burst)


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_a_burst_is_bounded(redis_url: str, key: str, kind: str) -> None:
    limiter: RateLimiter = (
        RedisTokenBucket(redis_url, key, rate=100, burst=10)
        if kind == "redis"
        else LocalTokenBucket(rate=100, burst=10)
    )
    time.sleep(0.2)  # idle time must not let the bucket grow past its burst
    start = time.monotonic()
    granted = 0
    while time.monotonic() - start < 0.3:
        limiter.acquire()
        granted += 1
    elapsed = time.monotonic() - start
    limiter.close()
    # The full bucket at once, then the refill: nothing more.
    assert 10 + 100 * 0.3 * (1 - TOLERANCE) <= granted <= 10 + 100 * elapsed + 1


def test_default_burst_is_a_tenth_of_a_second() -> None:
    assert RedisTokenBucket("redis://127.0.0.1:1/0", "k", 500).burst == 50
    assert LocalTokenBucket(500).burst == 50
    assert LocalTokenBucket(2).burst == 1  # never below one token


def test_acquire_more_than_the_burst(redis_url: str, key: str) -> None:
    limiter = RedisTokenBucket(redis_url, key, rate=100, burst=5)
    start = time.monotonic()
    limiter.acquire(50)  # ten times the burst: taken in pieces
    elapsed = time.monotonic() - start
    limiter.close()
    # 5 at once, the other 45 at 100/s.
    assert 0.45 * (1 - TOLERANCE) <= elapsed <= 0.45 * 1.5 + 0.1


def test_acquire_zero_is_free_and_negative_refused(redis_url: str, key: str) -> None:
    limiter = RedisTokenBucket(redis_url, key, rate=1, burst=1)
    limiter.acquire(1)
    start = time.monotonic()
    limiter.acquire(0)
    assert time.monotonic() - start < 0.1
    with pytest.raises(ValueError):
        limiter.acquire(-1)
    limiter.close()


def test_state_lives_in_redis_with_an_expiry(redis_url: str, key: str) -> None:
    limiter = RedisTokenBucket(redis_url, key, rate=10, burst=2)
    limiter.acquire(1)
    client = redis.Redis.from_url(redis_url)
    state = client.hgetall(key)
    server_us = client.time()
    # The stamp is the server's clock (µs), written at full precision.
    now_us = server_us[0] * 1_000_000 + server_us[1]
    assert 0 <= now_us - int(state[b"ts"]) < 1_000_000
    assert float(state[b"tokens"]) == pytest.approx(1.0, abs=0.2)
    # An idle bucket disappears once it would be full again anyway.
    assert 0 < client.pttl(key) <= 2 / 10 * 1000 + 1000
    client.close()
    limiter.close()


def test_script_reloaded_after_flush(redis_url: str, key: str) -> None:
    limiter = RedisTokenBucket(redis_url, key, rate=100)
    limiter.acquire()
    client = redis.Redis.from_url(redis_url)
    client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    limiter.acquire()
    assert client.exists(key)
    client.close()
    limiter.close()


def test_local_bucket_rate_with_threads() -> None:
    limiter = LocalTokenBucket(RATE)
    start = time.time()
    end = start + 2.0
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(_count_grants(limiter, 1, start, end)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _assert_rate(sum(counts), 2.0, limiter.burst)


def test_local_bucket_more_than_the_burst() -> None:
    limiter = LocalTokenBucket(rate=100, burst=5)
    start = time.monotonic()
    limiter.acquire(50)
    assert 0.45 * (1 - TOLERANCE) <= time.monotonic() - start <= 0.45 * 1.5 + 0.1


def test_no_limit_returns_at_once() -> None:
    limiter = NoLimit()
    start = time.monotonic()
    for _ in range(10_000):
        limiter.acquire(10)
    assert time.monotonic() - start < 1.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LocalTokenBucket(0)
    with pytest.raises(ValueError):
        LocalTokenBucket(10, burst=0.5)
    with pytest.raises(ValueError):
        RedisTokenBucket("redis://127.0.0.1:1/0", "k", float("nan"))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, NoLimit),
        ({"rate_limit": "0"}, NoLimit),
        ({"rate_limit": "-5"}, NoLimit),
        ({"rate_limit": "50"}, LocalTokenBucket),
        ({"rate_limit": "50", "broker_url": "memory://"}, LocalTokenBucket),
        ({"rate_limit": "50", "broker_url": "redis://127.0.0.1:1/0"}, RedisTokenBucket),
        ({"rate_limit": "50", "broker_url": "rediss://127.0.0.1:1/0"}, RedisTokenBucket),
    ],
)
def test_limiter_for(configure: Configure, values: dict[str, str], expected: type) -> None:
    settings: Settings = configure(**values)
    limiter = limiter_for(settings)
    try:
        assert type(limiter) is expected
        if values.get("rate_limit", "0") == "50":
            assert limiter.rate == 50  # type: ignore[attr-defined]
    finally:
        limiter.close()


# --- Redis going away -------------------------------------------------------------------------


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A redis-server on a given port (a restart keeps the port, as in compose)."""
    binary = shutil.which("redis-server")
    assert binary is not None
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port)
    return process


@pytest.fixture
def own_redis() -> Iterator[Server]:
    """A Redis server this test may stop: not the session's."""
    with redis_server() as server:
        if server is None:  # as conftest's redis_url: skip locally, fail under CI=true
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("Redis is required in CI but could not be started")
            pytest.skip("Redis is not installed")
        yield server


def _stop(server: Server) -> None:
    assert server.process is not None
    server.process.terminate()
    server.process.wait(10)


def test_redis_restart_waits_then_continues(
    own_redis: Server, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisTokenBucket(own_redis.url, key, rate=100, outage_timeout=20)
    limiter.acquire(5)
    _stop(own_redis)
    restarted: list[subprocess.Popen[bytes]] = []

    def restart() -> None:
        time.sleep(1.0)
        restarted.append(_start_redis(own_redis.port, own_redis.directory))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="newsletter.ratelimit"):
            start = time.monotonic()
            limiter.acquire(3)  # blocks through the outage, no crash
            elapsed = time.monotonic() - start
            limiter.acquire(3)
        thread.join()
        assert 1.0 <= elapsed < 5.0
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1  # once per outage, not once per retry
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        # The new server holds the bucket, the script loaded afresh into it.
        assert redis.Redis(port=own_redis.port).exists(key)
    finally:
        thread.join()
        limiter.close()
        for process in restarted:
            process.terminate()
            process.wait(10)


def test_redis_gone_for_good_raises_a_clear_error(own_redis: Server, key: str) -> None:
    limiter = RedisTokenBucket(own_redis.url, key, rate=100, outage_timeout=1.0)
    limiter.acquire()
    _stop(own_redis)
    start = time.monotonic()
    with pytest.raises(RateLimiterUnavailable, match="unreachable for 1 s"):
        limiter.acquire()
    assert 1.0 <= time.monotonic() - start < 3.0
    limiter.close()
