"""Time arithmetic in the waitlist's SQL: a timestamp plus a number of seconds from a column,
the same on PostgreSQL and SQLite.

The promotion cutoff and the time a promoted person has to confirm are columns of the session
(``promotion_cutoff_s``, ``confirm_within_s``), so the statements that promote add them to
"now" in SQL: the rules stay in the one statement, with no read of the session beforehand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from newsletter.db import UtcDateTime


class add_seconds(FunctionElement[datetime]):
    """``when`` plus ``seconds`` (an integer expression; NULL gives NULL)."""

    type = UtcDateTime()
    name = "add_seconds"
    inherit_cache = True

    def __init__(self, when: ColumnElement[Any], seconds: ColumnElement[Any]) -> None:
        super().__init__(when, seconds)


@compiles(add_seconds)
def _add_seconds_postgresql(element: add_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    when, seconds = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"({when} + {seconds} * INTERVAL '1 second')"


@compiles(add_seconds, "sqlite")
def _add_seconds_sqlite(element: add_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy stores SQLite timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds are
    # added by strftime and the fraction (from the 20th character on) is kept as it was, so
    # the result compares as text with the stored values and reads back exactly.
    when, seconds = (compiler.process(clause, **kw) for clause in element.clauses)
    shifted = f"strftime('%Y-%m-%d %H:%M:%S', {when}, '+' || ({seconds}) || ' seconds')"
    return f"({shifted} || substr({when}, 20))"
