"""What ``newsletter sessions import`` says and sends about sessions changed after their
invitation went out (see :mod:`newsletter.campaigns.change_notices`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.campaigns import change_notices
from newsletter.campaigns.change_notices import Audience, NoticeState
from newsletter.cli.campaign_cmd import check_mail_url, progress_line, send_and_watch
from newsletter.cli.common import console, fail
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import RecordError
from newsletter.sessions import repo
from newsletter.sessions.changes import diff_records
from newsletter.sessions.records import collect_record_paths, load_record
from newsletter.sessions.service import ImportReport


def report_changes(db: Session, report: ImportReport, *, timezone: str) -> None:
    """Keep what each re-imported, announced session's pending notice announces, and print
    it with who it would reach."""
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
            _nothing_worth(number, salon.revision)
            continue
        _print_pending(state, dry_run=False)
    for number in report.unchanged:
        salon = repo.get_by_number(db, number)
        assert salon is not None, "the import found it"
        state = change_notices.state(db, salon)
        if state is not None and state.can_send:
            _print_pending(state, dry_run=False)


def preview(db: Session, paths: Sequence[Path], *, timezone: str) -> ImportReport:
    """What an import of ``paths`` would do and which notices it would leave pending,
    printed; reads only (a dry run)."""
    report = ImportReport()
    for path in collect_record_paths(paths):
        try:
            record = load_record(path)
        except RecordError as exc:
            report.errors.append(str(exc))
            continue
        salon = repo.get_by_number(db, record.number)
        if salon is None:
            report.created.append(record.number)
            continue
        state = change_notices.state(db, salon)
        if salon.record == record.model_dump(mode="json", exclude_none=True):
            report.unchanged.append(record.number)
            if state is not None and state.can_send:
                _print_pending(state, dry_run=True)
            continue
        report.updated.append(record.number)
        if state is None:
            continue
        diff = diff_records(repo.record_of(salon), record, timezone=timezone)
        changes = state.changes.then(diff)
        if not changes:
            _nothing_worth(record.number, salon.revision + 1)
            continue
        _print_pending(replace(state, revision=salon.revision + 1, changes=changes), dry_run=True)
    if not report.stored and not report.unchanged and not report.errors:
        raise RecordError("no .yaml or .yml records found in " + ", ".join(map(str, paths)))
    return report


def _nothing_worth(number: int, revision: int) -> None:
    console.print(
        f"session {number}: revision {revision}, nothing worth a change notice"
        " (time, venue, streams, talks and cancellation are as people were told)",
        soft_wrap=True,
    )


def _print_pending(state: NoticeState, *, dry_run: bool) -> None:
    console.print(
        f"session {state.number} changed since people were told (revision {state.revision}):",
        soft_wrap=True,
    )
    for change in state.changes.changes:
        console.print(f"  {change.line()}", markup=False, soft_wrap=True)
    console.print(
        f"  a change notice would reach {state.answered} (answered yes, maybe or waitlist);"
        f" with --notify-all {state.invited} (everyone invited)",
        soft_wrap=True,
    )
    if not dry_run:
        console.print(
            "  send it with --notify or --notify-all, or the dashboard's button", soft_wrap=True
        )


def notify(numbers: Sequence[int], *, everyone: bool) -> None:
    """Send the pending change notice of each session in ``numbers`` that has one; say so
    for the ones whose current revision was already told."""
    settings = get_settings()
    check_mail_url(settings)
    audience = Audience.invited if everyone else Audience.answered
    started: list[int] = []
    for number in numbers:
        with session_scope(settings.database_url) as db:
            outcome = change_notices.send_pending(db, number, audience)
        if not outcome.announced:
            continue  # no invitation went out: nobody to tell
        if outcome.already_sent is not None:
            console.print(
                f"session {number}: the change notice of revision {outcome.revision} was"
                f" already sent (campaign {outcome.already_sent}); nothing sent",
                soft_wrap=True,
            )
        elif outcome.campaign_id is None:
            console.print(
                f"session {number}: nothing to tell since the last mail; nothing sent",
                soft_wrap=True,
            )
        elif not outcome.start:
            console.print(
                f"session {number}: change notice campaign {outcome.campaign_id}: nobody to tell",
                soft_wrap=True,
            )
        else:
            console.print(
                f"session {number}: change notice campaign {outcome.campaign_id} for revision"
                f" {outcome.revision}: {outcome.recipients} recipients",
                soft_wrap=True,
            )
            started.append(outcome.campaign_id)
    failed = []
    for campaign_id in started:
        result = send_and_watch(campaign_id, wait=False)
        console.print(progress_line(result), soft_wrap=True)
        if result.failed:
            failed.append(campaign_id)
    if failed:
        raise fail(f"change notice campaign(s) {', '.join(map(str, failed))}: deliveries failed")
