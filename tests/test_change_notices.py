"""Change notices: a record re-imported after its invitation went out tells the people who
answered (or, with --notify-all, everyone invited) once per record revision, with the updated
event (same UID, SEQUENCE one higher; CANCEL for a cancellation). Through the real CLI, the
embedded worker and a real SMTP server, on SQLite and PostgreSQL (the dashboard's button:
tests/test_change_notices_web.py)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from icalendar import Calendar
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from newsletter.campaigns.models import Campaign, CampaignKind, CampaignStatus
from newsletter.cli import app as cli_app
from newsletter.db import session_scope
from newsletter.rsvp.models import Answer
from newsletter.sessions import repo as sessions_repo
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_reminders import answer, setup, write_record

LATER = {"starts_at": "2099-12-05T06:30:00+00:00", "ends_at": "2099-12-05T08:30:00+00:00"}
OLD_WHEN = "12月05日（周六）12:30–14:30"
NEW_WHEN = "12月05日（周六）14:30–16:30"


def run(*args: str) -> Result:
    """The `newsletter` CLI in this process, on the test's settings."""
    result = CliRunner().invoke(cli_app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@dataclass
class Club:
    """Session no. 96 (one seat) announced to six people p0…p5: p0 yes (the seat), p1 yes
    (waitlisted), p2 maybe, p3 no, p4 and p5 silent."""

    url: str
    folder: Path
    smtp: SmtpServer
    people: list[int]
    # The SEQUENCE of the event the invitation's calendar link served.
    sequence: int

    def notices(self) -> list[tuple[str, EmailMessage]]:
        """(recipient, message) of every change notice the relay received."""
        out = []
        for item in self.smtp.handler.received:
            message = parse(item.data)
            if str(message["Subject"]).startswith(("【变更】", "【取消】")):
                out.append((item.rcpt_tos[0], message))
        return out

    def reimport(self, *flags: str, **changes: Any) -> Result:
        path = write_record(self.folder, 96, registration={"capacity": 1}, **changes)
        return run("sessions", "import", str(path), *flags)

    def change_campaigns(self) -> list[tuple[str | None, str, int]]:
        with session_scope(self.url) as db:
            rows = db.scalars(
                select(Campaign).where(Campaign.kind == CampaignKind.change).order_by(Campaign.id)
            )
            return [(c.occasion, c.status, c.recipient_count) for c in rows]


@pytest.fixture
def club(
    db_url: str, configure: Configure, start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> Club:
    smtp = start_smtp()
    configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{smtp.port}")
    folder = tmp_path / "records"
    people = setup(db_url, folder, write_record(folder, 96, registration={"capacity": 1}), people=6)
    created = run("campaign", "create", "96")
    assert created.exit_code == 0, created.output
    sent = run("campaign", "send", created.stdout.strip())
    assert sent.exit_code == 0, sent.output
    for person, reply in zip(people, ("yes", "yes", "maybe", "no"), strict=False):
        answer(db_url, 96, person, Answer(reply))
    with session_scope(db_url) as db:
        salon = sessions_repo.get_by_number(db, 96)
        assert salon is not None
        sequence = salon.revision
    return Club(db_url, folder, smtp, people, sequence)


def calendar_of(message: EmailMessage) -> tuple[str, Any]:
    """The message's text/calendar part: its METHOD parameter and its parsed VEVENT."""
    (part,) = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
    parsed = Calendar.from_ical(part.get_content())
    (event,) = parsed.walk("VEVENT")
    assert str(parsed["METHOD"]) == part.get_param("method")
    return str(parsed["METHOD"]), event


def texts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def test_a_later_start_tells_each_person_with_an_answer_once(club: Club) -> None:
    before = club.reimport(**LATER)
    assert before.exit_code == 0, before.output
    assert "session 96 changed since people were told (revision 1)" in before.stdout
    assert f"时间：{OLD_WHEN} → {NEW_WHEN}" in before.stdout
    assert "would reach 3 (answered yes, maybe or waitlist)" in before.stdout
    assert "with --notify-all 6 (everyone invited)" in before.stdout
    assert club.notices() == []  # shown, not sent

    sent = club.reimport("--notify", **LATER)
    assert sent.exit_code == 0, sent.output
    assert "change notice campaign" in sent.stdout and "3 recipients" in sent.stdout
    got = club.notices()
    assert sorted(to for to, _ in got) == ["p0@example.org", "p1@example.org", "p2@example.org"]
    for _, message in got:
        assert str(message["Subject"]).startswith("【变更】第 96 期机器学习开发者沙龙")
        method, event = calendar_of(message)
        assert method == "PUBLISH"
        assert str(event["UID"]) == "salon-96@example.org"
        assert int(event["SEQUENCE"]) == club.sequence + 1
        text, html = texts(message)
        assert "有哪些变动" in html and OLD_WHEN in html and NEW_WHEN in html
        assert f"原为：{OLD_WHEN}" in text and f"现为：{NEW_WHEN}" in text

    again = club.reimport("--notify", **LATER)
    assert again.exit_code == 0, again.output
    assert "already sent" in again.stdout and "nothing sent" in again.stdout
    assert len(club.notices()) == 3
    assert club.change_campaigns() == [("revision-1", CampaignStatus.finished, 3)]


def test_a_cancellation_sends_cancel_and_says_cancelled(club: Club) -> None:
    sent = club.reimport("--notify", cancelled=True)
    assert sent.exit_code == 0, sent.output
    assert "活动状态：如期举行 → 已取消" in sent.stdout
    got = club.notices()
    assert sorted(to for to, _ in got) == ["p0@example.org", "p1@example.org", "p2@example.org"]
    for _, message in got:
        assert str(message["Subject"]).startswith("【取消】") and "本期活动已取消" in str(
            message["Subject"]
        )
        method, event = calendar_of(message)
        assert (method, str(event["STATUS"])) == ("CANCEL", "CANCELLED")
        assert str(event["UID"]) == "salon-96@example.org"
        assert int(event["SEQUENCE"]) == club.sequence + 1
        text, html = texts(message)
        assert "已取消" in text and "已取消" in html and "不能来了" not in html
    # An invitation for it is still refused: the notice is the one exception.
    refused = run("campaign", "create", "96")
    assert refused.exit_code == 1 and "cancelled" in refused.stderr


def test_dry_run_writes_nothing(club: Club) -> None:
    shown = club.reimport("--dry-run", "--notify", **LATER)
    assert shown.exit_code == 0, shown.output
    assert f"时间：{OLD_WHEN} → {NEW_WHEN}" in shown.stdout
    assert "would reach 3" in shown.stdout and "dry run, nothing written" in shown.stdout
    with session_scope(club.url) as db:
        salon = sessions_repo.get_by_number(db, 96)
        assert salon is not None
        assert salon.revision == club.sequence and salon.starts_at.hour == 4
    assert club.change_campaigns() == [] and club.notices() == []
    # Without it the change is kept, pending, until someone sends it.
    assert club.reimport(**LATER).exit_code == 0
    assert club.change_campaigns() == [("revision-1", CampaignStatus.draft, 0)]
    # Its audience is chosen when it is sent: `campaign send` on the draft is refused.
    with session_scope(club.url) as db:
        draft = db.scalars(select(Campaign.id).where(Campaign.kind == CampaignKind.change)).one()
    refused = run("campaign", "send", str(draft))
    assert refused.exit_code == 1 and "pending change notice" in refused.stderr
    assert club.change_campaigns() == [("revision-1", CampaignStatus.draft, 0)]


def test_notify_all_reaches_everyone_invited(club: Club) -> None:
    venue = {
        "mode": "hybrid",
        "name": "蒙民伟楼101室",
        "address": "杭州",
        "streams": [{"name": "Mo平台直播", "url": "https://momodel.cn/live/96"}],
    }
    sent = club.reimport("--notify-all", venue=venue)
    assert sent.exit_code == 0, sent.output
    assert "地点：蒙民伟楼348室（杭州） → 蒙民伟楼101室（杭州）" in sent.stdout
    got = club.notices()
    assert sorted(to for to, _ in got) == [f"p{i}@example.org" for i in range(6)]
    _, html = texts(got[0][1])
    assert "蒙民伟楼348室" in html and "蒙民伟楼101室" in html


def test_two_changes_before_a_notice_make_one_and_nothing_worth_telling_sends_nothing(
    club: Club,
) -> None:
    quiet = club.reimport("--notify", notes="备注里改了一个错字")
    assert quiet.exit_code == 0, quiet.output
    assert "nothing worth a change notice" in quiet.stdout
    assert "nothing to tell since the last mail; nothing sent" in quiet.stdout
    assert club.change_campaigns() == [] and club.notices() == []
    talks = [{"kind": "paper", "speaker": "贾鑫康", "title": "联邦学习背景下的域适应（新版）"}]
    assert club.reimport(**LATER).exit_code == 0
    assert club.reimport(talks=talks, **LATER).exit_code == 0
    sent = club.reimport("--notify", talks=talks, **LATER)
    assert sent.exit_code == 0, sent.output
    got = club.notices()
    assert len(got) == 3
    text, _ = texts(got[0][1])
    # Both changes in one notice; the one talk, retitled, is paired with the old one.
    assert f"原为：{OLD_WHEN}" in text and f"现为：{NEW_WHEN}" in text
    assert "现为：联邦学习背景下的域适应（新版）（贾鑫康）" in text
    assert club.change_campaigns() == [("revision-3", CampaignStatus.finished, 3)]
    # The time moved back: a new revision, its own notice, saying only that.
    back = club.reimport("--notify", talks=talks)
    assert back.exit_code == 0, back.output
    assert f"时间：{NEW_WHEN} → {OLD_WHEN}" in back.stdout and "分享" not in back.stdout
    assert len(club.notices()) == 6


def test_a_session_never_announced_has_nothing_to_tell(
    db_url: str, configure: Configure, tmp_path: Path
) -> None:
    configure(database_url=db_url)
    folder = tmp_path / "records"
    setup(db_url, folder, write_record(folder, 96), people=2)
    result = run("sessions", "import", str(write_record(folder, 96, **LATER)), "--notify")
    assert result.exit_code == 0, result.output
    assert "changed since" not in result.stdout and "notice" not in result.stdout
    with session_scope(db_url) as db:
        count = db.scalar(select(func.count()).select_from(Campaign))
    assert count == 0


def test_help_shows_the_flags() -> None:
    shown = CliRunner().invoke(cli_app, ["sessions", "import", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for flag in ("--dry-run", "--notify", "--notify-all"):
        assert flag in shown.stdout


def test_two_sends_at_once_make_one_notice(club: Club) -> None:
    """Two organizers (the button and the command) at the same moment: one notice."""
    import threading

    from newsletter.campaigns.change_notices import Audience, SendOutcome, send_pending

    assert club.reimport(**LATER).exit_code == 0
    barrier = threading.Barrier(2)
    outcomes: list[SendOutcome] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            barrier.wait()
            with session_scope(club.url) as db:
                outcomes.append(send_pending(db, 96, Audience.answered))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    made = [o for o in outcomes if o.campaign_id is not None]
    told = [o for o in outcomes if o.already_sent is not None]
    assert len(made) == 1 and made[0].recipients == 3
    assert len(told) == 1 and told[0].already_sent == made[0].campaign_id
    assert club.change_campaigns() == [("revision-1", CampaignStatus.sending, 3)]


# --- what the notice says -----------------------------------------------------------------------


@pytest.mark.parametrize("cancelled", [False, True])
def test_compiled_notice_equals_a_full_render_for_hostile_names(cancelled: bool) -> None:
    """The campaign's compiled notice (what each recipient gets) is the full render, byte for
    byte, whatever the name; the change lines are escaped like any record text."""
    from newsletter.rendering import CHANGE, InvitationTemplate, render_invitation
    from newsletter.sessions.changes import Change, ChangeSet
    from tests.test_rendering import HOSTILE_NAMES, ORGANIZER, TIMEZONE, recipient, record

    session = record(61, cancelled=cancelled)
    changes = ChangeSet((Change("地点", "A <b>室</b>", "B & C"), Change("时间", "", "晚上")))
    extra = {"changes": ChangeSet.from_json(changes.to_json())}
    template = InvitationTemplate.build(
        session, [], organizer=ORGANIZER, timezone=TIMEZONE, template=CHANGE, extra=extra
    )
    for i, name in enumerate(HOSTILE_NAMES):
        person = recipient(name, token=f"t{i}")
        full = render_invitation(
            session,
            [],
            person,
            organizer=ORGANIZER,
            timezone=TIMEZONE,
            template=CHANGE,
            extra=extra,
        )
        assert template.personalise(person) == full
    assert "A &lt;b&gt;室&lt;/b&gt;" in full.html and "B &amp; C" in full.html
    assert ("已取消" in full.subject) is cancelled and ("已取消" in full.text) is cancelled
