"""What the dashboard's session page shows of the follow-up and its feedback: whether a
follow-up can be sent (the session is over and none was sent), the one sent, and the answers
(count, average, each rating's count, the comments; the template escapes every comment)."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from newsletter.campaigns import followup_repo
from newsletter.db import utcnow
from newsletter.rsvp import feedback
from newsletter.sessions.models import SalonSession
from newsletter.web.dashboard_views import local_time


@dataclass(frozen=True, slots=True)
class CommentView:
    """One comment as listed: its rating, text and local time."""

    rating: int
    text: str
    at: str


@dataclass(frozen=True, slots=True)
class FollowupPanel:
    """The session page's follow-up card."""

    ended: bool
    cancelled: bool
    campaign_id: int | None
    summary: feedback.FeedbackSummary
    comments: tuple[CommentView, ...]

    @property
    def can_send(self) -> bool:
        """Whether the send buttons are shown (the service decides again on the POST)."""
        return self.ended and not self.cancelled and self.campaign_id is None

    @property
    def average(self) -> str:
        """The average rating with one decimal, or a dash with no answers."""
        return "-" if self.summary.average is None else f"{self.summary.average:.1f}"


def followup_panel(db: Session, salon: SalonSession) -> FollowupPanel:
    """The card's facts for ``salon``."""
    zone = ZoneInfo(salon.timezone)
    sent = followup_repo.followup_of(db, salon.id)
    summary = feedback.summary(db, salon.id)
    return FollowupPanel(
        ended=salon.ends_at <= utcnow(),
        cancelled=salon.cancelled,
        campaign_id=sent.id if sent else None,
        summary=summary,
        comments=tuple(
            CommentView(c.rating, c.text, local_time(c.at, zone)) for c in summary.comments
        ),
    )
