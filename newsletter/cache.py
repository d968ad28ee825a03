"""A bounded in-process cache for values derived from a versioned row.

Session records, RSVP page views and compiled notice mails are each worked out from a
session row and reused until the row's revision changes. Keys therefore carry the version
(id, revision, …), so an old entry is never wrong, only useless: the cache keeps the most
recently used ``size`` entries and forgets the rest, so a long-running process does not grow
with every re-import. ``functools.lru_cache`` cannot do this because the key (the version) is
only a part of what the value is made from (the whole row).

Thread-safe: web processes answer from a thread pool; two threads missing the same key at
once may both make the value (it is deterministic), and one of them is kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``size`` values by key, the least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache holds at least one value")
        self._size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value kept for ``key``, or None."""
        with self._lock:
            found = self._values.get(key)
            if found is not None:
                self._values.move_to_end(key)
            return found

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for ``key``; made by ``make()`` and kept when there is none."""
        found = self.get(key)
        if found is not None:
            return found
        made = make()  # outside the lock: making may render templates or read the database
        self.put(key, made)
        return made

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key`` (replacing what was kept), as the most recently used."""
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
