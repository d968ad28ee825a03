"""What every command shares: the console, settings, the database check, and turning errors
into clean exits.

Commands that only read (lists, status, preview) never migrate: :func:`database_for_reading`
checks that the schema is current and otherwise says, in one line, how to upgrade. Commands
that write call :func:`database_for_writing`, which brings the schema up to date first (as
``newsletter db upgrade`` would), so a fresh directory works from its first import.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from newsletter.config import get_settings
from newsletter.errors import NewsletterError
from newsletter.migrate import require_current_schema, upgrade
from newsletter.redaction import redact_text, redact_url

P = ParamSpec("P")
R = TypeVar("R")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: Pauses between the tries of a first connection: a database that is restarting (a
#: PostgreSQL failover, a container coming up) gets about two seconds before we give up.
CONNECT_RETRY_DELAYS_S = (0.5, 1.5)

#: The rule above, for the help of each command group.
SCHEMA_NOTE = (
    "Commands that change data bring the database schema up to date first; commands that"
    " only read (list, status, preview) never migrate and refuse a schema that is behind."
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` on stderr and return the exit to raise: ``raise fail("…")``.

    URLs in the message lose their passwords (:func:`newsletter.redaction.redact_text`).
    """
    err_console.print(f"[bold red]error:[/] {escape(redact_text(message))}", soft_wrap=True)
    return typer.Exit(code)


def database_for_reading() -> str:
    """The configured database URL, after checking that its schema is current.

    Never migrates; a database that is missing, empty or behind raises a one-line
    :class:`~newsletter.migrate.SchemaNotCurrent` naming ``newsletter db upgrade``.
    """
    url = get_settings().database_url
    _with_connect_retry(require_current_schema, url)
    return url


def database_for_writing() -> str:
    """The configured database URL, migrated to the current schema first."""
    url = get_settings().database_url
    _with_connect_retry(upgrade, url)
    return url


def _with_connect_retry(step: Callable[[str], None], url: str) -> None:
    # Only this first contact is retried: it changes nothing when it fails (a migration runs
    # in a transaction), so trying again is safe, which is not true of a command's own work.
    for delay in (*CONNECT_RETRY_DELAYS_S, None):
        try:
            step(url)
            return
        except OperationalError:
            if delay is None:
                raise
            time.sleep(delay)


def describe_database_error(exc: SQLAlchemyError) -> str:
    """One line for a database failure: what happened, which database, and the driver's reason."""
    try:
        where = redact_url(get_settings().database_url)
    except Exception:  # settings that cannot even load: still report the database error
        where = "the configured database"
    original = exc.orig if isinstance(exc, DBAPIError) else None
    reason = str(original if original is not None else exc).strip().splitlines()
    detail = reason[0] if reason else type(exc).__name__
    if isinstance(exc, OperationalError):
        return f"cannot use the database at {where}: {detail}"
    return f"the database at {where} refused the command: {detail}"


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a NewsletterError, a database error or an OS error into one line on stderr, exit 1.

    Users never see a traceback for a failure we foresaw: a database that cannot be reached
    (or locked, or restarting) is named by its URL without the password; every message goes
    through the redaction of :func:`fail`.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except NewsletterError as exc:
            raise fail(str(exc)) from None
        except SQLAlchemyError as exc:
            raise fail(describe_database_error(exc)) from None
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper
