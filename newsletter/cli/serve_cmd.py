"""``newsletter serve``: the RSVP web app (uvicorn)."""

from __future__ import annotations

import typer

from newsletter.cli.common import handles_errors
from newsletter.config import get_settings
from newsletter.migrate import upgrade


@handles_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, help="Worker processes."),
) -> None:
    """Serve the RSVP and unsubscribe pages and the calendar files."""
    import uvicorn

    upgrade(get_settings().database_url)
    uvicorn.run(
        "newsletter.web:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        access_log=False,
    )
