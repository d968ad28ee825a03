"""``newsletter worker``: a Celery worker, the same as ``celery -A tasks worker``."""

from __future__ import annotations

import typer

from newsletter.cli.common import fail
from newsletter.config import get_settings
from newsletter.errors import ConfigurationError
from newsletter.logs import setup_logging
from newsletter.mail.dkim import signer_for


def worker(
    concurrency: int = typer.Option(1, help="Processes in this worker."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
    beat: bool = typer.Option(
        False, "--beat", help="Also run the scheduler (scheduled campaigns, the sweeper)."
    ),
) -> None:
    """Run a Celery worker for the configured broker."""
    if get_settings().broker_url is None:
        raise fail(
            "NEWSLETTER_BROKER_URL is not set: without a broker, `newsletter serve` and the "
            "commands that send run their tasks on an embedded worker; no worker is needed"
        )
    try:
        signer_for(get_settings())  # a bad DKIM key: one line now, not at the first mail
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    from tasks.celery_app import app

    # The same handler and redaction as every command, at the worker's level: one line per
    # batch (newsletter.campaigns.sending), faults in one line each.
    setup_logging(level=loglevel.upper())
    argv = ["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}"]
    if beat:
        argv.append("--beat")
    app.worker_main(argv)
