"""The ``newsletter`` command: thin wrappers that parse, call a service and print."""

from __future__ import annotations

import typer

from newsletter.cli import (
    campaign_cmd,
    db_cmd,
    demo_cmd,
    inbound_cmd,
    rsvp_cmd,
    sessions_cmd,
    subscribers_cmd,
)
from newsletter.cli.dns_cmd import dns
from newsletter.cli.preview_cmd import preview
from newsletter.cli.serve_cmd import serve
from newsletter.cli.worker_cmd import worker
from newsletter.logs import setup_logging

app = typer.Typer(
    name="newsletter",
    help="Salon invitations: session records → personalised invitations → RSVPs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(sessions_cmd.app, name="sessions")
app.add_typer(subscribers_cmd.app, name="subscribers")
app.add_typer(campaign_cmd.app, name="campaign")
app.add_typer(db_cmd.app, name="db")
app.add_typer(rsvp_cmd.app, name="rsvp")
app.add_typer(inbound_cmd.app, name="inbound")
app.command()(preview)
app.command()(worker)
app.command()(serve)
app.command()(demo_cmd.demo)
app.command()(dns)


def main() -> None:
    """Console-script entry point."""
    setup_logging()  # NEWSLETTER_LOG_FORMAT; addresses and URL passwords redacted
    app()
