"""The archive table every invitation ends with (期数, 时间, 内容, 链接)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class ArchiveTalkGroup:
    """Talks of one kind in one session, e.g. 论文分享: [DARTS, HCN 网络]."""

    label: str
    titles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArchiveLink:
    """A recording or material of a past session."""

    title: str
    url: str


@dataclass(frozen=True, slots=True)
class ArchiveRow:
    """One earlier session as the archive table shows it."""

    number: int
    held_on: date  # the local date of the session, in its own time zone
    groups: tuple[ArchiveTalkGroup, ...]
    links: tuple[ArchiveLink, ...]
