"""``newsletter campaign``: create, send, remind, follow up, watch, pause, resume, cancel,
list, prune."""

from __future__ import annotations

import time
from datetime import datetime

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from newsletter.campaigns import prune as retention
from newsletter.campaigns import service
from newsletter.campaigns.followup import create_followup
from newsletter.campaigns.models import CampaignStatus
from newsletter.cli.common import (
    SCHEMA_NOTE,
    console,
    database_for_reading,
    database_for_writing,
    err_console,
    fail,
    handles_errors,
)
from newsletter.config import Settings, get_settings
from newsletter.db import session_scope
from newsletter.inbound.rates import ReturnedRates, percent, rates_of
from newsletter.mail.transports import transport_for
from tasks import embedded
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue

app = typer.Typer(help="Invitation and reminder campaigns. " + SCHEMA_NOTE, no_args_is_help=True)

FINAL = {CampaignStatus.finished, CampaignStatus.cancelled, CampaignStatus.paused}
# `send --wait` stops watching a campaign that no worker picked up within this long.
NO_WORKER_SECONDS = 30.0
# After Ctrl-C, how long the embedded worker gets to give back the rows of its batch (a
# batch sees the pause within a second).
INTERRUPT_GRACE_SECONDS = 5.0


@app.command()
@handles_errors
def create(
    number: int = typer.Argument(..., help="The session number."),
    subject: str | None = typer.Option(None, help="Subject line (default: from the record)."),
    tag: str | None = typer.Option(None, help="Only subscribers with this tag."),
    past: bool = typer.Option(
        False,
        "--past",
        help="Allow a session that has already ended; its mail then has no RSVP buttons.",
    ),
) -> None:
    """Create a campaign for a session; prints the campaign id.

    A session that has ended is refused unless --past is given.
    """
    settings = get_settings()
    database_for_writing()
    with session_scope(settings.database_url) as db:
        campaign = service.create_campaign(db, number, subject=subject, tag=tag, past=past)
        campaign_id, count = campaign.id, campaign.recipient_count
    err_console.print(f"campaign {campaign_id}: {count} recipients, draft")
    console.print(str(campaign_id))


def check_mail_url(settings: Settings) -> None:
    """Refuse, before anything changes, a mail URL that this process would fail to use.

    Without a broker this process's embedded worker sends, so a malformed ``NEWSLETTER_MAIL_URL``
    is a one-line error here rather than a campaign paused half-way; with a broker the
    workers' own settings decide, and they report it.
    """
    if settings.broker_url is None:
        transport_for(settings)  # builds only (and reads the DKIM key): no connection


def progress_line(progress: service.CampaignProgress) -> str:
    """One line of counts, for status and the end of a send."""
    line = (
        f"campaign {progress.id} (session {progress.session_number}): {progress.state}; "
        f"{progress.sent} sent, {progress.failed} failed, {progress.skipped} skipped, "
        f"{progress.queued} queued, {progress.inflight} in flight of {progress.total}"
    )
    if progress.status_reason:
        line += f" ({progress.status_reason})"
    return line


def _read_progress(campaign_id: int) -> service.CampaignProgress:
    with session_scope(get_settings().database_url) as db:
        return service.progress(db, campaign_id)


def send_and_watch(campaign_id: int, *, wait: bool) -> service.CampaignProgress:
    """Hand the campaign over to a worker; with ``wait``, show a progress bar read from the
    database until it stops moving. Returns the campaign's progress at the end.

    With a broker, remote workers send: without ``wait`` this returns at once. Without one,
    this process's embedded worker sends, and the command stays until that worker has
    nothing left to do (with or without ``wait``), so that ``campaign send`` on a laptop
    sends the campaign; Ctrl-C then pauses it, resumable with ``campaign resume``.
    """
    try:
        # Inside the try: a Ctrl-C that lands as soon as the worker has the task still pauses.
        enqueue(start_campaign, campaign_id)
        if wait:
            _watch(campaign_id)
        else:
            while not embedded.wait_until_idle(timeout=0.5):  # at once with a broker
                pass
    except KeyboardInterrupt:
        _interrupted(campaign_id)
        raise
    return _read_progress(campaign_id)


def _watch(campaign_id: int) -> None:
    """The progress bar, read from the database, until the campaign stops moving: until the
    embedded worker is idle, or with a broker until the rows say so."""
    in_process = embedded.active()
    columns = (
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        first = _read_progress(campaign_id)
        task = bar.add_task("send", total=first.total, rate="")
        started = time.monotonic()
        baseline = first.done
        while True:
            current = _read_progress(campaign_id)
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = f"{(current.done - baseline) / elapsed:,.0f} msg/s"
            if current.status == CampaignStatus.waiting:  # "…; next try at HH:MM:SS"
                rate = current.status_reason or "waiting for the relay"
            bar.update(task, completed=current.done, rate=rate)
            if in_process:
                if embedded.wait_until_idle(timeout=0.2):
                    bar.update(task, completed=_read_progress(campaign_id).done)
                    return
                continue
            if _remote_work_done(campaign_id, first, current, elapsed):
                return
            time.sleep(0.2)


def _remote_work_done(
    campaign_id: int,
    first: service.CampaignProgress,
    current: service.CampaignProgress,
    elapsed: float,
) -> bool:
    """With a broker: whether the rows say that the campaign stopped moving."""
    if current.status in FINAL:
        return True
    if current.status == first.status == CampaignStatus.draft and elapsed > NO_WORKER_SECONDS:
        # The start task waits in Redis with no worker to take it: say so rather than
        # watch a campaign that cannot move.
        err_console.print(
            f"no worker started campaign {campaign_id} within {NO_WORKER_SECONDS:.0f} s:"
            " is `newsletter worker` running? It starts as soon as one is."
        )
        return True
    return current.status == CampaignStatus.sending and current.queued == current.inflight == 0


def _interrupted(campaign_id: int) -> None:
    """Ctrl-C while this process sends: pause the campaign, so that its batch stops within a
    second and gives back its rows, and say how to go on. With a broker the workers go on:
    only the watching stops."""
    if not embedded.active():
        err_console.print(
            f"stopped watching; the workers go on (`newsletter campaign status {campaign_id}`)"
        )
        return
    with session_scope(get_settings().database_url) as db:
        campaign = service.require_campaign(db, campaign_id)
        paused = campaign.status in (CampaignStatus.sending, CampaignStatus.waiting)
        if paused:
            service.pause_campaign(db, campaign_id, "interrupted (Ctrl-C) while sending")
    embedded.stop(INTERRUPT_GRACE_SECONDS)
    if paused:
        err_console.print(
            f"campaign {campaign_id} paused; `newsletter campaign resume {campaign_id}` goes"
            " on where it stopped, mailing nobody twice"
        )


@app.command()
@handles_errors
def send(
    campaign_id: int = typer.Argument(..., help="The campaign id."),
    wait: bool = typer.Option(False, "--wait", help="Show a progress bar until it is done."),
    at: datetime | None = typer.Option(
        None,
        "--at",
        formats=["%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M%z"],
        help="Send later, e.g. 2026-12-01T09:00+0800: beat starts it (a `newsletter worker"
        " --beat`, or without a broker `newsletter serve`, running then).",
    ),
) -> None:
    """Start sending (or resume a paused one); sending twice mails nobody twice."""
    settings = get_settings()
    database_for_writing()
    check_mail_url(settings)
    if at is not None:
        with session_scope(settings.database_url) as db:
            service.schedule_campaign(db, campaign_id, at)
        console.print(f"campaign {campaign_id} scheduled for {at.isoformat()}")
        starter = "`newsletter serve`" if embedded.active() else "`newsletter worker --beat`"
        err_console.print(f"beat's sweep starts it then: {starter} must be running at that time")
        return
    with session_scope(settings.database_url) as db:
        current = service.require_campaign(db, campaign_id)
        service.refuse_pending_change(current)
        if current.status == CampaignStatus.paused:
            service.resume_campaign(db, campaign_id)
    _send_and_report(campaign_id, wait=wait)


def _send_and_report(campaign_id: int, *, wait: bool) -> None:
    """Send, print the counts, and exit non-zero if the campaign paused or lost deliveries."""
    result = send_and_watch(campaign_id, wait=wait)
    console.print(progress_line(result))
    if embedded.active() and result.status not in FINAL:
        # This process's worker has nothing left to do, yet the campaign did not end: a task
        # failed (its one-line error is above). The rows are as they were left.
        raise fail(
            f"campaign {campaign_id} stopped moving while {result.status}; see the error"
            f" above. `newsletter campaign send {campaign_id}` goes on where it stopped"
        )
    if result.status == CampaignStatus.paused or result.failed:
        raise fail(
            f"campaign {campaign_id} is {result.status}"
            + (f": {result.status_reason}" if result.status_reason else "")
            + (f"; {result.failed} deliveries failed" if result.failed else "")
        )


@app.command()
@handles_errors
def remind(
    number: int = typer.Argument(..., help="The session number."),
    subject: str | None = typer.Option(
        None, help="Subject line (default: 提醒：第 N 期… · the start time)."
    ),
    wait: bool = typer.Option(
        False, "--wait/--no-wait", help="Show a progress bar until it is done."
    ),
) -> None:
    """Remind those who answered yes (a confirmed seat, not the waitlist) and send it now.

    Each run is a new reminder campaign; within one, nobody is mailed twice.
    """
    settings = get_settings()
    database_for_writing()
    check_mail_url(settings)
    with session_scope(settings.database_url) as db:
        campaign = service.create_reminder(db, number, subject=subject)
        campaign_id, count = campaign.id, campaign.recipient_count
    err_console.print(f"reminder campaign {campaign_id}: {count} recipients")
    _send_and_report(campaign_id, wait=wait)


@app.command()
@handles_errors
def followup(
    number: int = typer.Argument(..., help="The session number (a session that has ended)."),
    everyone: bool = typer.Option(
        False,
        "--all",
        help="Thank everyone who answered yes or maybe, not only those checked in.",
    ),
    subject: str | None = typer.Option(
        None, help="Subject line (default: 感谢参加第 N 期… · 回放、资料与反馈)."
    ),
    wait: bool = typer.Option(
        False, "--wait/--no-wait", help="Show a progress bar until it is done."
    ),
) -> None:
    """After the session: thank those checked in (with --all, everyone who answered yes or
    maybe) with the record's recordings and slides and a one-question feedback form
    (1-5 and a comment, a signed link per person), and send it now.

    Once per session; refused before the session has ended and when nobody was checked in
    (then use --all). The answers appear on the dashboard's session page.
    """
    settings = get_settings()
    database_for_writing()
    check_mail_url(settings)
    with session_scope(settings.database_url) as db:
        campaign = create_followup(db, number, everyone=everyone, subject=subject)
        campaign_id, count = campaign.id, campaign.recipient_count
    err_console.print(f"follow-up campaign {campaign_id}: {count} recipients")
    _send_and_report(campaign_id, wait=wait)


@app.command()
@handles_errors
def status(campaign_id: int = typer.Argument(..., help="The campaign id.")) -> None:
    """The campaign's state and counts, and its bounce and complaint rates (per sent mail,
    with a warning above 2 % or 0.1 %); reads only: never migrates the database."""
    database_for_reading()
    console.print(progress_line(_read_progress(campaign_id)))
    with session_scope(get_settings().database_url) as db:
        rates = rates_of(service.require_campaign(db, campaign_id))
    console.print(returned_line(rates), soft_wrap=True)
    high = [
        what
        for what, above in (
            ("more than 2 % of the mail sent bounced", rates.bounce_warning),
            ("more than 0.1 % was reported as spam", rates.complaint_warning),
        )
        if above
    ]
    if high:
        err_console.print(
            f"[bold yellow]warning:[/] {' and '.join(high)}: clean the list before the next"
            " campaign (mailbox providers throttle or block senders above these rates)",
            soft_wrap=True,
        )


def returned_line(rates: ReturnedRates) -> str:
    """One line of returned mail: bounces and complaints, each as a share of sent mail."""
    return (
        f"returned: {rates.bounces} bounced ({percent(rates.bounce_rate)} of"
        f" {rates.sent} sent), {rates.complaints} complaints ({percent(rates.complaint_rate)})"
    )


def _change(campaign_id: int, action: str) -> None:
    settings = get_settings()
    database_for_writing()
    if action == "resume":
        check_mail_url(settings)
    with session_scope(settings.database_url) as db:
        if action == "pause":
            service.pause_campaign(db, campaign_id)
        elif action == "resume":
            service.resume_campaign(db, campaign_id)
        else:
            service.cancel_campaign(db, campaign_id)
    if action == "resume":
        send_and_watch(campaign_id, wait=False)
    console.print(progress_line(_read_progress(campaign_id)))


@app.command()
@handles_errors
def pause(campaign_id: int = typer.Argument(..., help="The campaign id.")) -> None:
    """Pause: no new batch starts; resume continues where it stopped."""
    _change(campaign_id, "pause")


@app.command()
@handles_errors
def resume(campaign_id: int = typer.Argument(..., help="The campaign id.")) -> None:
    """Resume a paused campaign."""
    _change(campaign_id, "resume")


@app.command()
@handles_errors
def cancel(campaign_id: int = typer.Argument(..., help="The campaign id.")) -> None:
    """Cancel: nobody still queued is mailed."""
    _change(campaign_id, "cancel")


@app.command("list")
@handles_errors
def list_(limit: int = typer.Option(50, help="How many, newest first.")) -> None:
    """Campaigns, newest first (reads only: never migrates the database)."""
    settings = get_settings()
    database_for_reading()
    with session_scope(settings.database_url) as db:
        rows = [p for _, p in service.list_progress(db, limit)]
    table = Table("id", "期数", "subject", "status", "sent", "failed", "skipped", "queued", "total")
    for p in rows:
        table.add_row(
            str(p.id),
            str(p.session_number),
            p.subject,
            p.state,
            str(p.sent),
            str(p.failed),
            str(p.skipped),
            str(p.queued + p.inflight),
            str(p.total),
        )
    console.print(table)


@app.command()
@handles_errors
def prune(
    older_than: str = typer.Option(
        ...,
        "--older-than",
        help="Age, in whole days or hours: 180d, 30d, 12h. Campaigns that ended (finished or"
        " cancelled) longer ago than this lose their delivery rows.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; change nothing."),
) -> None:
    """Remove the delivery rows of campaigns that ended long ago, keeping the campaigns and
    their counts (shown as "pruned"). Campaigns not over are left alone. Message-IDs of
    removed rows are never given to new deliveries."""
    try:
        age = retention.parse_age(older_than)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    settings = get_settings()
    if dry_run:
        database_for_reading()
    else:
        database_for_writing()
    plan = retention.plan(settings.database_url, age)
    for campaign_id, why in plan.left:
        err_console.print(f"campaign {campaign_id}: {why}")
    cut = f"ended before {plan.before:%Y-%m-%d %H:%M} UTC"
    if not plan.candidates:
        console.print(f"nothing to prune: no campaign {cut} still has delivery rows")
        return
    if dry_run:
        for c in plan.candidates:
            console.print(
                f"campaign {c.id} ({c.status} {c.finished_at:%Y-%m-%d}): {c.rows:,} delivery rows"
            )
        console.print(
            f"would remove {plan.rows:,} delivery rows of {len(plan.candidates)} campaigns {cut}"
            " (dry run: nothing changed)"
        )
        return
    removed = 0
    columns = (
        TextColumn("[bold]pruning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("prune", total=plan.rows)
        for c in plan.candidates:
            removed += retention.prune_campaign(
                settings.database_url, c.id, on_batch=lambda n: bar.advance(task, n)
            )
    console.print(
        f"removed {removed:,} delivery rows of {len(plan.candidates)} campaigns {cut};"
        " their counts are kept"
    )
