"""The text part of every seed session's invitation, read from the finished message bytes:
Markdown arrives as plain text (links as ``text <url>``, no ``**``, no ``](``)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter.cli.preview_cmd import write_preview
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.migrate import upgrade
from newsletter.sessions.service import import_records
from tests.conftest import EXAMPLES, Configure

NUMBERS = sorted(int(path.stem) for path in (EXAMPLES / "sessions").glob("*.yaml"))


@pytest.fixture
def seeded(configure: Configure) -> Settings:
    settings = configure()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        report = import_records(db, [EXAMPLES / "sessions"], timezone="Asia/Shanghai")
    assert report.errors == []
    return settings


def text_part(settings: Settings, number: int) -> str:
    path, _ = write_preview(settings, number, out=Path(f"{number}.eml"))
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_no_seed_leaves_markdown_in_the_text_part(seeded: Settings) -> None:
    for number in NUMBERS:
        text = text_part(seeded, number)
        assert "](" not in text, number
        assert "**" not in text, number
        assert not re.search(r"^#{1,6} ", text, re.MULTILINE), number


def test_links_read_text_then_url(seeded: Settings) -> None:
    text = text_part(seeded, 61)
    assert "近期 Mo <https://momodel.cn> 也在持续进行机器学习相关的入门课程" in text
    assert "Mo <https://momodel.cn>（网址：https://momodel.cn） 是一个支持 Python" in text
    assert "https://imgbed.momodel.cn/联系人.png" in text  # an image: its URL
    no28 = text_part(seeded, 28)
    # Bold dropped, its words kept; a link whose text is its URL is written once.
    assert "本次分享会为联邦学习专题，通过聚焦最新顶会NeurIPS 2019" in no28
    assert "（网址：https://momodel.cn）的研发与产品设计团队" in no28
