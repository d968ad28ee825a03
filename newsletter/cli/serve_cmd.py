"""``newsletter serve``: the RSVP web app (uvicorn)."""

from __future__ import annotations

import logging
import os
import shutil

import typer

from newsletter.cli.common import handles_errors
from newsletter.config import get_settings
from newsletter.mail.dkim import signer_for
from newsletter.migrate import upgrade

log = logging.getLogger("newsletter.serve")


#: Seconds a worker process of ``serve --workers N`` may take to import the app and answer.
WORKER_START_TIMEOUT_S = 30


@handles_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, help="Worker processes."),
) -> None:
    """Serve the RSVP and unsubscribe pages, the dashboard and the calendar files.

    Without NEWSLETTER_BROKER_URL each server process also runs the tasks it hands over
    (campaigns sent from the dashboard or the API) and beat's sweep, on an embedded worker.
    """
    import uvicorn

    from newsletter.web.server import server_options

    settings = get_settings()
    signer_for(settings)  # a bad DKIM key: one line now, not a campaign paused later
    upgrade(settings.database_url)
    # Exists before anyone opens /admin: the organizer needs it for the first login.
    settings.admin_bearer_token  # noqa: B018 - creates var/admin.token when not configured
    options = server_options(settings)
    logging.getLogger("newsletter").setLevel(logging.INFO)
    log.info("dashboard: %s/admin", settings.base_url)
    log.info("admin token: %s", settings.admin_token_location)
    shared_metrics = _multiprocess_metrics(settings.var_dir, workers)
    try:
        if settings.metrics_listen:
            from newsletter.metrics.exposition import start_listener

            listen_host, listen_port = start_listener(settings)
            log.info("metrics: http://%s:%s/metrics (no token)", listen_host, listen_port)
        uvicorn.run(
            "newsletter.web:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # uvicorn's default 5 s makes the supervisor kill a worker process still importing
            # the app on a busy machine (7 s was seen under load 8), over and over.
            timeout_worker_healthcheck=WORKER_START_TIMEOUT_S,
            **options,
        )
    finally:
        if shared_metrics:
            shutil.rmtree(shared_metrics, ignore_errors=True)


def _multiprocess_metrics(var_dir: os.PathLike[str], workers: int) -> str | None:
    """With several worker processes, a directory where they keep their request-latency
    samples, so that each one's /metrics (and the listener) reports all of them; None with
    one process, which keeps its samples in memory."""
    from newsletter.metrics.exposition import MULTIPROCESS_DIR

    if workers < 2 or os.environ.get(MULTIPROCESS_DIR):
        return None
    directory = os.path.join(os.fspath(var_dir), "metrics", f"serve-{os.getpid()}")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    os.environ[MULTIPROCESS_DIR] = directory  # inherited by the worker processes
    return directory
