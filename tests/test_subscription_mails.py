"""The confirmation and welcome mails as a person sees them: the headers of a one-off mail,
the link (ids only), a name that is HTML escaped, and both HTML parts in Chromium at phone
and desktop width with nothing wider than the screen."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.links import preferences_link
from newsletter.mail.message import OutgoingMessage
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.subscription_mails import build_confirm_mail, build_welcome_mail
from tests.browser import DESKTOP, PHONE, screenshot_path
from tests.conftest import Configure
from tests.test_signup import CONFIRM_LINK
from tests.webapp import seed

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


def built(settings: Settings, tmp_path: Path, kind: str) -> OutgoingMessage:
    seed(settings, tmp_path, people=0)
    with session_scope(settings.database_url) as db:
        person = Subscriber(
            email="reader@example.org",
            name="<script>读者</script>",
            status=SubscriberStatus.pending,
            created_at=utcnow(),
        )
        db.add(person)
        db.flush()
        if kind == "confirm":
            return build_confirm_mail(db, settings, person, mail_id=7)
        return build_welcome_mail(db, settings, person)


def parsed(message: OutgoingMessage) -> EmailMessage:
    mail = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(("html",))
    assert part is not None
    return str(part.get_content())


@pytest.mark.parametrize("kind", ["confirm", "welcome"])
def test_headers_link_and_escaping(
    configure: Configure, tmp_path: Path, sqlite_url: str, kind: str
) -> None:
    settings = configure(database_url=sqlite_url)
    mail = parsed(built(settings, tmp_path, kind))
    assert mail["To"].addresses[0].addr_spec == "reader@example.org"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["List-Unsubscribe"] is None and mail["Precedence"] is None
    html = html_of(mail)
    assert "<script>" not in html and "&lt;script&gt;读者" in html
    body = mail.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    if kind == "confirm":
        links = CONFIRM_LINK.findall(text)
        assert len(links) == 1 and "reader" not in links[0]
        assert f"{settings.pending_days} 天内有效" in text
    else:
        assert "第 95 期" in text and "测试专题 &lt;script&gt;x" in html  # the theme, escaped
        # From now on the person is on the list: the welcome says how to change or leave it.
        with session_scope(settings.database_url) as db:
            person_id = db.scalars(select(Subscriber.id)).one()
        own = preferences_link(settings.base_url, settings.secret_keys, subscriber_id=person_id)
        assert own in text and f'href="{own}"' in html and "reader" not in own


@pytest.mark.parametrize("width", ["phone", "desktop"])
@pytest.mark.parametrize("kind", ["confirm", "welcome"])
def test_the_mail_fits_the_screen_in_chromium(
    configure: Configure, tmp_path: Path, sqlite_url: str, browser: Any, kind: str, width: str
) -> None:
    settings = configure(database_url=sqlite_url)
    page_file = tmp_path / f"{kind}.html"
    page_file.write_text(html_of(parsed(built(settings, tmp_path, kind))), encoding="utf-8")
    page = browser.new_page(viewport=WIDTHS[width])
    try:
        page.goto(page_file.as_uri())
        label = "打开确认页面" if kind == "confirm" else "报名参加"
        link = page.get_by_role("link", name=label)
        assert link.is_visible()
        box = link.bounding_box()
        assert box is not None and box["x"] + box["width"] <= WIDTHS[width]["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]["width"]
        page.screenshot(path=str(screenshot_path(f"mail-{kind}-{width}")), full_page=True)
    finally:
        page.close()
