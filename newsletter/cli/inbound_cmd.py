"""``newsletter inbound``: mail coming back (bounces, complaints, mailto unsubscribes).

Command lines::

    newsletter inbound [FILE...]            raw messages from files, or stdin without one
    newsletter inbound serve --host H --port P [--lmtp]
    newsletter inbound poll [--every SECONDS]  the IMAP mailbox of NEWSLETTER_INBOUND_IMAP_URL

Layout for the commands of this group: ``app`` is the Typer group; ``read`` (hidden) is the
files/stdin command that :class:`_FilesOrCommand` runs when the first word is not a
subcommand, so ``newsletter inbound a.eml`` and ``newsletter inbound serve`` both work; each
other subcommand is a plain ``@app.command("name")`` function with ``@handles_errors``, e.g.
the IMAP poll as ``@app.command("poll")``. Every message goes through
:func:`newsletter.inbound.service.process_message` in its own ``session_scope``.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from newsletter.cli.common import (
    console,
    database_for_writing,
    describe_database_error,
    err_console,
    fail,
    handles_errors,
)
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.inbound.service import (
    MAX_MESSAGE_BYTES,
    InboundOutcome,
    MessageTooLarge,
    process_message,
)

# sysexits.h EX_TEMPFAIL: a Postfix pipe transport (and procmail) keep the message and try
# again later, where any other failure would bounce the bounce.
EX_TEMPFAIL = 75


class _FilesOrCommand(TyperGroup):
    """A group whose first word is either a subcommand or the start of ``read``'s files."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["read", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_FilesOrCommand,
    help=(
        "Mail coming back: `newsletter inbound [FILE...]` reads raw messages (stdin without a"
        " FILE: a Postfix pipe transport or procmail can feed it) and prints one line each;"
        " `newsletter inbound serve` receives them over SMTP or LMTP. Bounces suppress,"
        " complaints and mailto unsubscribes unsubscribe, auto-replies change nothing; the"
        " same message twice counts once."
    ),
    subcommand_metavar="[FILE]... | COMMAND [ARGS]...",
    no_args_is_help=False,
)


def describe(name: str, outcome: InboundOutcome) -> str:
    """One line for a processed message: what it was, how it matched, what changed."""
    matched = f"matched by {outcome.matched_by}" if outcome.matched_by else "matched nothing"
    where = []
    if outcome.delivery_id is not None:
        where.append(f"delivery {outcome.delivery_id}")
    if outcome.campaign_id is not None:
        where.append(f"campaign {outcome.campaign_id}")
    if where:
        matched += f" ({', '.join(where)})"
    if not outcome.new:
        return f"{name}: {outcome.kind}, {matched}: already processed (event {outcome.event_id})"
    changed = "; ".join(outcome.changes) or "nothing changed"
    return f"{name}: {outcome.kind}, {matched}: {changed} (event {outcome.event_id})"


def _error(message: str) -> None:
    # One line per file (no wrapping, no markup: a file name may hold brackets).
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def _read_stdin(limit: int) -> bytes:
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise MessageTooLarge(f"the message on stdin is larger than {limit:,} bytes")
    return data


def _read_file(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MessageTooLarge(f"the message is larger than {limit:,} bytes")
    return data


@app.command("read", hidden=True)
@handles_errors
def read(
    files: list[Path] = typer.Argument(
        None, help="Raw messages (RFC 5322), one a file; none or '-': stdin.", show_default=False
    ),
    recipient: list[str] = typer.Option(
        [],
        "--recipient",
        help="The envelope recipient (e.g. Postfix's ${original_recipient}): its VERP form"
        " names the delivery even when the bounce's headers do not. Repeatable.",
    ),
) -> None:
    """Read raw returned messages and apply each (stdin when no FILE is given)."""
    settings = get_settings()
    try:
        url = database_for_writing()
    except OperationalError as exc:
        # Unreachable from the start: the same temporary failure, the pipe keeps the message
        # (any other non-zero status makes Postfix bounce the bounce, and it is lost).
        raise fail(describe_database_error(exc), EX_TEMPFAIL) from None
    names = [str(f) for f in files] if files else ["-"]
    failures = 0
    for name in names:
        try:
            raw = (
                _read_stdin(MAX_MESSAGE_BYTES)
                if name == "-"
                else _read_file(Path(name), MAX_MESSAGE_BYTES)
            )
        except OSError as exc:
            _error(f"{name}: cannot read it: {exc.strerror or exc}")
            failures += 1
            continue
        except MessageTooLarge as exc:
            _error(f"{name}: {exc}; not processed")
            failures += 1
            continue
        try:
            with session_scope(url) as db:
                outcome = process_message(
                    db, settings, raw, source="file", envelope_recipients=recipient
                )
        except OperationalError as exc:
            # The database is away: say so and ask the pipe to try later (nothing is lost).
            raise fail(describe_database_error(exc), EX_TEMPFAIL) from None
        console.print(escape(describe("stdin" if name == "-" else name, outcome)), soft_wrap=True)
    if failures:
        raise typer.Exit(1)


@app.command("serve")
@handles_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(2525, help="Port to listen on."),
    lmtp: bool = typer.Option(False, "--lmtp", help="Speak LMTP (RFC 2033) instead of SMTP."),
    max_size: int = typer.Option(
        MAX_MESSAGE_BYTES, "--max-size", min=1024, help="Largest message accepted, in bytes."
    ),
) -> None:
    """Receive returned mail over SMTP (or LMTP) for the bounce address and its VERP forms.

    Other recipients get 550; each message is stored before the 250 is sent.
    """
    from newsletter.inbound.receiver import receiver

    settings = get_settings()
    if not settings.bounce_address:
        raise fail(
            "NEWSLETTER_BOUNCE_ADDRESS is not set: the receiver would accept mail for nobody"
            " (set it, e.g. bounces@mail.example.org, and point the domain's MX here)"
        )
    database_for_writing()
    controller = receiver(settings, host=host, port=port, lmtp=lmtp, max_size=max_size)
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    controller.start()
    try:
        err_console.print(
            f"receiving {'LMTP' if lmtp else 'SMTP'} on {host}:{controller.port} for"
            f" {settings.bounce_address} and its VERP forms (Ctrl-C stops)"
        )
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


@app.command("poll")
@handles_errors
def poll(
    every: float = typer.Option(
        0, "--every", min=0, help="Poll again every SECONDS until stopped (0: once)."
    ),
) -> None:
    """Read the unseen messages of the IMAP mailbox NEWSLETTER_INBOUND_IMAP_URL names.

    Each is applied, then marked seen (never moved or deleted): a message is marked only
    after its event is stored, so a crash loses none and a second read counts once. With
    --every, a server or database that is away is reported and tried again.
    """
    import time

    from newsletter.inbound.imap import ImapError
    from newsletter.inbound.imap import poll as poll_mailbox

    settings = get_settings()
    database_for_writing()

    def show(uid: int, outcome: InboundOutcome) -> None:
        console.print(describe(f"imap message {uid}", outcome), soft_wrap=True)

    while True:
        try:
            result = poll_mailbox(settings, on_message=show)
        except (ImapError, OperationalError) as exc:
            if not every:
                raise
            # Polling for ever: a server or database away for a while is waited out; what
            # was not stored stays unseen and is read at the next poll.
            reason = describe_database_error(exc) if isinstance(exc, OperationalError) else exc
            err_console.print(
                f"error: {reason}; trying again in {every:g} s", markup=False, soft_wrap=True
            )
            time.sleep(every)
            continue
        console.print(
            f"imap: {result.processed} processed, {result.duplicates} already processed"
            + (
                f", {result.left_unseen} left unseen (too large to read, or gone)"
                if result.left_unseen
                else ""
            ),
            soft_wrap=True,
        )
        if not every:
            return
        time.sleep(every)
