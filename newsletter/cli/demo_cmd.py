"""``newsletter demo``: the whole main job on the embedded defaults, in one command."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import typer
from sqlalchemy import select

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Campaign, CampaignKind
from newsletter.cli.campaign_cmd import progress_line, send_and_watch
from newsletter.cli.common import console, fail, handles_errors
from newsletter.cli.demo_session import upcoming_demo_record
from newsletter.cli.preview_cmd import write_preview
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.links import recipient_links
from newsletter.migrate import upgrade
from newsletter.resources import EXAMPLES_DIR
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.service import import_csv, list_subscribers


def demo(
    examples: Path = typer.Option(EXAMPLES_DIR, help="Folder with sessions/ and subscribers.csv."),
    serve: bool = typer.Option(True, help="Serve the RSVP web app afterwards (Ctrl-C stops)."),
) -> None:
    """Set up a local database, import the samples and an upcoming demo session, send its
    invitation to the local outbox, print where to look, and serve the RSVP web app."""
    _demo(examples, serve)


@handles_errors
def _demo(examples: Path, serve: bool) -> None:
    settings = get_settings()
    # The dashboard's token exists from the start (generated into var/ unless configured), so a
    # newcomer who opens /admin has one to type before any failed login.
    settings.admin_bearer_token  # noqa: B018
    url = settings.database_url
    console.print(f"[bold]1.[/] database {url}")
    upgrade(url)
    with session_scope(url) as db:
        sessions_report = import_records(db, [examples / "sessions"], timezone=settings.timezone)
    if sessions_report.errors:
        raise fail("\n".join(sessions_report.errors))
    samples = sessions_report.created + sessions_report.updated + sessions_report.unchanged
    if not samples:
        raise fail(f"no session records in {examples / 'sessions'}")
    console.print(
        f"[bold]2.[/] sessions: {len(sessions_report.created)} created, "
        f"{len(sessions_report.updated)} updated, {len(sessions_report.unchanged)} unchanged"
    )
    upcoming = upcoming_demo_record(
        examples / "sessions",
        settings.var_dir / "demo-sessions",
        number=max(samples) + 1,
        now=utcnow(),
    )
    with session_scope(url) as db:
        demo_report = import_records(db, [upcoming], timezone=settings.timezone)
    if demo_report.errors:
        raise fail("\n".join(demo_report.errors))
    number = max(samples) + 1
    console.print(
        f"    and session {number}, still ahead, for trying the RSVP pages: {upcoming}",
        soft_wrap=True,
    )
    with session_scope(url) as db:
        people = import_csv(db, examples / "subscribers.csv")
    console.print(
        f"[bold]3.[/] subscribers: {people.added} added, {people.updated} updated, "
        f"{people.unchanged} unchanged"
    )
    with session_scope(url) as db:
        salon = sessions_repo.get_by_number(db, number)
        assert salon is not None, "imported above"
        # Running the demo again resumes the same campaign instead of mailing everyone anew.
        existing = db.scalars(
            select(Campaign)
            .where(Campaign.session_id == salon.id, Campaign.kind == CampaignKind.invitation)
            .order_by(Campaign.id)
        ).first()
        campaign = existing or campaigns.create_campaign(db, number)
        campaign_id, reused = campaign.id, existing is not None
    console.print(
        f"[bold]4.[/] campaign {campaign_id} for session {number}"
        + (" (already created by an earlier run: nobody is mailed twice)" if reused else "")
    )
    if campaign.status in ("draft", "sending", "paused"):
        if campaign.status == "paused":
            with session_scope(url) as db:
                campaigns.resume_campaign(db, campaign_id)
        result = send_and_watch(campaign_id, wait=True)
    else:
        with session_scope(url) as db:
            result = campaigns.progress(db, campaign_id)
    console.print(progress_line(result))
    outbox = Path(settings.mail_url.removeprefix("file://")).resolve()
    with session_scope(url) as db:
        first = list_subscribers(db, limit=1).items
    preview_path, _ = write_preview(settings, number, to=first[0].email if first else None)
    console.print()
    console.print(
        f"[bold green]Done.[/] {result.sent} invitations are in {outbox}/ (one .eml each;"
    )
    console.print("  open one with a mail client, e.g. Thunderbird: File → Open → Saved Message).")
    console.print("  To see one in a browser, open:")
    console.print(f"  {preview_path.resolve().as_uri()}", soft_wrap=True)
    if first:
        with session_scope(url) as db:
            salon = sessions_repo.get_by_number(db, number)
            assert salon is not None, "imported above"
            links = recipient_links(
                settings.base_url,
                settings.secret_keys,
                session_id=salon.id,
                session_number=number,
                subscriber_id=first[0].id,
                campaign_id=campaign_id,
                unsubscribe_mailbox=None,
            )
        console.print(f"  {first[0].name}'s RSVP page (the 是 button of the mail):")
        console.print(f"  {links.rsvp_yes}", soft_wrap=True)
    console.print(f"  The organizer dashboard: {settings.base_url}/admin", soft_wrap=True)
    console.print(
        f"  (sign in with the admin token {settings.admin_token_location}).", soft_wrap=True
    )
    if serve:
        parsed = urlsplit(settings.base_url)
        console.print(f"\nServing the RSVP web app on {settings.base_url} (Ctrl-C stops).")
        import uvicorn

        from newsletter.web.server import server_options

        # The same limits, timeouts and proxy trust as `newsletter serve`.
        uvicorn.run(
            "newsletter.web:create_app",
            factory=True,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 8000,
            **server_options(settings),
        )
