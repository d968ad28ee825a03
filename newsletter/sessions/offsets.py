"""Reminder offsets and waitlist durations: ISO 8601 durations (``P1D``, ``PT2H``) as records
and ``NEWSLETTER_REMINDERS`` write them, one canonical spelling for storing and naming them.

A reminder campaign's occasion is its offset's canonical spelling, so ``P1D`` and ``PT24H``
written in two records are the same reminder, and ``P1DT0H`` never makes a second one.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

_DURATION = TypeAdapter(timedelta)


def iso_duration(offset: timedelta) -> str:
    """The canonical ISO 8601 spelling of ``offset`` (whole seconds): ``P1D``, ``PT2H30M``."""
    days, rest = divmod(int(offset.total_seconds()), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    if not days and not clock:
        return "PT0S"
    return "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")


def parse_offsets(text: str) -> list[timedelta]:
    """Offsets from a comma-separated list of ISO 8601 durations (``"P1D, PT2H"``), each
    positive, in the order given without repeats; ``ValueError`` names a bad one."""
    offsets: list[timedelta] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            offset = _DURATION.validate_python(item)
        except ValidationError:
            raise ValueError(f"{item!r} is not an ISO 8601 duration such as P1D or PT2H") from None
        if offset <= timedelta(0):
            raise ValueError(f"{item!r}: an offset before the start must be positive")
        if offset not in offsets:
            offsets.append(offset)
    return offsets


def stored_offsets(offsets: list[timedelta] | None) -> str | None:
    """The ``sessions.reminder_offsets`` column for a record's ``reminders`` (None: absent)."""
    if offsets is None:
        return None
    unique = list(dict.fromkeys(offsets))
    return ",".join(iso_duration(offset) for offset in unique)
