"""Logging for every entry point: text for people or JSON for collectors, never a secret.

:func:`setup_logging` is called by the ``newsletter`` command before anything logs; the web
server's processes get the same configuration through :func:`uvicorn_log_config` (uvicorn
applies it in each worker process it spawns). Every handler carries a
:class:`RedactingFilter`, so no record leaves the process with an e-mail address or the
password of a URL in it, whichever library wrote it.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from newsletter.config import Settings, get_settings
from newsletter.errors import ConfigurationError
from newsletter.redaction import redact_text

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# An address: a local part (any letters, CJK included) and a dotted domain. No "*" in the
# local part: "***@host" is what a redacted URL password leaves.
_ADDRESS = re.compile(r"[\w.!#$%&'+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
ADDRESS_REDACTED = "<address>"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with URL passwords (and secret query values) and e-mail addresses replaced."""
    text = redact_text(text)
    if "@" not in text:
        return text  # the common case, kept cheap: this runs on every record
    return _ADDRESS.sub(ADDRESS_REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, extra fields and traceback without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def formatter(log_format: str = "text") -> logging.Formatter:
    """The formatter for ``log_format`` ("text" or "json")."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def _log_format() -> str:
    try:
        return get_settings().log_format
    except ConfigurationError:  # the command reports the bad settings itself, in text
        return "text"


def logging_config(log_format: str, *, level: str = "WARNING") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``log_format``: one stderr handler on the root
    logger, redacting, with the ``newsletter`` and ``tasks`` loggers at ``level``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {"default": {"()": formatter, "log_format": log_format}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["redact"],
            }
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "newsletter": {"level": level},
            "tasks": {"level": level},
            "celery": {"level": level},
            # uvicorn's own loggers propagate to the root handler (no second format).
            "uvicorn": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def setup_logging(*, level: str = "WARNING") -> None:
    """Configure logging for this process from ``NEWSLETTER_LOG_FORMAT``."""
    logging.config.dictConfig(logging_config(_log_format(), level=level))
    logging.captureWarnings(True)


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """The configuration uvicorn applies in each web process (servers log at INFO)."""
    return logging_config(settings.log_format, level="INFO")
