"""NEWSLETTER_ARCHIVE_ROWS: the invitation carries only the latest N archive rows and links to
/archive for the rest; unset (the default, as the seeds do) it carries every row unchanged.
Also the figures the issue asks for: no. 61's HTML size and its height at 375 px."""

from __future__ import annotations

from typing import Any

import pytest

from newsletter.rendering import render_invitation
from tests.browser import PHONE, screenshot_path
from tests.test_rendering import ORGANIZER, TIMEZONE, archive_before, recipient, record

ARCHIVE_URL = "https://salon.example.org/archive"


def render(rows: int | None) -> Any:
    return render_invitation(
        record(61),
        archive_before(61),
        recipient(),
        organizer=ORGANIZER,
        timezone=TIMEZONE,
        archive_rows=rows,
        archive_url=ARCHIVE_URL,
    )


def test_latest_n_rows_and_a_link_to_the_rest() -> None:
    rows = archive_before(61)
    assert len(rows) == 57
    every, ten = render(None), render(10)
    for shown in rows[-10:]:
        assert f"<td>{shown.number}</td>" in ten.html
        assert f"第 {shown.number} 期（" in ten.text
    for hidden in rows[:-10]:
        assert f"<td>{hidden.number}</td>" not in ten.html
        assert f"第 {hidden.number} 期（" not in ten.text
        assert f"<td>{hidden.number}</td>" in every.html
    assert "更早的 47 期见" in ten.html and f'href="{ARCHIVE_URL}"' in ten.html
    assert f"更早的 47 期见沙龙回顾全部：{ARCHIVE_URL}" in ten.text
    assert "更早的" not in every.html and ARCHIVE_URL not in every.text
    assert len(ten.html.encode()) < len(every.html.encode())


def test_more_rows_than_there_are_is_every_row() -> None:
    assert render(100).html == render(None).html


@pytest.mark.parametrize("rows", [None, 10])
def test_invitation_61_height_at_phone_width(
    browser: Any, rows: int | None, tmp_path: Any, capsys: Any
) -> None:
    rendered = render(rows)
    out = tmp_path / "invitation.html"
    out.write_text(rendered.html, encoding="utf-8")
    page = browser.new_page(viewport=PHONE)
    try:
        page.goto(out.as_uri())
        height = page.evaluate("document.documentElement.scrollHeight")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(screenshot_path(f"invitation-61-rows-{rows}")), full_page=True)
    finally:
        page.close()
    with capsys.disabled():
        print(
            f"\nno. 61, ARCHIVE_ROWS={rows}: HTML {len(rendered.html.encode()):,} B,"
            f" {height} px at 375 px"
        )
