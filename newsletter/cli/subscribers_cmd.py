"""``newsletter subscribers``: import a CSV list, add, remove and list subscribers.

Thin: parse the options, call :mod:`subscribers.service`, print. Results go to stdout, refused
rows and errors to stderr; a command that refused anything exits non-zero.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from newsletter.cli.common import (
    SCHEMA_NOTE,
    console,
    database_for_reading,
    database_for_writing,
    err_console,
    fail,
    handles_errors,
)
from newsletter.db import session_scope
from subscribers import lists, service
from subscribers.csv_import import ImportReport
from subscribers.csv_import import Progress as ImportProgress
from subscribers.models import SubscriberStatus

app = typer.Typer(
    help="The subscriber list: import a CSV file, add, remove and list subscribers. " + SCHEMA_NOTE,
    no_args_is_help=True,
)

_PHASES = {"reading": "Checking rows", "storing": "Storing"}


def _plural(count: int, word: str) -> str:
    suffix = "es" if word.endswith("s") else "s"  # "addresses", not "addresss"
    return f"{count:,} {word}{'' if count == 1 else suffix}"


@app.command("import")
@handles_errors
def import_(
    file: Path = typer.Argument(
        ...,
        metavar="FILE.csv",
        help="UTF-8 CSV with columns email,name and optionally locale,tags (tags split by ';').",
        show_default=False,
    ),
    confirm: bool = typer.Option(
        False,
        "--confirm",
        help="Double opt-in: add new addresses as pending and send each a confirmation mail; "
        "they are mailed nothing else until they confirm. Without it the import is single "
        "opt-in: new addresses are active at once.",
    ),
) -> None:
    """Import subscribers from a CSV file; every refused row is reported with its line.

    Valid rows are stored in one transaction even when other rows are refused; the exit code
    is 1 when any row was refused. Unsubscribed, bounced and suppressed addresses in the file
    stay as they are: an import never re-subscribes anyone; erased addresses are skipped.
    """
    url = database_for_writing()
    with _progress_bar() as report_progress, session_scope(url) as db:
        report = service.import_csv(db, file, progress=report_progress, confirm=confirm)
    if report.confirmations:
        _send_confirmations()
    _print_import(report)
    if report.errors:
        raise typer.Exit(1)


def _send_confirmations() -> None:
    """Have the queued confirmation mails sent; without a broker this command sends them
    itself before it ends (a broker's worker does otherwise, and beat sends what is left)."""
    from tasks import embedded
    from tasks.subscribers import send_soon

    send_soon()
    embedded.wait_until_idle()


@contextmanager
def _progress_bar() -> Iterator[ImportProgress | None]:
    """A Rich progress bar on stderr, when stderr is a terminal (not in pipes, logs, tests)."""
    if not err_console.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    with bar:
        task = bar.add_task(_PHASES["reading"], total=None)

        def update(phase: str, done: int, total: int) -> None:
            bar.update(task, description=_PHASES.get(phase, phase), completed=done, total=total)

        yield update


def _print_import(report: ImportReport) -> None:
    for error in report.errors:
        err_console.print(f"line {error.line}: {error.reason}", markup=False, soft_wrap=True)
    console.print(
        f"{escape(str(report.path))}: {report.added:,} added, {report.updated:,} updated, "
        f"{report.unchanged:,} unchanged, {report.kept_unsubscribed:,} kept unsubscribed"
        + (f", {len(report.erased_lines):,} erased skipped" if report.erased_lines else ""),
        soft_wrap=True,
    )
    if report.kept_unsubscribed:
        console.print(
            f"{_plural(report.kept_unsubscribed, 'address')} in the file had unsubscribed, "
            "bounced or been suppressed; they were left as they are and will not be mailed.",
            soft_wrap=True,
        )
    if report.kept_pending:
        console.print(
            f"{_plural(report.kept_pending, 'address')} in the file signed up and have not "
            "confirmed yet; they were left as they are.",
            soft_wrap=True,
        )
    if report.erased_lines:
        lines = ", ".join(str(line) for line in report.erased_lines[:20])
        more = "…" if len(report.erased_lines) > 20 else ""
        console.print(
            f"{_plural(len(report.erased_lines), 'address')} had been erased at the person's "
            f"request and were skipped (line {lines}{more}): only their own sign-up adds them "
            "again.",
            soft_wrap=True,
        )
    if report.confirmations:
        console.print(
            f"{_plural(report.confirmations, 'new address')} added as pending: each was sent a "
            "confirmation mail and is mailed nothing else until it confirms.",
            soft_wrap=True,
        )
    if report.ignored_columns:
        names = ", ".join(repr(name) for name in report.ignored_columns)
        console.print(f"ignored columns: {escape(names)}", soft_wrap=True)
    if report.errors:
        err_console.print(
            f"{_plural(len(report.errors), 'row')} refused (listed above, nothing of them was "
            f"stored); the valid rows were stored ({_plural(report.stored, 'row')}).",
            markup=False,
            soft_wrap=True,
        )


@app.command("add")
@handles_errors
def add(
    email: str = typer.Argument(..., help="The address to add.", show_default=False),
    name: str = typer.Option("", "--name", "-n", help="Display name, used in the greeting."),
    locale: str | None = typer.Option(None, "--locale", help="e.g. zh-CN (default) or en."),
    tag: list[str] = typer.Option(
        [], "--tag", "-t", help="A tag (repeat the option, or separate tags with ';')."
    ),
    resubscribe: bool = typer.Option(
        False,
        "--resubscribe",
        help="Re-activate an address that unsubscribed, bounced or was suppressed. Only when "
        "the person asked for it.",
    ),
) -> None:
    """Add one subscriber. An unsubscribed address is not re-activated without --resubscribe."""
    url = database_for_writing()
    try:
        with session_scope(url) as db:
            added = service.add_subscriber(
                db, email, name=name, locale=locale, tags=tag, resubscribe=resubscribe
            )
            person = added.subscriber
            summary = f"{person.email}" + (f" ({person.name})" if person.name else "")
            tags = ", ".join(sorted(t.name for t in person.tags))
    except service.SubscriberInactive as exc:
        raise fail(
            f"{exc}. If they asked to receive invitations again, run the command again with "
            "--resubscribe."
        ) from None
    verb = "re-subscribed" if added.resubscribed else "added"
    console.print(
        f"{verb} {escape(summary)}" + (f", tags: {escape(tags)}" if tags else ""),
        soft_wrap=True,
    )


@app.command("remove")
@handles_errors
def remove(
    email: str = typer.Argument(..., help="The address to remove.", show_default=False),
    purge: bool = typer.Option(
        False,
        "--purge",
        help="Also delete the row, if the person never received a mail nor answered an RSVP.",
    ),
) -> None:
    """Stop mailing an address: it is marked unsubscribed ("removed by organizer")."""
    url = database_for_writing()
    with session_scope(url) as db:
        removed = service.remove_subscriber(db, email)
    address = escape(removed.email)
    if removed.changed:
        console.print(f"{address} is unsubscribed; no invitation will go to it again.")
    else:
        console.print(f"{address} was already {removed.previous_status}; left as it is.")
    if purge:
        try:
            with session_scope(url) as db:
                service.purge_subscriber(db, removed.email)
        except service.SubscriberHasHistory as exc:
            raise fail(f"{exc}; it stays on the list as {_kept_status(removed)}") from None
        console.print(f"{address} deleted, with its tags.")


def _kept_status(removed: service.Removed) -> str:
    return SubscriberStatus.unsubscribed.value if removed.changed else removed.previous_status


@app.command("suppress")
@handles_errors
def suppress(
    file: Path = typer.Argument(
        ...,
        metavar="FILE",
        help="UTF-8 text, one address a line; blank lines and lines starting with # are skipped.",
        show_default=False,
    ),
) -> None:
    """Add addresses to the suppression list: they are never mailed again.

    Addresses not on the list are stored as suppressed, so that no later import or sign-up
    mails them. Lines that are no address are reported by number; the others are applied.
    """
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise fail(f"{file}: not UTF-8 text (byte {exc.start})") from None
    url = database_for_writing()
    with session_scope(url) as db:
        report = lists.suppress_list(db, lines, reason=f"suppression list {file.name}")
    for number, reason in report.errors:
        err_console.print(f"line {number}: {reason}", markup=False, soft_wrap=True)
    console.print(
        f"{escape(str(file))}: {report.added:,} added as suppressed, {report.suppressed:,}"
        f" suppressed, {report.already:,} already suppressed, {len(report.errors):,} bad"
        f" {'line' if len(report.errors) == 1 else 'lines'}",
        soft_wrap=True,
    )
    if report.errors:
        raise typer.Exit(1)


@app.command("list")
@handles_errors
def list_(
    status: SubscriberStatus | None = typer.Option(
        None, "--status", "-s", help="Only subscribers with this status.", case_sensitive=False
    ),
    tag: str | None = typer.Option(None, "--tag", "-t", help="Only subscribers with this tag."),
    limit: int = typer.Option(50, "--limit", "-l", min=1, help="How many to show."),
    offset: int = typer.Option(0, "--offset", min=0, help="How many to skip (paging)."),
    as_csv: bool = typer.Option(
        False,
        "--csv",
        help="Every matching subscriber as CSV on standard output (--limit and --offset do not"
        " apply); cells are spreadsheet-safe.",
    ),
) -> None:
    """Subscribers in the order they were added, with counts per status."""
    url = database_for_reading()
    if as_csv:
        with session_scope(url) as db:
            for piece in lists.subscribers_csv(db, status=status, tag=tag):
                sys.stdout.write(piece)
        return
    with session_scope(url) as db:
        page = service.list_subscribers(db, status=status, tag=tag, limit=limit, offset=offset)
        counts = service.status_counts(db)
        table = Table("id", "email", "name", "locale", "status", "tags")
        # Addresses, ids, locales and statuses are never cut short on a narrow terminal;
        # names and tags wrap instead.
        widest_id = max((len(str(p.id)) for p in page.items), default=2)
        longest = max((len(p.email) for p in page.items), default=5)
        widest_locale = max((len(p.locale) for p in page.items), default=6)
        fixed = ((0, widest_id), (1, min(longest, 64)), (3, widest_locale), (4, 12))
        for index, width in fixed:
            table.columns[index].no_wrap = True
            table.columns[index].min_width = width
        for person in page.items:
            table.add_row(
                str(person.id),
                escape(person.email),
                escape(person.name),
                person.locale,
                person.status,
                escape(", ".join(sorted(t.name for t in person.tags))),
            )
    if page.items:
        console.print(table)
    filters = ", ".join(
        part
        for part in (f"status {status.value}" if status else "", f"tag {tag}" if tag else "")
        if part
    )
    if page.items:
        shown = f"showing {offset + 1:,}–{offset + len(page.items):,} of {page.total:,}"
    elif page.total:
        shown = f"nothing past {offset:,}: {page.total:,} match"
    else:
        shown = "no subscribers match"
    console.print(
        escape(shown + (f" ({filters})" if filters else "")), soft_wrap=True, highlight=False
    )
    console.print(" · ".join(f"{n:,} {s}" for s, n in counts.items()), soft_wrap=True)


@app.command("export")
@handles_errors
def export(
    email: str = typer.Argument(..., help="The person's address.", show_default=False),
) -> None:
    """Print as JSON everything held about one person (GDPR access request): profile,
    topics, deliveries, answers and their history, subscription mails, returned mail."""
    from newsletter.config import get_settings
    from subscribers import gdpr

    url = database_for_reading()
    with session_scope(url) as db:
        person = gdpr.find_by_email(db, email)
        text = gdpr.export_json(db, person, settings=get_settings())
    sys.stdout.write(text)


@app.command("erase")
@handles_errors
def erase(
    email: str = typer.Argument(..., help="The person's address.", show_default=False),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase one person's personal data everywhere (GDPR); anonymous counts are kept, and a
    keyed hash keeps a later import from adding the address again (signing up still can)."""
    from newsletter.config import get_settings
    from subscribers import gdpr

    url = database_for_writing()
    with session_scope(url) as db:
        address = gdpr.find_by_email(db, email).email  # a clean error before the question
    if not yes and not typer.confirm(
        f"Erase {address}: address, name, topics, subscription mails and returned mail? "
        "This cannot be undone.",
        err=True,
    ):
        raise fail("nothing was erased")
    with session_scope(url) as db:
        erased = gdpr.erase_subscriber(db, get_settings(), gdpr.find_by_email(db, address))
    console.print(
        f"erased subscriber #{erased.subscriber_id}: no personal data is held any more; "
        f"{_plural(erased.answers_given_up, 'answer')} for sessions ahead given up; "
        "deliveries, answers and counts are kept anonymously.",
        soft_wrap=True,
    )
