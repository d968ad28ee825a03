"""Schemathesis against /openapi.json: generated requests to every organizer route, none 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.webapp import Live, live

__all__ = ["live"]  # the fixture

ST = str(Path(sys.executable).parent / "st")


def test_api_never_answers_a_server_error(live: Live) -> None:
    result = subprocess.run(
        [
            ST,
            "run",
            f"{live.settings.base_url}/openapi.json",
            "--header",
            "Authorization: Bearer test-admin-token",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            "--seed",
            "20261123",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    checked = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert checked and int(checked.group(2)) == int(checked.group(1)) > 100, result.stdout[-2000:]
