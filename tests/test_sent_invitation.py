"""What subscribers receive: a campaign sent through a real SMTP server, parsed as a client would.

The mails are read with Python's ``email`` package from the bytes the server received:
headers, parts, escaping, links and the archive table are checked there, not in our objects.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from newsletter.campaigns import service
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.installation import installation_token_for
from newsletter.mail.message import format_message_id
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from newsletter.tokens import Purpose, verify
from subscribers.models import Subscriber
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import EXAMPLES, Configure
from tests.smtp import SmtpServer
from tests.worker import wait_for_worker

HOSTILE = """\
number: 62
series: 机器学习学术沙龙
title: 攻击测试 <script>alert("x")</script> & more
starts_at: 2099-10-25T19:30:00+08:00
ends_at: 2099-10-25T20:30:00+08:00
venue:
  mode: online
  streams:
    - {name: Mo平台直播, url: "https://momodel.cn"}
talks:
  - kind: paper
    speaker: 某人 <img src=x onerror=alert(1)>
    title: 一个 <b>粗体</b> 标题
"""

PEOPLE = [
    ("ada@example.org", "Ada <b>Lovelace</b>"),
    ("li.lei@example.com", "李雷"),
    ("quote@example.net", 'Ann "O\'Neil", Jr.'),
]


class Anchors(HTMLParser):
    """Collects hrefs, table rows as lists of cell texts, and any live <script> element."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[tuple[str, str]] = []
        self.rows: list[list[str]] = []
        self.scripts = 0
        self._last_href: str | None = None
        self._text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag == "a" and values.get("href"):
            self._last_href = values["href"]
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "a" and self._last_href is not None:
            self.hrefs.append(("".join(self._text).strip(), self._last_href))
            self._last_href = None

    def handle_data(self, data: str) -> None:
        if self._last_href is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def archive(self) -> list[list[str]]:
        """Rows of the archive table: 期数, 时间, 内容, 链接 (the header row excluded)."""
        return [r for r in self.rows if len(r) == 4 and r[0].isdigit()]


def send_campaign(configure: Configure, smtp: SmtpServer, number: int) -> tuple[Settings, int]:
    # One connection per batch (not one lane per connection), so that a test can count them.
    settings = configure(
        mail_url=f"smtp://127.0.0.1:{smtp.port}",
        bounce_address="bounces@example.org",
        smtp_connections="1",
    )
    upgrade(settings.database_url)
    # The sample session, moved into the future: an invitation for a session that has
    # ended is refused (and `--past` mails no RSVP links), see tests/test_past_sessions.py.
    sample = (EXAMPLES / "sessions" / f"{number:03d}.yaml").read_text(encoding="utf-8")
    upcoming = Path(f"upcoming-{number}.yaml")  # the configure fixture's temp directory
    upcoming.write_text(re.sub(r"\b20\d\d-", "2099-", sample), encoding="utf-8")
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
        import_records(db, [upcoming], timezone="Asia/Shanghai")
        db.add_all(
            Subscriber(email=address, name=name, created_at=utcnow()) for address, name in PEOPLE
        )
    with session_scope(settings.database_url) as db:
        campaign_id = service.create_campaign(db, number).id
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    return settings, campaign_id


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


@pytest.fixture
def smtp(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


def test_every_subscriber_gets_one_well_formed_invitation(
    configure: Configure, smtp: SmtpServer
) -> None:
    settings, campaign_id = send_campaign(configure, smtp, 61)
    received = smtp.handler.received
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(a for a, _ in PEOPLE)
    assert smtp.handler.connections == 1  # one batch, one SMTP connection
    message_ids = set()
    for item in received:
        assert re.fullmatch(r"bounces\+\d+@example\.org", item.mail_from)  # VERP
        assert len(item.data) < 100_000
        assert b"\r\n" in item.data and b"\n" not in item.data.replace(b"\r\n", b"")
        message = parse(item.data)
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
        assert all(p.get_content_charset() == "utf-8" for p in message.iter_parts())
        assert str(message["Subject"]) == "第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性"
        assert message["From"].addresses[0].display_name == "Mo 人工智能俱乐部"
        assert message["From"].addresses[0].addr_spec == "salon@example.org"
        assert "example.org" in str(message["List-Id"])
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
        assert unsubscribe[0].startswith("https://salon.example.org/unsubscribe/")
        assert unsubscribe[1].startswith("mailto:bounces@example.org")
        delivery_id = int(item.mail_from.split("+")[1].split("@")[0])
        assert message["Message-ID"] == format_message_id(
            delivery_id, "example.org", installation_token_for(settings.database_url)
        )
        message_ids.add(message["Message-ID"])
    assert len(message_ids) == len(PEOPLE)
    with session_scope(settings.database_url) as db:
        assert service.progress(db, campaign_id).sent == len(PEOPLE)


def test_links_are_absolute_signed_and_carry_no_address(
    configure: Configure, smtp: SmtpServer
) -> None:
    settings, _ = send_campaign(configure, smtp, 61)
    for item in smtp.handler.received:
        address = item.rcpt_tos[0]
        message = parse(item.data)
        text, html = parts(message)
        anchors = Anchors()
        anchors.feed(html)
        by_label = {label: href for label, href in anchors.hrefs}
        for label, answer in (("是", "yes"), ("可能", "maybe"), ("否", "no")):
            url = urlsplit(by_label[label])
            assert f"{url.scheme}://{url.netloc}" == "https://salon.example.org"
            assert parse_qs(url.query) == {"answer": [answer]}
            token = url.path.removeprefix("/rsvp/")
            payload = verify(Purpose.RSVP, token, settings.secret_keys)
            assert set(payload) == {"s", "u"}
            assert by_label[label] in text  # the text part carries the same links
        assert by_label["退订"].startswith("https://salon.example.org/unsubscribe/")
        assert by_label["添加到日历（.ics）"] == "https://salon.example.org/sessions/61.ics"
        local = address.split("@")[0]
        for _, href in anchors.hrefs:
            assert address not in href and local not in href.lower()
        assert address not in str(message["List-Unsubscribe"])


def test_archive_table_lists_every_earlier_session(configure: Configure, smtp: SmtpServer) -> None:
    send_campaign(configure, smtp, 61)
    text, html = parts(parse(smtp.handler.received[0].data))
    anchors = Anchors()
    anchors.feed(html)
    rows = anchors.archive()
    assert [int(r[0]) for r in rows] == [*range(1, 29), *range(31, 60)]
    assert any(r[:2] == ["期数", "时间"] for r in anchors.rows)
    four = next(r for r in rows if r[0] == "4")
    assert four[1] == "19.04.13"
    assert "【论文分享】Google Vizier" in four[2] and "【机器学习】" in four[2]
    assert "https://v.douyu.com/show/yVmjvB450NAMqkNb" in dict(
        (href, label) for label, href in anchors.hrefs
    )
    for number in (1, 28, 31, 59):
        assert f"第 {number} 期（" in text, number
    assert "【论文分享】" in text and "【机器学习】" in text and "【项目实战】" in text


def test_markup_in_records_and_names_arrives_as_text(
    configure: Configure, smtp: SmtpServer, tmp_path: Path
) -> None:
    record = tmp_path / "062.yaml"
    record.write_text(HOSTILE, encoding="utf-8")
    settings = configure(mail_url=f"smtp://127.0.0.1:{smtp.port}")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [record], timezone="Asia/Shanghai")
        db.add_all(
            Subscriber(email=address, name=name, created_at=utcnow()) for address, name in PEOPLE
        )
    with session_scope(settings.database_url) as db:
        campaign_id = service.create_campaign(db, 62).id
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    for item in smtp.handler.received:
        message = parse(item.data)
        assert '<script>alert("x")</script>' in str(message["Subject"])  # a subject is text
        text, html = parts(message)
        anchors = Anchors()
        anchors.feed(html)
        assert anchors.scripts == 0
        assert "<img src=x" not in html and "<b>粗体</b>" not in html
        assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        assert '<script>alert("x")</script>' in text and "<b>粗体</b>" in text
        if item.rcpt_tos[0] == "ada@example.org":
            assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in html
            assert "Ada <b>Lovelace</b>" in text
