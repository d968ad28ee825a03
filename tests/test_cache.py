"""The one cache helper: versioned values are reused, and a long-running process stays bounded."""

from __future__ import annotations

from newsletter.cache import BoundedCache


def test_a_kept_value_is_reused_not_made_again() -> None:
    cache: BoundedCache[tuple[int, int], str] = BoundedCache(2)
    made: list[tuple[int, int]] = []

    def make(key: tuple[int, int]) -> str:
        made.append(key)
        return f"view of {key}"

    assert cache.get_or_make((61, 1), lambda: make((61, 1))) == "view of (61, 1)"
    assert cache.get_or_make((61, 1), lambda: make((61, 1))) == "view of (61, 1)"
    assert made == [(61, 1)]
    # A new revision is a new key: the re-imported session is never shown from the old entry.
    assert cache.get_or_make((61, 2), lambda: make((61, 2))) == "view of (61, 2)"
    assert made == [(61, 1), (61, 2)]


def test_the_least_recently_used_value_is_forgotten_first() -> None:
    cache: BoundedCache[int, str] = BoundedCache(2)
    cache.get_or_make(1, lambda: "one")
    cache.get_or_make(2, lambda: "two")
    assert cache.get(1) == "one"  # 1 is now the most recently used
    cache.get_or_make(3, lambda: "three")
    assert (cache.get(1), cache.get(2), cache.get(3)) == ("one", None, "three")


def test_many_revisions_keep_the_cache_at_its_size() -> None:
    cache: BoundedCache[tuple[int, int], int] = BoundedCache(256)
    for revision in range(10_000):
        cache.get_or_make((61, revision), lambda: 0)
    assert len(cache) == 256


def test_a_value_put_replaces_the_one_kept() -> None:
    cache: BoundedCache[int, bool] = BoundedCache(2)
    cache.put(61, False)
    cache.put(61, True)  # the session got a seat limit
    assert (cache.get(61), len(cache)) == (True, 1)
