"""``newsletter preview``: one invitation (or reminder), rendered exactly as it would be sent."""

from __future__ import annotations

from pathlib import Path

import typer

from newsletter.campaigns.compiled import build_message, compile_invitation, recipient_for
from newsletter.campaigns.models import CampaignKind
from newsletter.cli.common import (
    console,
    database_for_reading,
    err_console,
    fail,
    handles_errors,
)
from newsletter.config import Settings, get_settings
from newsletter.db import session_scope, utcnow
from newsletter.sessions.service import require_session
from subscribers import repo as subscribers_repo
from subscribers.validation import normalise_email


@handles_errors
def preview(
    number: int = typer.Argument(..., help="The session number."),
    to: str | None = typer.Option(None, "--to", help="Render for this subscriber's address."),
    out: Path | None = typer.Option(
        None, "--out", help="Write FILE.html (the HTML part) or FILE.eml (the whole message)."
    ),
    subject: str | None = typer.Option(None, help="Subject line (default: from the record)."),
    reminder: bool = typer.Option(
        False, "--reminder", help="The reminder that `campaign remind` sends, not the invitation."
    ),
    past: bool = typer.Option(
        False,
        "--past",
        help="The mail of `campaign create --past` (a session that has ended): no RSVP buttons.",
    ),
) -> None:
    """Render one invitation (or reminder) exactly as a campaign would send it.

    Reads only: never migrates the database (run `newsletter db upgrade` if it is behind).
    """
    settings = get_settings()
    database_for_reading()
    kind = CampaignKind.reminder if reminder else CampaignKind.invitation
    path, size = write_preview(
        settings, number, to=to, out=out, subject=subject, kind=kind, rsvp=not past
    )
    console.print(f"wrote {path} ({size:,} bytes as a message)")


def write_preview(
    settings: Settings,
    number: int,
    *,
    to: str | None = None,
    out: Path | None = None,
    subject: str | None = None,
    kind: CampaignKind = CampaignKind.invitation,
    rsvp: bool = True,
) -> tuple[Path, int]:
    """Write session ``number``'s invitation (or reminder) for ``to`` (or a sample reader)
    to ``out``.

    With ``rsvp=False``, the mail of a ``--past`` campaign (no answering). The message gets
    a Message-ID of its own (``<p…>``), never one a delivery could have. Returns the path
    written and the size of the whole message in bytes.
    """
    if out is None:
        out = settings.var_dir / f"preview-{number}.html"
    if out.suffix not in (".eml", ".html", ".htm"):
        raise fail(f"{out}: --out must end in .html or .eml")
    with session_scope(settings.database_url) as db:
        salon = require_session(db, number)
        if rsvp and kind is CampaignKind.invitation and salon.ends_at <= utcnow():
            err_console.print(
                f"session {number} has ended: a campaign for it needs `campaign create --past`,"
                " whose mail has no RSVP buttons (see it with `preview --past`)",
                markup=False,
            )
        name, address, subscriber_id = "订阅者", "subscriber@example.org", 0
        if to:
            address = normalise_email(to)
            person = subscribers_repo.get_by_email(db, address)
            if person is None:
                err_console.print(f"{address} is not a subscriber: its links will not work")
            else:
                name, subscriber_id = person.name, person.id
        compiled = compile_invitation(
            db,
            salon,
            subject=subject,
            campaign_id=0,
            settings=settings,
            kind=kind,
            rsvp=rsvp,
        )
    keys = settings.secret_keys
    message = build_message(
        compiled,
        0,
        subscriber_id,
        name,
        address,
        settings,
        keys,
        message_id=compiled.factory.preview_message_id(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".eml":
        out.write_bytes(message.data)
    else:
        _, recipient = recipient_for(compiled, subscriber_id, name, settings, keys)
        out.write_text(compiled.template.personalise(recipient).html, encoding="utf-8")
    return out, len(message.data)
