"""Slowing down guesses of the admin token: a few wrong tries per address, then a pause;
and a ceiling over all addresses together.

A generated token (the default) cannot be guessed anyway; one an organizer chose might be.
Counted per client address (the TCP peer, or the address a trusted proxy reports: see
``NEWSLETTER_FORWARDED_ALLOW_IPS``) and per web process (each process of
``serve --workers N`` keeps its own count, so the limits a guesser meets are N times these).
Someone with many addresses meets the global ceiling instead: past it, every login waits
until the window moves on, the right token included (an exception would tell a guesser
which try was right). Organizers keep the API's bearer token, which is not throttled.
"""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_FAILURES = 10
# Failures from all addresses together in the window before everyone is paused.
MAX_FAILURES_ALL = 100
WINDOW_S = 15 * 60
# Addresses remembered at most; the oldest are forgotten first (a flood of spoofed sources
# must not grow the process without bound).
MAX_ADDRESSES = 10_000


class LoginThrottle:
    """Failed logins per client address, and in all, within a sliding window."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        max_failures_all: int = MAX_FAILURES_ALL,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._failures: dict[str, deque[float]] = {}
        # Only the newest max_failures_all times matter for the ceiling.
        self._all: deque[float] = deque(maxlen=max_failures_all)
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [0]
            failures = self._recent(address, now)
            if len(failures) >= self._max:
                waits.append(self._wait(failures[0], now))
            self._expire(self._all, now)
            if self._all.maxlen is not None and len(self._all) >= self._all.maxlen:
                waits.append(self._wait(self._all[0], now))
            return max(waits)

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a wrong token from ``address``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            self._all.append(now)
            while len(self._failures) > MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        """A right token: forget that address's failures (the global count stays)."""
        with self._lock:
            self._failures.pop(address, None)

    def clear(self) -> None:
        """Forget every failure (tests start each from a clean slate)."""
        with self._lock:
            self._failures.clear()
            self._all.clear()

    def _wait(self, oldest: float, now: float) -> int:
        return max(1, int(oldest + self._window - now) + 1)

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        self._expire(failures, now)
        return failures

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self._window:
            failures.popleft()


throttle = LoginThrottle()
