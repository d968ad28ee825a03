"""Reading session records from YAML files, with errors that name file, field and problem."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from newsletter.errors import RecordError
from newsletter.sessions.schema import SessionRecord

RECORD_SUFFIXES = (".yaml", ".yml")


def collect_record_paths(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their ``*.yaml``/``*.yml`` files (sorted); keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in RECORD_SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            raise RecordError(f"{path}: no such file or folder")
    return found


def _field_path(location: tuple[int | str, ...]) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the record)"


def describe_validation_error(path: Path, error: ValidationError) -> str:
    """One line per problem: ``file: field: what is wrong``."""
    lines = []
    for item in error.errors(include_url=False):
        # Union members add their type names to the location; they mean nothing to a reader.
        location = tuple(
            p
            for p in item["loc"]
            if not (
                (isinstance(p, str) and p[:1].isupper())
                or p
                in {
                    "str",
                    "constrained-str",
                    "function-after[_aware(), datetime]",
                }
            )
        )
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the record format)"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}: {_field_path(location)}: {message}")
    return "\n".join(dict.fromkeys(lines))


def parse_record(path: Path, text: str) -> SessionRecord:
    """Validate the YAML ``text`` read from ``path``; raise RecordError naming what is wrong."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecordError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise RecordError(
            f"{path}: a session record must be a mapping of fields, got {type(data).__name__}"
        )
    try:
        return SessionRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(describe_validation_error(path, exc)) from None


def load_record(path: Path) -> SessionRecord:
    """Read and validate one record file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_record(path, text)
