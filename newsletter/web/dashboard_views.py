"""What the dashboard's templates show: plain strings and numbers, formatted in Chinese.

The routes in :mod:`newsletter.web.dashboard` read rows through the repos and services and
turn them into these views, so templates hold no logic beyond loops and conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus
from newsletter.campaigns.service import CampaignProgress
from newsletter.inbound.rates import percent, rates_of
from newsletter.rsvp.history import Point
from newsletter.rsvp.models import Answer
from newsletter.rsvp.repo import AttendeeRow
from newsletter.sessions.repo import SessionSummary

STATUS_LABELS = {
    CampaignStatus.draft: "草稿",
    CampaignStatus.scheduled: "已预约",
    CampaignStatus.sending: "发送中",
    CampaignStatus.waiting: "等待邮件服务器",
    CampaignStatus.paused: "已暂停",
    CampaignStatus.cancelled: "已取消",
    CampaignStatus.finished: "已完成",
}
KIND_LABELS = {
    CampaignKind.invitation: "邀请",
    CampaignKind.reminder: "提醒",
    CampaignKind.change: "变更通知",
    CampaignKind.followup: "活动回顾",
}
MODE_LABELS = {"online": "线上", "offline": "线下", "hybrid": "线上+线下"}
ACTION_LABELS = {"send": "开始发送", "pause": "暂停", "resume": "继续发送", "cancel": "取消发送"}
# Which buttons a campaign in each state gets; mirrors the service's allowed transitions.
ACTIONS = {
    CampaignStatus.draft: ("send", "cancel"),
    CampaignStatus.scheduled: ("pause", "cancel"),
    CampaignStatus.sending: ("pause", "cancel"),
    CampaignStatus.waiting: ("pause", "cancel"),
    CampaignStatus.paused: ("resume", "cancel"),
}


def local_time(at: datetime | None, zone: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``at`` as wall-clock time in ``zone``; an empty string for None."""
    return at.astimezone(zone).strftime(fmt) if at else ""


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A line of the sessions table."""

    number: int
    title: str
    series: str
    starts_at: str
    mode: str
    capacity: str
    yes: int
    maybe: int
    no: int
    waitlisted: int


def session_row(summary: SessionSummary) -> SessionRow:
    """The sessions-table line of one session."""
    return SessionRow(
        number=summary.number,
        title=summary.title,
        series=summary.series,
        starts_at=summary.starts_at_local,
        mode=MODE_LABELS.get(summary.venue_mode or "", "待定"),
        capacity=str(summary.capacity) if summary.capacity is not None else "不限",
        yes=summary.yes,
        maybe=summary.maybe,
        no=summary.no,
        waitlisted=summary.waitlisted,
    )


@dataclass(frozen=True, slots=True)
class CampaignView:
    """A campaign with its progress bar and the buttons its state allows."""

    id: int
    session_number: int
    kind: str
    subject: str
    status: str
    status_label: str
    reason: str
    total: int
    done: int
    sent: int
    failed: int
    skipped: int
    waiting: int
    percent: int
    created_at: str
    finished_at: str
    actions: list[tuple[str, str]]
    # Returned mail (newsletter.inbound.rates): counts, rates of sent mail, warnings.
    bounces: int = 0
    complaints: int = 0
    bounce_rate: str = "-"
    complaint_rate: str = "-"
    bounce_warning: bool = False
    complaint_warning: bool = False


def campaign_view(campaign: Campaign, progress: CampaignProgress, zone: ZoneInfo) -> CampaignView:
    """What the dashboard shows of one campaign."""
    status = CampaignStatus(progress.status)
    returned = rates_of(campaign)
    return CampaignView(
        id=progress.id,
        session_number=progress.session_number,
        kind=KIND_LABELS.get(CampaignKind(campaign.kind), campaign.kind),
        subject=progress.subject,
        status=status.value,
        # Pruned: the per-person rows are gone, the counts shown are the ones kept.
        status_label=STATUS_LABELS[status] + ("（明细已清理）" if progress.pruned_at else ""),
        reason=progress.status_reason or "",
        total=progress.total,
        done=progress.done,
        sent=progress.sent,
        failed=progress.failed,
        skipped=progress.skipped,
        waiting=progress.queued + progress.inflight,
        percent=round(100 * progress.done / progress.total) if progress.total else 0,
        created_at=local_time(progress.created_at, zone),
        finished_at=local_time(progress.finished_at, zone),
        actions=[(a, ACTION_LABELS[a]) for a in ACTIONS.get(status, ())],
        bounces=returned.bounces,
        complaints=returned.complaints,
        bounce_rate=percent(returned.bounce_rate),
        complaint_rate=percent(returned.complaint_rate),
        bounce_warning=returned.bounce_warning,
        complaint_warning=returned.complaint_warning,
    )


@dataclass(frozen=True, slots=True)
class AttendeeView:
    """A line of the attendee table."""

    name: str
    email: str
    state: str  # yes / waitlisted / maybe / no: the CSS class and the chart's colour
    label: str
    guests: int
    answered_at: str
    updated_at: str


def attendee_view(row: AttendeeRow, zone: ZoneInfo) -> AttendeeView:
    """The attendee-table line of one answer."""
    if row.answer == Answer.yes:
        state, label = ("waitlisted", "候补") if row.waitlisted else ("yes", "参加")
    else:
        state, label = (row.answer, "可能") if row.answer == Answer.maybe else ("no", "不参加")
    return AttendeeView(
        name=row.name or "",
        email=row.email,
        state=state,
        label=label,
        guests=row.guests,
        answered_at=local_time(row.answered_at, zone),
        updated_at=local_time(row.updated_at, zone),
    )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """A line of the chart's data table."""

    at: str
    yes: int
    waitlisted: int
    maybe: int
    no: int


def history_row(point: Point, zone: ZoneInfo) -> HistoryRow:
    """The data-table line of one point of the chart."""
    return HistoryRow(
        at=local_time(point.at, zone, "%Y-%m-%d %H:%M:%S"),
        yes=point.yes,
        waitlisted=point.waitlisted,
        maybe=point.maybe,
        no=point.no,
    )
