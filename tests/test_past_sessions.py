"""A campaign for a session that has ended: refused unless ``--past``; then its mail carries
no RSVP buttons, links or deadline, and keeps the unsubscribe link. Over the CLI, the outbox
files it writes, and the HTTP API.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

from newsletter.db import session_scope
from newsletter.sessions.service import import_records
from tests.conftest import EXAMPLES
from tests.test_cli_database import one_error_line, run
from tests.webapp import Live, live

__all__ = ["live"]  # the fixture

SAMPLE = EXAMPLES / "sessions" / "061.yaml"  # held on 2020-10-18
SEATS = "registration:\n  capacity: 30\n  deadline: 2020-10-17T12:00:00+08:00\n"


def setup(cwd: Path, year: str = "2020") -> None:
    """Session no. 61 held in ``year``, with seats and a deadline, and one subscriber."""
    record = cwd / "061.yaml"
    text = SAMPLE.read_text(encoding="utf-8").replace("\nintro:", "\n" + SEATS + "intro:")
    record.write_text(re.sub(r"\b2020-", f"{year}-", text), encoding="utf-8")
    for args in (
        ("sessions", "import", str(record)),
        ("subscribers", "add", "reader@example.org", "--name", "读者"),
    ):
        result = run(cwd, *args)
        assert result.returncode == 0, result.stderr


def sent_parts(cwd: Path) -> tuple[str, str]:
    (path,) = (cwd / "var" / "outbox").glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def test_create_for_an_ended_session_is_refused_without_past(tmp_path: Path) -> None:
    setup(tmp_path)
    line = one_error_line(run(tmp_path, "campaign", "create", "61"))
    assert "session 61 is over (it was held 10月18日（周日）19:30–20:30)" in line
    assert "newsletter campaign create 61 --past" in line
    listed = run(tmp_path, "campaign", "list")
    assert listed.returncode == 0 and "邀请函" not in listed.stdout  # nothing was created


def test_with_past_the_mail_has_no_rsvp_buttons_links_or_deadline(tmp_path: Path) -> None:
    setup(tmp_path)
    created = run(tmp_path, "campaign", "create", "61", "--past")
    assert created.returncode == 0, created.stderr
    sent = run(tmp_path, "campaign", "send", created.stdout.strip())
    assert sent.returncode == 0, sent.stderr
    text, html = sent_parts(tmp_path)
    for part in (text, html):
        assert "/rsvp/" not in part and "answer=" not in part
        assert "报名截止" not in part and "你会来参加吗" not in part
        assert "/sessions/61.ics" not in part  # the event is over: no calendar to add to
        assert "本期活动已于 10月18日（周日）19:30–20:30 举行，报名已经结束。" in part
        assert "https://" in part and "/unsubscribe/" in part
    assert not re.search(r"(是|可能|否)：https?://", text)


def test_an_upcoming_session_still_gets_its_rsvp_buttons(tmp_path: Path) -> None:
    setup(tmp_path, year="2099")
    created = run(tmp_path, "campaign", "create", "61")
    assert created.returncode == 0, created.stderr
    assert run(tmp_path, "campaign", "send", created.stdout.strip()).returncode == 0
    text, html = sent_parts(tmp_path)
    assert re.search(r"是：https?://\S+/rsvp/", text) and "answer=yes" in html
    assert "报名截止" in text and "报名已经结束" not in text


def test_preview_of_an_ended_session_says_how_to_mail_it(tmp_path: Path) -> None:
    setup(tmp_path)
    plain = run(tmp_path, "preview", "61", "--out", "p.eml")
    assert plain.returncode == 0, plain.stderr
    assert "session 61 has ended" in plain.stderr and "--past" in plain.stderr
    past = run(tmp_path, "preview", "61", "--past", "--out", "past.eml")
    assert past.returncode == 0, past.stderr
    body = email.message_from_bytes(
        (tmp_path / "past.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(body, EmailMessage)
    text = body.get_body(("plain",))
    assert text is not None and "/rsvp/" not in str(text.get_content())


def test_the_api_refuses_a_campaign_for_an_ended_session(live: Live) -> None:
    with session_scope(live.settings.database_url) as db:
        import_records(db, [SAMPLE], timezone="Asia/Shanghai")  # held in 2020
    refused = live.client.post(
        "/api/campaigns",
        json={"number": 61},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert refused.status_code == 409
    assert "session 61 is over" in refused.json()["detail"]
