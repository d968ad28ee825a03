"""The RSVP-over-time chart as numbers for an inline SVG (no script, no CDN: works offline).

Python computes every coordinate and label; ``templates/web/_admin_chart.html`` only writes
them out, autoescaped. The dashboard draws the chart twice, a narrow and a wide geometry, and
CSS shows the one that fits, because one viewBox scaled from 320 to 1000 pixels would make
its text either unreadably small on a phone or huge on a desktop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from newsletter.rsvp.history import Point

# (state, label, colour, dash pattern): dashes tell the lines apart without colour too.
SERIES: tuple[tuple[str, str, str, str], ...] = (
    ("yes", "参加", "#15803d", ""),
    ("waitlisted", "候补", "#7c3aed", "2 3"),
    ("maybe", "可能", "#b45309", "7 4"),
    ("no", "不参加", "#b91c1c", "10 3 2 3"),
)
# Beyond this many points the markers would be a smear; the lines alone remain.
MAX_MARKERS = 60

_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_TIME_STEPS = (
    _MINUTE,
    5 * _MINUTE,
    10 * _MINUTE,
    30 * _MINUTE,
    _HOUR,
    2 * _HOUR,
    3 * _HOUR,
    6 * _HOUR,
    12 * _HOUR,
    _DAY,
    2 * _DAY,
    7 * _DAY,
    14 * _DAY,
    30 * _DAY,
    91 * _DAY,
    365 * _DAY,
)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Size of one drawing of the chart, in SVG user units (pixels at scale 1)."""

    name: str
    width: int
    height: int
    font: int
    max_x_ticks: int
    max_y_ticks: int
    left: int = 40
    right: int = 16
    top: int = 14
    bottom: int = 44


NARROW = Geometry("narrow", 340, 230, 12, 4, 4)
WIDE = Geometry("wide", 960, 320, 13, 8, 6)


@dataclass(frozen=True, slots=True)
class Tick:
    """A gridline position and its label (a time label may have a date as second line)."""

    pos: float
    label: str
    sub: str = ""
    anchor: str = "middle"  # "start" / "end" near the edges, so labels are never cut off


@dataclass(frozen=True, slots=True)
class Marker:
    """A point where a count changed, with a tooltip."""

    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Line:
    """One state's step line."""

    state: str
    label: str
    colour: str
    dash: str
    path: str
    markers: list[Marker]


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template draws for one geometry."""

    geometry: Geometry
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    lines: list[Line]
    capacity: Tick | None  # the seat limit as a reference line, when there is one


def _fmt(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _y_step(maximum: int, max_ticks: int) -> int:
    """A 1-2-5 step that shows ``maximum`` in at most ``max_ticks`` intervals."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if math.ceil(maximum / step) <= max_ticks:
                return step
        magnitude *= 10


def _time_ticks(start: datetime, end: datetime, zone: ZoneInfo, max_ticks: int) -> list[datetime]:
    """Round local times (whole minutes, hours or days) between ``start`` and ``end``."""
    span = (end - start).total_seconds()
    step = next((s for s in _TIME_STEPS if span / s <= max_ticks), _TIME_STEPS[-1])
    local_start = start.astimezone(zone)
    midnight = local_start.replace(hour=0, minute=0, second=0, microsecond=0)
    if step < _DAY:
        # Multiples of the step counted from local midnight: 09:00, 12:00, 15:00 …
        elapsed = (local_start - midnight).total_seconds()
        tick = midnight + timedelta(seconds=math.ceil(elapsed / step) * step)
    else:
        tick = midnight if midnight >= local_start else midnight + timedelta(days=1)
    ticks: list[datetime] = []
    while tick <= end and len(ticks) <= max_ticks + 1:
        ticks.append(tick)
        tick = tick + timedelta(seconds=step)
    return ticks


def _tick_labels(
    ticks: Sequence[datetime], start: datetime, end: datetime
) -> list[tuple[str, str]]:
    """Each tick's label and, for times of day, the date under the first tick of each day."""
    if not ticks:
        return []
    by_day = len(ticks) < 2 or (ticks[1] - ticks[0]) >= timedelta(days=1)
    years = start.year != end.year
    labels = []
    previous_day = None
    for tick in ticks:
        if by_day:
            labels.append((tick.strftime("%Y-%m-%d" if years else "%m-%d"), ""))
            continue
        day = tick.date()
        date = tick.strftime("%m-%d") if day != previous_day else ""
        labels.append((tick.strftime("%H:%M"), date))
        previous_day = day
    return labels


def build_chart(
    points: Sequence[Point],
    *,
    end: datetime,
    zone: ZoneInfo,
    geometry: Geometry,
    capacity: int | None = None,
) -> Chart | None:
    """Step lines of every state from the first answer to ``end``; None without answers.

    ``end`` is where the lines stop (now, or the session's end once it is over); the counts
    are flat from the last answer to it. ``capacity`` draws the seat limit as a line.
    """
    if not points:
        return None
    g = geometry
    first, last = points[0].at, points[-1].at
    end = max(end, last)
    if end - first < timedelta(minutes=10):
        end = first + timedelta(minutes=10)  # a few answers in one instant still get a width
    # A little room before the first answer, so its jump from zero shows as a step.
    start = first - (end - first) * 0.03
    left, right = g.left, g.width - g.right
    top, bottom = g.top, g.height - g.bottom
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return left + (at - start).total_seconds() / span * (right - left)

    maximum = max(max(p.count(state) for state, *_ in SERIES) for p in points)
    maximum = max(maximum, capacity or 0)
    y_step = _y_step(max(maximum, 1), g.max_y_ticks)
    y_top = max(math.ceil(max(maximum, 1) / y_step) * y_step, y_step)

    def y(value: int) -> float:
        return bottom - value / y_top * (bottom - top)

    local_ticks = _time_ticks(start, end, zone, g.max_x_ticks)
    labels = _tick_labels(local_ticks, start.astimezone(zone), end.astimezone(zone))
    x_ticks = []
    for t, (label, sub) in zip(local_ticks, labels, strict=True):
        pos = x(t)
        anchor = "start" if pos < left + 24 else "end" if pos > right - 24 else "middle"
        x_ticks.append(Tick(pos, label, sub, anchor))
    y_ticks = [Tick(y(v), str(v)) for v in range(0, y_top + 1, y_step)]
    with_markers = len(points) <= MAX_MARKERS
    lines = []
    for state, label, colour, dash in SERIES:
        path = [f"M{_fmt(left)} {_fmt(y(0))}"]
        markers = []
        previous = 0
        for p in points:
            value = p.count(state)
            if value == previous:
                continue
            px, py = x(p.at), y(value)
            path.append(f"H{_fmt(px)}V{_fmt(py)}")
            if with_markers:
                when = p.at.astimezone(zone).strftime("%m-%d %H:%M:%S")
                markers.append(Marker(px, py, f"{when} {label} {value}"))
            previous = value
        path.append(f"H{_fmt(right)}")
        lines.append(Line(state, label, colour, dash, "".join(path), markers))
    limit = Tick(y(capacity), f"名额 {capacity}") if capacity else None
    return Chart(g, left, right, top, bottom, x_ticks, y_ticks, lines, limit)
