"""What ``newsletter sessions import`` says and sends about sessions changed after their
invitation went out (see :mod:`newsletter.campaigns.change_notices`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from newsletter.campaigns import change_notices
from newsletter.campaigns.change_notices import Audience, NoticeState
from newsletter.cli.campaign_cmd import check_mail_url, progress_line, send_and_watch
from newsletter.cli.common import console, fail
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.sessions import repo
from newsletter.sessions.service import ImportReport


def report_changes(db: Session, report: ImportReport, *, timezone: str, dry_run: bool) -> None:
    """Keep (or, for a dry run, only show) what each re-imported, announced session's
    pending notice announces, and print it with who it would reach."""
    for number in report.updated:
        salon = repo.get_by_number(db, number)
        assert salon is not None, "the import just stored it"
        changes = change_notices.record_change(
            db, salon, report.previous[number], timezone=timezone
        )
        state = change_notices.state(db, salon)
        if state is None:
            continue  # never announced: nobody was told anything a change could make wrong
        if not changes:
            console.print(
                f"session {number}: revision {salon.revision}, nothing worth a change notice"
                " (time, venue, streams, talks and cancellation are as people were told)"
            )
            continue
        _print_pending(state, dry_run=dry_run)
    for number in report.unchanged:
        salon = repo.get_by_number(db, number)
        assert salon is not None, "the import found it"
        state = change_notices.state(db, salon)
        if state is not None and state.can_send:
            _print_pending(state, dry_run=dry_run)


def _print_pending(state: NoticeState, *, dry_run: bool) -> None:
    console.print(
        f"session {state.number} changed since people were told (revision {state.revision}):"
    )
    for change in state.changes.changes:
        console.print(f"  {change.line()}", markup=False, soft_wrap=True)
    console.print(
        f"  a change notice would reach {state.answered} (answered yes, maybe or waitlist);"
        f" with --notify-all {state.invited} (everyone invited)"
    )
    if not dry_run:
        console.print("  send it with --notify or --notify-all, or the dashboard's button")


def notify(numbers: Sequence[int], *, everyone: bool) -> None:
    """Send the pending change notice of each session in ``numbers`` that has one; say so
    for the ones whose current revision was already told."""
    settings = get_settings()
    check_mail_url(settings)
    audience = Audience.invited if everyone else Audience.answered
    started: list[int] = []
    for number in numbers:
        with session_scope(settings.database_url) as db:
            salon = repo.get_by_number(db, number)
            if salon is None or change_notices.state(db, salon) is None:
                continue
            outcome = change_notices.send_pending(db, number, audience)
        if outcome.already_sent is not None:
            console.print(
                f"session {number}: the change notice of revision {outcome.revision} was"
                f" already sent (campaign {outcome.already_sent}); nothing sent"
            )
        elif outcome.campaign_id is None:
            console.print(f"session {number}: nothing to tell since the last mail; nothing sent")
        elif not outcome.start:
            console.print(
                f"session {number}: change notice campaign {outcome.campaign_id}: nobody to tell"
            )
        else:
            console.print(
                f"session {number}: change notice campaign {outcome.campaign_id} for revision"
                f" {outcome.revision}: {outcome.recipients} recipients"
            )
            started.append(outcome.campaign_id)
    failed = []
    for campaign_id in started:
        result = send_and_watch(campaign_id, wait=False)
        console.print(progress_line(result))
        if result.failed:
            failed.append(campaign_id)
    if failed:
        raise fail(f"change notice campaign(s) {', '.join(map(str, failed))}: deliveries failed")
