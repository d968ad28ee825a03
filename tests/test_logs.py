"""Logging: JSON lines when asked for, and never an address or a URL's password, whoever
logs them (our code, a library, a traceback)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from newsletter.logs import setup_logging
from tests.conftest import Configure
from tests.servers import free_port
from tests.webapp import newsletter_serve

ADDRESS = "欧阳.娜娜@example.net"
PASSWORD = "s3cr/t#?x"
DSN = f"postgresql://app:{PASSWORD}@db.example.org:5432/salon"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the test runner's logging back after a test that configured its own."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_json_lines_with_addresses_and_passwords_redacted(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(log_format="json")
    setup_logging()
    log = logging.getLogger("newsletter.campaigns.example")
    log.warning("could not mail %s through %s", ADDRESS, DSN, extra={"campaign": 7, "to": ADDRESS})
    try:
        raise ConnectionError(f"connect {DSN} for {ADDRESS} failed")
    except ConnectionError:
        log.exception("database unreachable")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "newsletter.campaigns.example"
    assert first["message"] == (
        # The password holds "/", "#" and "?": the whole user-info is hidden.
        "could not mail <address> through postgresql://***@db.example.org:5432/salon"
    )
    assert first["campaign"] == 7 and first["to"] == "<address>"
    assert "T" in first["time"]
    assert second["message"] == "database unreachable"
    assert "ConnectionError" in second["exception"]
    for line in lines:
        assert PASSWORD not in line and "娜娜" not in line and "s3cr" not in line


@pytest.mark.usefixtures("restored_logging")
def test_text_format_is_redacted_too(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    configure()
    setup_logging()
    logging.getLogger("celery.worker").warning("broker redis://:%s@redis:6379/0", PASSWORD)
    assert capsys.readouterr().err == "WARNING celery.worker: broker redis://***@redis:6379/0\n"


def test_serve_logs_json_lines(configure: Configure, tmp_path: Path) -> None:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", log_format="json")
    with newsletter_serve(settings, tmp_path) as log:
        assert httpx.get(f"{settings.base_url}/healthz").status_code == 200
        written = log.read_text(encoding="utf-8")
    entries = [json.loads(line) for line in written.splitlines()]
    messages = [entry["message"] for entry in entries]
    assert f"dashboard: {settings.base_url}/admin" in messages
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)  # uvicorn's too
