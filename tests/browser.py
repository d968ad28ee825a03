"""Headless Chromium for page tests: Debian's /usr/bin/chromium driven by Playwright.

No browser is downloaded: Playwright launches the system Chromium. As root Chromium needs
--no-sandbox; the background-networking flags stop it from calling out of this machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Chromium for the whole run (skipped locally, required under CI=true)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is required in CI (apt-get install chromium fonts-noto-cjk)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def screenshot_path(name: str) -> Path:
    """Where a screenshot for review goes (test-artifacts/screenshots/, not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"
