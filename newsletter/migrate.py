"""Run Alembic migrations programmatically (``newsletter db upgrade``, the demo, the tests), and
check, without changing anything, whether a database is at the schema this code needs.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from newsletter.errors import ConfigurationError, NewsletterError
from newsletter.redaction import redact_text, redact_url

MIGRATIONS = Path(__file__).parent / "migrations"

UPGRADE_HINT = "run `newsletter db upgrade`"


class SchemaNotCurrent(NewsletterError):
    """The database is empty, behind the code, or at a revision this code does not know."""


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at this package's migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # '%' is Alembic's interpolation character; a password may contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest).

    A database at a revision these migrations do not know (made by a newer version) raises
    :class:`SchemaNotCurrent` in one line instead of Alembic's ``CommandError``.
    """
    _check_url(url)
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise SchemaNotCurrent(
            f"cannot upgrade the database at {redact_url(url)}: {redact_text(str(exc))}"
            " (was it migrated by a newer version of newsletter?)"
        ) from None


def head_revision() -> str:
    """The newest revision this code's migrations know."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "the package ships its migrations"
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    from newsletter.db import get_engine

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current_schema(url: str) -> None:
    """Raise :class:`SchemaNotCurrent` unless the database at ``url`` is at the head revision.

    Changes nothing (for read-only commands, which must not migrate): a SQLite file that does
    not exist is reported, not created. Connection errors propagate as SQLAlchemy raises them.
    """
    where = redact_url(url)
    _check_url(url)
    parsed = make_url(url)
    sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (
        None,
        "",
        ":memory:",
    )
    if sqlite_file and not Path(str(parsed.database)).exists():
        raise SchemaNotCurrent(f"there is no database at {where} yet: {UPGRADE_HINT}")
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaNotCurrent(f"the database at {where} has no tables yet: {UPGRADE_HINT}")
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if current not in known:
        raise SchemaNotCurrent(
            f"the database at {where} is at revision {current}, which this version of"
            f" newsletter does not know (it needs {head}): install the newer version that"
            " migrated it"
        )
    raise SchemaNotCurrent(
        f"the database at {where} is at schema revision {current}, behind this version's"
        f" {head}: {UPGRADE_HINT}"
    )


def _check_url(url: str) -> None:
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            f"NEWSLETTER_DATABASE_URL {redact_url(url)!r} is not a database URL"
            " (e.g. postgresql+psycopg://user:password@host/newsletter)"
        ) from None
