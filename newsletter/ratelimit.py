"""The sending rate limit: ``NEWSLETTER_RATE_LIMIT`` messages per second, shared by all workers.

Three limiters share one small interface, :class:`RateLimiter`:

* :class:`RedisTokenBucket` — production. One token bucket in Redis, updated atomically by a Lua
  script that reads the Redis server's clock (``TIME``), so every worker process on every host
  draws from the same bucket and hosts with skewed clocks still agree.
* :class:`LocalTokenBucket` — the same semantics inside one process, for the embedded mode
  (no broker: tasks run in the process that started them, so only that process sends).
* :class:`NoLimit` — no rate limit configured.

:func:`limiter_for` picks one from the settings.

Accuracy and the burst
----------------------
A token bucket refilled at ``rate`` tokens/s with capacity ``burst`` grants at most
``burst + rate * T`` tokens in any window of ``T`` seconds, and — while workers keep asking —
at least ``rate * T`` minus what is lost to wake-up latency. The default burst is a tenth of
a second's worth (``max(1, rate / 10)``), so the excess is at most 0.1 s of traffic: ≤ 10 % over
any one-second window and ≤ 0.2 % over a minute, well inside the ±10 %/minute target, while
still letting workers take tokens in chunks (a batch slice) instead of one round trip per mail.

Large requests
--------------
``acquire(n)`` with ``n`` above the burst still works: the tokens are taken in pieces of at most
half the burst. Half, not all: a piece of the full burst could only be granted with the bucket
exactly full, and any time a waiter overslept past that point would be refill thrown away at the
cap; with half the bucket as slack, ordinary scheduler latency costs no throughput.

When Redis is unreachable
-------------------------
:meth:`RedisTokenBucket.acquire` never grants a token it could not record (it fails *closed*:
no sending goes unlimited during an outage). It retries with a short jittered back-off, logs
one warning per outage and one line when Redis is back, and carries on where it was. When the
outage lasts longer than ``outage_timeout`` (60 s by default) it raises
:class:`RateLimiterUnavailable`, a transient error: nothing was sent for the tokens it could
not get, so the caller can retry the batch later. A restarted Redis has lost the bucket (or
kept it, with persistence); either way the worst case is one extra burst. While Redis is down
the Celery broker (the same Redis) is down too, so failing closed costs no throughput.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING, Final, Protocol

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ReadOnlyError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from newsletter.errors import NewsletterError
from newsletter.redaction import redact_text

if TYPE_CHECKING:
    from newsletter.config import Settings

log = logging.getLogger(__name__)

DEFAULT_KEY: Final = "newsletter:ratelimit:send"

# A tenth of a second of traffic: see "Accuracy and the burst" above.
BURST_SECONDS: Final = 0.1

# Back-off while Redis is unreachable: short at first (a blip or a quick restart), capped so a
# worker notices a recovered Redis within about a second.
_BACKOFF_FIRST_S: Final = 0.05
_BACKOFF_MAX_S: Final = 1.0

# Errors that mean "Redis is not there right now" (down, restarting, loading its data, a
# replica promoted during failover), worth waiting out. Bad credentials are a configuration
# error instead, and are raised at once even though redis-py derives them from ConnectionError.
_TRANSIENT: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
_PERMANENT: Final = (AuthenticationError, AuthorizationError)

# KEYS[1]: the bucket (a hash: tokens, ts). ARGV: rate (tokens/s), burst, n (≤ burst), ttl (ms).
# Returns 0 when n tokens were taken, else the milliseconds until n tokens will be there.
# The clock is the Redis server's, in microseconds, so all clients agree whatever their own
# clocks say. Values are written with %.17g because Redis converts Lua numbers with %.14g, which
# would round a microsecond timestamp (16 digits).
_TOKEN_BUCKET_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
-- A clock that stepped back (failover to a host with another clock) refills nothing.
local elapsed = math.max(0, now - ts)
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
if tokens >= n then
  tokens = tokens - n
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
             'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 0
end
-- Nothing is written on refusal: the refill is recomputed from the stored state next time.
local wait_ms = math.ceil((n - tokens) * 1000 / rate)
if wait_ms < 1 then wait_ms = 1 end
return wait_ms
"""


class RateLimiterUnavailable(NewsletterError):
    """The shared rate limiter could not be reached for longer than its outage timeout.

    Transient: no token was granted, so nothing may be sent now; retry the work later.
    """


class RateLimiter(Protocol):
    """Blocks callers so that, together, they stay under a rate."""

    def acquire(self, n: int = 1) -> None:
        """Return once ``n`` tokens (messages) may be used, sleeping meanwhile."""
        ...

    def close(self) -> None:
        """Release connections; the limiter must not be used afterwards."""
        ...


def default_burst(rate: float) -> float:
    """A tenth of a second's worth of tokens, and at least one."""
    return max(1.0, rate * BURST_SECONDS)


def _check(rate: float, burst: float | None) -> float:
    """Validate ``rate`` and ``burst``; return the burst to use."""
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive number of tokens per second, not {rate!r}")
    burst = default_burst(rate) if burst is None else float(burst)
    if not math.isfinite(burst) or burst < 1:
        raise ValueError(f"burst must be at least 1 token, not {burst!r}")
    return burst


def _piece_size(burst: float) -> int:
    # At most half the bucket per request (see "Large requests" above), and at least one token.
    return max(1, int(burst // 2))


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"cannot acquire a negative number of tokens ({n})")


class NoLimit:
    """No rate limit: :meth:`acquire` returns at once."""

    def acquire(self, n: int = 1) -> None:
        """Return at once."""
        _check_n(n)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "NoLimit()"


class LocalTokenBucket:
    """A token bucket inside this process, shared by its threads.

    For the embedded mode only: with several processes each would allow the whole rate.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = _check(self.rate, burst)
        self._piece = _piece_size(self.burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int = 1) -> None:
        """Block (sleeping) until ``n`` tokens were taken; ``n`` may exceed the burst."""
        _check_n(n)
        remaining = n
        while remaining > 0:
            piece = min(remaining, self._piece)
            wait = self._try_take(piece)
            if wait == 0.0:
                remaining -= piece
            else:
                time.sleep(wait)  # outside the lock: other threads may refill-check meanwhile

    def _try_take(self, n: int) -> float:
        """Take ``n`` tokens and return 0, or return the seconds until there will be ``n``."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return max((n - self._tokens) / self.rate, 0.001)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"LocalTokenBucket(rate={self.rate:g}, burst={self.burst:g})"


class RedisTokenBucket:
    """A token bucket in Redis, shared by every process that uses the same URL and key.

    Thread- and fork-safe (redis-py's pool reconnects in a forked child). Connecting is lazy:
    constructing one does not touch Redis.
    """

    def __init__(
        self,
        redis_url: str,
        key: str = DEFAULT_KEY,
        rate: float = 1.0,
        burst: float | None = None,
        *,
        outage_timeout: float = 60.0,
        socket_timeout: float = 5.0,
    ) -> None:
        self.rate = float(rate)
        self.burst = _check(self.rate, burst)
        self.key = key
        self.outage_timeout = outage_timeout
        self._piece = _piece_size(self.burst)
        # An idle bucket refills completely in burst/rate seconds, after which "no key" (a full
        # bucket) is the same state: let it expire then, plus a margin.
        self._ttl_ms = math.ceil(self.burst / self.rate * 1000) + 1000
        # No retries inside redis-py: acquire() owns the retry policy, with its own back-off,
        # logging and outage timeout.
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            retry=Retry(NoBackoff(), 0),
        )
        # EVALSHA, falling back to EVAL (which loads it) on NOSCRIPT, e.g. after a restart.
        self._script = self._client.register_script(_TOKEN_BUCKET_LUA)
        self._outage_lock = threading.Lock()
        self._outage = False

    def acquire(self, n: int = 1) -> None:
        """Block (sleeping) until ``n`` tokens were taken from the shared bucket.

        ``n`` may exceed the burst: the tokens are then taken in pieces. Raises
        :class:`RateLimiterUnavailable` when Redis stayed unreachable for ``outage_timeout``.
        """
        _check_n(n)
        remaining = n
        while remaining > 0:
            piece = min(remaining, self._piece)
            wait_ms = self._try_take(piece)
            if wait_ms == 0:
                remaining -= piece
            else:
                time.sleep(wait_ms / 1000)

    def _try_take(self, n: int) -> int:
        """One script call, retried through a Redis outage: 0 if taken, else ms to wait."""
        started: float | None = None
        delay = _BACKOFF_FIRST_S
        while True:
            try:
                result = self._script(
                    keys=[self.key], args=[self.rate, self.burst, n, self._ttl_ms]
                )
            except _PERMANENT:
                raise
            except _TRANSIENT as exc:
                # If the reply was lost after the script ran, those tokens are simply wasted:
                # the error is in the safe direction (fewer messages, never more).
                now = time.monotonic()
                if started is None:
                    started = now
                self._note_outage(exc)
                if now - started >= self.outage_timeout:
                    raise RateLimiterUnavailable(
                        f"the rate limiter's Redis has been unreachable for "
                        f"{self.outage_timeout:g} s ({redact_text(str(exc))}); nothing was sent,"
                        " retry later"
                    ) from exc
                time.sleep(min(delay * random.uniform(0.5, 1.0), self.outage_timeout))
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            self._note_recovery()
            return int(result)

    def _note_outage(self, exc: Exception) -> None:
        # One warning per outage, not one per retry, from however many threads are waiting.
        with self._outage_lock:
            if self._outage:
                return
            self._outage = True
        log.warning(
            "rate limiter: Redis unreachable (%s); holding sends and retrying for up to %g s",
            redact_text(str(exc)),
            self.outage_timeout,
        )

    def _note_recovery(self) -> None:
        if not self._outage:  # the common case, without taking the lock
            return
        with self._outage_lock:
            if not self._outage:
                return
            self._outage = False
        log.warning("rate limiter: Redis is reachable again; sending resumes")

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisTokenBucket(key={self.key!r}, rate={self.rate:g}, burst={self.burst:g})"


def limiter_for(settings: Settings, key: str = DEFAULT_KEY) -> RateLimiter:
    """The limiter that ``settings`` call for.

    No limit when ``rate_limit`` is unset or not positive; the shared Redis bucket when the
    broker is Redis (every worker then shares it); otherwise a bucket in this process, which
    is only right when this process is the only sender (the embedded mode).
    """
    rate = settings.rate_limit
    if rate is None or rate <= 0:
        return NoLimit()
    broker = settings.broker_url
    if broker is not None and broker.startswith(("redis://", "rediss://")):
        return RedisTokenBucket(broker, key, rate)
    if broker is not None:
        # Credentials may sit in the URL: name only its scheme.
        log.warning(
            "NEWSLETTER_RATE_LIMIT is enforced per process: the broker (%s://) is not Redis, "
            "so the limit cannot be shared by workers",
            broker.partition("://")[0],
        )
    return LocalTokenBucket(rate)
