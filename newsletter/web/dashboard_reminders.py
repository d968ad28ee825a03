"""What the dashboard's session page shows of automatic reminders: each planned offset,
its time in the session's zone, its state in Chinese and whether it can still be cancelled
(:mod:`newsletter.campaigns.reminders` decides all of it; this only words it)."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from newsletter.campaigns.models import CampaignStatus
from newsletter.campaigns.reminders import PlannedReminder
from newsletter.web.dashboard_views import STATUS_LABELS, local_time

STATE_LABELS = {
    "pending": "待发送",
    "due": "即将发送",
    "sent": "已发送",
    "cancelled": "已取消",
    "missed": "未发送（活动已开始或已取消）",
}
# The tag colours of admin_base.html for each state.
STATE_TAGS = {
    "pending": "scheduled",
    "due": "sending",
    "sent": "finished",
    "cancelled": "cancelled",
    "missed": "paused",
}


@dataclass(frozen=True, slots=True)
class ReminderView:
    """One line of the session page's reminder list."""

    occasion: str
    at: str
    state: str
    label: str
    tag: str
    campaign_id: int | None
    reason: str | None
    cancellable: bool


def reminder_view(planned: PlannedReminder, zone: ZoneInfo) -> ReminderView:
    """The planned reminder as the session page lists it."""
    label = STATE_LABELS[planned.state]
    reason = planned.reason
    if planned.state == "sent" and reason is not None:
        # A campaign made for it: its own status (发送中, 已完成 …) says more than "sent".
        if reason != CampaignStatus.finished:
            label = STATUS_LABELS.get(CampaignStatus(reason), label)
        reason = None
    return ReminderView(
        occasion=planned.occasion,
        at=local_time(planned.at, zone),
        state=planned.state,
        label=label,
        tag=STATE_TAGS[planned.state],
        campaign_id=planned.campaign_id,
        reason=reason,
        cancellable=planned.cancellable,
    )
