"""Slowing down guesses of the admin token: a few wrong tries per address, then a pause.

A generated token (the default) cannot be guessed anyway; one an organizer chose might be.
Counted per client address and per web process (each process of ``serve --workers N`` keeps
its own count, so the limit a guesser meets is N times this), which is enough to turn an
online guessing attack into one that takes years, at no cost to an organizer who mistyped.
"""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_FAILURES = 10
WINDOW_S = 15 * 60
# Addresses remembered at most; the oldest are forgotten first (a flood of spoofed sources
# must not grow the process without bound).
MAX_ADDRESSES = 10_000


class LoginThrottle:
    """Failed logins per client address within a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self._max = max_failures
        self._window = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) < self._max:
                return 0
            return max(1, int(failures[0] + self._window - now) + 1)

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a wrong token from ``address``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            while len(self._failures) > MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        """A right token: forget that address's failures."""
        with self._lock:
            self._failures.pop(address, None)

    def clear(self) -> None:
        """Forget every address (tests start each from a clean slate)."""
        with self._lock:
            self._failures.clear()

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        return failures


throttle = LoginThrottle()
