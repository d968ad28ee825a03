"""Reading session records from YAML files, with errors that name file, field and problem."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import ComposerError
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import Node

from newsletter.errors import RecordError
from newsletter.sessions.schema import SessionRecord

RECORD_SUFFIXES = (".yaml", ".yml")

#: The largest record file read. A session record is a few kilobytes; a bigger file is a
#: mistake (or an attack), and is refused before it is read into memory.
MAX_RECORD_BYTES = 1024 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses anchors (``&a``) and aliases (``*a``).

    Aliases let a few hundred bytes expand into millions of nodes ("billion laughs"); a
    session record never needs them. The check runs on the parser's events, before any node
    is composed, so nothing is ever expanded.
    """

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent) or (
            isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None
        ):
            kind = "alias" if isinstance(event, AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise ComposerError(
                None,
                None,
                f"YAML {kind} {sign}{event.anchor} is not allowed in a session record"
                " (write the value out in full)",
                event.start_mark,  # type: ignore[arg-type]
            )
        return super().compose_node(parent, index)


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
        data: Any = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
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
        record = SessionRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(describe_validation_error(path, exc)) from None
    check_talk_times(path, record)
    return record


def check_talk_times(path: Path, record: SessionRecord) -> None:
    """Refuse a record whose talks start before the session starts or end after it ends.

    Checked at import rather than in the schema, so that sessions stored before the rule
    still render; every offending talk is named with its times and the session's.
    """
    session = f"{_when(record.starts_at)}–{_when(record.ends_at)}"
    problems = []
    for index, talk in enumerate(record.talks):
        where = f"{path}: talks[{index}] {talk.title!r}"
        if talk.starts_at is not None and talk.starts_at < record.starts_at:
            problems.append(
                f"{where}: starts at {_when(talk.starts_at)}, before the session ({session}) starts"
            )
        if talk.ends_at is not None and talk.ends_at > record.ends_at:
            problems.append(
                f"{where}: ends at {_when(talk.ends_at)}, after the session ({session}) ends"
            )
    if problems:
        raise RecordError("\n".join(problems))


def _when(moment: datetime) -> str:
    # The offset the record was written in: the organizer compares with their own file.
    return moment.isoformat(timespec="minutes")


def load_record(path: Path) -> SessionRecord:
    """Read and validate one record file; files over :data:`MAX_RECORD_BYTES` are refused."""
    with path.open("rb") as file:
        size = path.stat().st_size
        # Read one byte past the limit: a file that grows after stat() is caught as well.
        data = file.read(MAX_RECORD_BYTES + 1) if size <= MAX_RECORD_BYTES else b""
        if size > MAX_RECORD_BYTES or len(data) > MAX_RECORD_BYTES:
            size = max(size, len(data))
            raise RecordError(
                f"{path}: {size:,} bytes is too large for a session record"
                f" (the limit is {MAX_RECORD_BYTES:,} bytes, 1 MiB)"
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_record(path, text)
