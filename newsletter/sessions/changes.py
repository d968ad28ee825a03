"""What changed in a session record, field by field, in the words the change notice uses.

Notice-worthy (what a person who said yes, maybe or joined the waitlist must learn, because it
changes whether, when or where they come):

* the time: ``starts_at`` / ``ends_at`` (时间);
* the place: venue ``mode``, room ``name`` and ``address`` (方式, 地点) and the ``streams``
  (线上观看: a new link is where they must go);
* the talks: one added (新增分享) or removed (取消分享), or one whose title, speaker or time
  changed (分享有变);
* ``cancelled`` (活动状态).

Everything else (``notes``, ``intro``, ``highlights``, ``audience``, ``links``, ``theme``,
``title``, ``registration``, ``reminders``, a talk's ``papers`` / ``outline`` /
``affiliation``...) still bumps the revision (the calendar SEQUENCE) but is not worth a mail:
a typo fixed in the notes must not send hundreds of people a "something changed" message.

A :class:`ChangeSet` prints as text lines (:meth:`ChangeSet.to_text`), one change per line,
``label：old → new``, where an organizer sees it; a change notice keeps it as JSON
(:meth:`ChangeSet.to_json`, ``campaigns.details``) for its mail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from newsletter.rendering.environment import cn_datetime_range, hm, hm_range
from newsletter.sessions.schema import SessionRecord, Talk, Venue, VenueMode

ARROW = " → "
CANCELLED_LABEL = "活动状态"
_MODES = {VenueMode.online: "线上", VenueMode.offline: "线下", VenueMode.hybrid: "线下 + 线上"}


@dataclass(frozen=True, slots=True)
class Change:
    """One change: a label (时间, 地点, ...), the old and the new value ("" for none)."""

    label: str
    old: str
    new: str

    def line(self) -> str:
        """``label：old → new`` (the stored and printed form)."""
        return f"{self.label}：{self.old or '（无）'}{ARROW}{self.new or '（无）'}"


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """The notice-worthy changes between two records (empty: nothing worth telling)."""

    changes: tuple[Change, ...]

    def __bool__(self) -> bool:
        return bool(self.changes)

    @property
    def cancelled(self) -> bool:
        """Whether the session was cancelled by this change."""
        return any(c.label == CANCELLED_LABEL and c.new == "已取消" for c in self.changes)

    def to_text(self) -> str:
        """One line per change (see :meth:`Change.line`)."""
        return "\n".join(change.line() for change in self.changes)

    def to_json(self) -> str:
        """The set as JSON (``campaigns.details``: the notice keeps what it announces, since
        the record before the re-import is overwritten)."""
        return json.dumps([[c.label, c.old, c.new] for c in self.changes], ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> ChangeSet:
        """The set :meth:`to_json` wrote; None or junk is the empty set (nothing to tell)."""
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            return cls(())
        if not isinstance(rows, list):
            return cls(())
        return cls(
            tuple(
                Change(str(row[0]), str(row[1]), str(row[2]))
                for row in rows
                if isinstance(row, list) and len(row) == 3
            )
        )

    @classmethod
    def from_text(cls, text: str | None) -> ChangeSet:
        """The set :meth:`to_text` wrote (lines that are not changes are left out)."""
        changes = []
        for line in (text or "").splitlines():
            label, colon, rest = line.partition("：")
            old, arrow, new = rest.partition(ARROW)
            if colon and arrow:
                changes.append(Change(label, _none(old), _none(new)))
        return cls(tuple(changes))

    def then(self, later: ChangeSet) -> ChangeSet:
        """This set followed by ``later`` (two revisions nobody was told of yet): per label,
        the oldest value and the newest; a value changed back drops out."""
        merged: dict[str, Change] = {c.label: c for c in self.changes}
        for change in later.changes:
            first = merged.get(change.label)
            merged[change.label] = Change(
                change.label, first.old if first else change.old, change.new
            )
        return ChangeSet(tuple(c for c in merged.values() if c.old != c.new))


def _none(value: str) -> str:
    return "" if value == "（无）" else value


def diff_records(old: SessionRecord, new: SessionRecord, *, timezone: str) -> ChangeSet:
    """The notice-worthy changes from ``old`` to ``new`` (see the module docstring), times in
    the session's zone (``timezone``: the default for a record without one)."""
    tz = ZoneInfo(new.timezone or old.timezone or timezone)
    changes: list[Change] = []
    before = cn_datetime_range(old.starts_at, old.ends_at, tz)
    after = cn_datetime_range(new.starts_at, new.ends_at, tz)
    if (old.starts_at, old.ends_at) != (new.starts_at, new.ends_at):
        changes.append(Change("时间", before, after))
    changes += _venue_changes(old.venue, new.venue)
    changes += _talk_changes(old.talks, new.talks, tz)
    if old.cancelled != new.cancelled:
        changes.append(
            Change(
                CANCELLED_LABEL,
                *(("如期举行", "已取消") if new.cancelled else ("已取消", "恢复举行")),
            )
        )
    return ChangeSet(tuple(changes))


def _venue_changes(old: Venue | None, new: Venue | None) -> list[Change]:
    out = []
    old_mode = _MODES[old.mode] if old else ""
    new_mode = _MODES[new.mode] if new else ""
    if old_mode != new_mode:
        out.append(Change("方式", old_mode, new_mode))
    old_place, new_place = _place(old), _place(new)
    if old_place != new_place:
        out.append(Change("地点", old_place, new_place))
    old_streams, new_streams = _streams(old), _streams(new)
    if old_streams != new_streams:
        out.append(Change("线上观看", old_streams, new_streams))
    return out


def _place(venue: Venue | None) -> str:
    if venue is None or not venue.name:
        return ""
    return venue.name + (f"（{venue.address}）" if venue.address else "")


def _streams(venue: Venue | None) -> str:
    return "；".join(f"{s.name} {s.url}" for s in venue.streams) if venue else ""


def _talk_changes(old: Sequence[Talk], new: Sequence[Talk], tz: ZoneInfo) -> list[Change]:
    """Talks paired by title, the rest in order; what is left over was added or removed."""
    unpaired_old = list(old)
    pairs: list[tuple[Talk | None, Talk | None]] = []
    unpaired_new: list[Talk] = []
    for talk in new:
        match = next((o for o in unpaired_old if o.title == talk.title), None)
        if match is None:
            unpaired_new.append(talk)
        else:
            unpaired_old.remove(match)
            pairs.append((match, talk))
    for index in range(max(len(unpaired_old), len(unpaired_new))):
        pairs.append(
            (
                unpaired_old[index] if index < len(unpaired_old) else None,
                unpaired_new[index] if index < len(unpaired_new) else None,
            )
        )
    out = []
    for before, after in pairs:
        if before is None and after is not None:
            out.append(Change(f"新增分享《{after.title}》", "", _talk_text(after, tz)))
        elif after is None and before is not None:
            out.append(Change(f"取消分享《{before.title}》", _talk_text(before, tz), "已取消"))
        elif before is not None and after is not None:
            old_text, new_text = _talk_text(before, tz), _talk_text(after, tz)
            if old_text != new_text:
                out.append(Change(f"分享《{after.title}》", old_text, new_text))
    return out


def _talk_text(talk: Talk, tz: ZoneInfo) -> str:
    """``title（speaker）· 12:30–13:15``: the parts of a talk that are notice-worthy."""
    text = talk.title + (f"（{talk.speaker}）" if talk.speaker else "")
    if talk.starts_at and talk.ends_at:
        text += f" · {hm_range(talk.starts_at, talk.ends_at, tz)}"
    elif talk.starts_at:
        text += f" · {hm(talk.starts_at, tz)}"
    return text
