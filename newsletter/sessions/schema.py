"""The session-record format (SPEC "Session record"), validated with pydantic.

One YAML file holds one session. Validation is strict: unknown fields are refused so that a
typo (``startz_at``) is reported instead of silently ignored.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VenueMode(StrEnum):
    """How people attend a session."""

    online = "online"
    offline = "offline"
    hybrid = "hybrid"


class TalkKind(StrEnum):
    """The three kinds of talk the archive table groups by."""

    paper = "paper"
    lecture = "lecture"
    practice = "practice"

    @property
    def label(self) -> str:
        """The Chinese label shown in invitations (【论文分享】 and so on)."""
        return {"paper": "论文分享", "lecture": "机器学习", "practice": "项目实战"}[self.value]


class Stream(_Strict):
    """Where an online audience watches: a live-stream page, optionally with a QR image."""

    name: Text
    url: AnyHttpUrl
    qr_image: AnyHttpUrl | None = None
    note: Text | None = None


class Venue(_Strict):
    """A room, streams, or both."""

    mode: VenueMode
    name: Text | None = None
    address: Text | None = None
    streams: list[Stream] = Field(default_factory=list)

    @model_validator(mode="after")
    def _mode_needs(self) -> Venue:
        if self.mode in (VenueMode.offline, VenueMode.hybrid) and not self.name:
            raise ValueError(f"a {self.mode.value} venue needs a room: set venue.name")
        if self.mode in (VenueMode.online, VenueMode.hybrid) and not self.streams:
            raise ValueError(
                f"an {self.mode.value} venue needs at least one entry in venue.streams"
            )
        return self


class Registration(_Strict):
    """Seats and the last moment to answer."""

    capacity: Annotated[int, Field(gt=0)] | None = None
    deadline: datetime | None = None
    plus_ones: Annotated[int, Field(ge=0, le=10)] = 0
    url: AnyHttpUrl | None = None  # an outside form, kept for old records; RSVP links replace it
    # ISO 8601 durations. Within promotion_cutoff of the start nobody is promoted from the
    # waitlist automatically (the organizer is told instead); a promoted person confirms
    # within confirm_within or the seat passes on.
    promotion_cutoff: timedelta | None = None
    confirm_within: timedelta | None = None

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs a UTC offset, e.g. 2019-12-05T10:00:00+08:00")
        return value

    @field_validator("promotion_cutoff", "confirm_within")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("give a positive ISO 8601 duration, e.g. PT24H or P1D")
        return value


class Paper(_Strict):
    """A paper discussed in a talk, with its own outline when a talk covers several papers."""

    title: Text
    outline: list[Text] = Field(default_factory=list)


class Talk(_Strict):
    """One talk of a session. Past sessions may carry only ``kind`` and ``title``."""

    kind: TalkKind
    title: Text
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    speaker: Text | None = None
    affiliation: Text | None = None
    papers: list[Text | Paper] = Field(default_factory=list)
    outline: list[Text] = Field(default_factory=list)

    @model_validator(mode="after")
    def _times(self) -> Talk:
        for value in (self.starts_at, self.ends_at):
            if value is not None and value.utcoffset() is None:
                raise ValueError("talk times need a UTC offset, e.g. 2019-12-05T12:30:00+08:00")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    def paper_list(self) -> list[Paper]:
        """Papers as objects, whether the record wrote plain titles or titles with outlines."""
        return [p if isinstance(p, Paper) else Paper(title=p) for p in self.papers]


class Highlight(_Strict):
    """One 活动亮点 entry."""

    title: Text
    text: Text


class Link(_Strict):
    """A recording or material, shown in the archive table."""

    title: Text
    url: AnyHttpUrl


class SessionRecord(_Strict):
    """One salon session, exactly as an organizer writes it in YAML."""

    number: Annotated[int, Field(gt=0)]
    series: Text
    title: Text
    starts_at: datetime
    ends_at: datetime
    talks: Annotated[list[Talk], Field(min_length=1)]
    theme: Text | None = None
    organizer: Text | None = None
    timezone: Text | None = None
    venue: Venue | None = None
    registration: Registration | None = None
    audience: Text | None = None
    intro: Text | None = None
    highlights: list[Highlight] = Field(default_factory=list)
    notes: Text | None = None
    about: Text | None = None  # the club profile (Markdown); the configured default when absent
    links: list[Link] = Field(default_factory=list)
    cancelled: bool = False
    # When reminders go out before the start (ISO 8601 durations, e.g. [P1D, PT2H]);
    # absent: NEWSLETTER_REMINDERS; an empty list: none.
    reminders: Annotated[list[timedelta], Field(max_length=10)] | None = None

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.utcoffset() is None:
            raise ValueError("needs a UTC offset, e.g. 2019-12-05T12:30:00+08:00")
        return value

    @field_validator("reminders")
    @classmethod
    def _offsets(cls, value: list[timedelta] | None) -> list[timedelta] | None:
        if value is not None and any(offset <= timedelta(0) for offset in value):
            raise ValueError("give positive ISO 8601 durations before the start, e.g. [P1D, PT2H]")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _order(self) -> SessionRecord:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self
