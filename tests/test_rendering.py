"""The rendering machinery: filters, Markdown, and "render once, personalise cheaply".

The central property: ``InvitationTemplate.build(...).personalise(r)`` is byte-equal to the
full render ``render_invitation(..., r)`` for any recipient, hostile names included.

The helpers :func:`load_records` and :func:`archive_before` are shared with
``test_invitation_content.py``: they build what the database would give, straight from
``examples/sessions/*.yaml``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

import newsletter.rendering.personalise as personalise_module
from newsletter.rendering import (
    TEMPLATES_DIR,
    InvitationTemplate,
    Recipient,
    RenderedInvitation,
    RenderingError,
    default_subject,
    render_email_template,
    render_invitation,
)
from newsletter.rendering.environment import (
    archive_date,
    cn_date,
    cn_datetime_range,
    cn_deadline,
    hm_range,
    markdown_html,
    markdown_inline,
    markdown_text,
)
from newsletter.rendering.inline import inline_css
from newsletter.rendering.invitation import (
    Slots,
    canonical_url,
    clean_name,
    greeting_for,
    invitation_context,
    slot_values,
)
from newsletter.sessions.archive import ArchiveLink, ArchiveRow, ArchiveTalkGroup
from newsletter.sessions.schema import SessionRecord, TalkKind

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sessions"
SHANGHAI = ZoneInfo("Asia/Shanghai")
ORGANIZER = "Mo 人工智能俱乐部"
TIMEZONE = "Asia/Shanghai"
KIND_ORDER = (TalkKind.paper, TalkKind.lecture, TalkKind.practice)


# --- shared helpers ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_records() -> dict[int, SessionRecord]:
    """Every example record, by number."""
    records: dict[int, SessionRecord] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        record = SessionRecord.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        records[record.number] = record
    return records


def record(number: int, **changes: Any) -> SessionRecord:
    """An example record, optionally with fields replaced (validated again)."""
    original = load_records()[number]
    if not changes:
        return original
    data = original.model_dump(mode="json")
    data.update(changes)
    return SessionRecord.model_validate(data)


def archive_row(past: SessionRecord, default_zone: str = TIMEZONE) -> ArchiveRow:
    """One archive row as the database would build it: talks grouped by kind in the order
    论文分享, 机器学习, 项目实战; the date in the session's own time zone."""
    zone = ZoneInfo(past.timezone or default_zone)
    groups = tuple(
        ArchiveTalkGroup(kind.label, tuple(t.title for t in past.talks if t.kind is kind))
        for kind in KIND_ORDER
        if any(t.kind is kind for t in past.talks)
    )
    links = tuple(ArchiveLink(link.title, str(link.url)) for link in past.links)
    return ArchiveRow(past.number, past.starts_at.astimezone(zone).date(), groups, links)


def archive_before(number: int) -> list[ArchiveRow]:
    """Rows for every example session numbered below ``number``, in order."""
    records = load_records()
    return [archive_row(records[n]) for n in sorted(records) if n < number]


def recipient(name: str = "张三", token: str = "tok") -> Recipient:
    """A recipient with plausible signed links (query strings hold ``&``)."""
    base = "https://salon.example.org"
    return Recipient(
        name=name,
        rsvp_yes_url=f"{base}/rsvp/{token}.yes?s=61&a=yes",
        rsvp_maybe_url=f"{base}/rsvp/{token}.maybe?s=61&a=maybe",
        rsvp_no_url=f"{base}/rsvp/{token}.no?s=61&a=no",
        calendar_url=f"{base}/calendar/{token}.ics",
        unsubscribe_url=f"{base}/unsubscribe/{token}",
        preferences_url=f"{base}/preferences/{token}",
    )


def full_and_compiled(
    session: SessionRecord, archive: Sequence[ArchiveRow], people: Sequence[Recipient]
) -> list[tuple[RenderedInvitation, RenderedInvitation]]:
    """(full render, personalised) pairs for each recipient, the template built once."""
    template = InvitationTemplate.build(session, archive, organizer=ORGANIZER, timezone=TIMEZONE)
    return [
        (
            render_invitation(session, archive, person, organizer=ORGANIZER, timezone=TIMEZONE),
            template.personalise(person),
        )
        for person in people
    ]


# --- dates -------------------------------------------------------------------------------------


def test_chinese_dates_in_the_session_zone() -> None:
    start = datetime.fromisoformat("2019-12-05T12:30:00+08:00")
    end = datetime.fromisoformat("2019-12-05T14:30:00+08:00")
    assert cn_date(start, SHANGHAI) == "12月05日（周四）"
    assert cn_datetime_range(start, end, SHANGHAI) == "12月05日（周四）12:30–14:30"
    assert hm_range(start, end, SHANGHAI) == "12:30–14:30"
    assert cn_deadline(datetime.fromisoformat("2019-12-05T10:00:00+08:00"), SHANGHAI) == (
        "12月05日 10:00"
    )
    # The same instant written in UTC is still shown in the session's zone.
    utc_start = datetime.fromisoformat("2019-12-05T04:30:00+00:00")
    assert cn_datetime_range(utc_start, end, SHANGHAI) == "12月05日（周四）12:30–14:30"


def test_an_evening_past_midnight_names_both_days() -> None:
    start = datetime.fromisoformat("2020-10-18T23:00:00+08:00")
    end = datetime.fromisoformat("2020-10-19T01:00:00+08:00")
    assert cn_datetime_range(start, end, SHANGHAI) == "10月18日（周日）23:00–10月19日（周一）01:00"


def test_archive_dates_are_zero_padded_yy_mm_dd() -> None:
    assert archive_date(date(2019, 3, 16)) == "19.03.16"
    assert archive_date(date(2020, 10, 1)) == "20.10.01"


def test_record_timezone_wins_over_the_configured_one() -> None:
    berlin = record(61, timezone="Europe/Berlin")
    html = render_invitation(berlin, [], recipient(), organizer=ORGANIZER, timezone=TIMEZONE).html
    assert "10月18日（周日）13:30–14:30" in html
    configured = record(61, timezone=None)
    text = render_invitation(
        configured, [], recipient(), organizer=ORGANIZER, timezone="Europe/Berlin"
    ).text
    assert "10月18日（周日）13:30–14:30" in text


# --- Markdown ----------------------------------------------------------------------------------


def test_markdown_escapes_raw_html_and_keeps_links() -> None:
    html = str(markdown_html('<script>alert(1)</script> see [Mo](https://momodel.cn) & "q"'))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert '<a href="https://momodel.cn">Mo</a>' in html
    assert "&amp;" in html


def test_markdown_drops_javascript_links() -> None:
    html = str(markdown_html("[click](javascript:alert(1))"))
    assert "javascript:" not in html.replace("[click](javascript:alert(1))", "")
    assert "<a " not in html


def test_markdown_images_get_alt_and_an_outlook_width() -> None:
    wide = str(markdown_html("![logo](https://example.org/a.jpeg#align=left&width=1114)"))
    assert 'alt="logo"' in wide
    assert 'width="552"' in wide
    plain = str(markdown_html("![](https://example.org/a.png)"))
    assert "width=" not in plain


def test_markdown_inline_has_no_paragraph() -> None:
    assert str(markdown_inline("**交流**与分享")) == "<strong>交流</strong>与分享"


def test_markdown_for_text_is_plain_text_from_a_parse() -> None:
    source = (
        "## 关于 **Mo**\n\n近期 [Mo](https://momodel.cn) 活动，*欢迎* 参加！见 <https://x.org/a>\n"
        "或写信 <club@example.org>。\n\n- 第一点 `code`\n- 第二点\n  1. 子项\n  2. 子项二\n\n"
        "> 引用 [链接](https://q.org)\n\n![](https://imgbed.momodel.cn/a.png)\n"
        "![二维码](https://x.org/q.png)\n\n---\n\n    缩进代码\n"
    )
    assert markdown_text(source) == (
        "关于 Mo\n\n"
        "近期 Mo <https://momodel.cn> 活动，欢迎 参加！见 https://x.org/a\n"
        "或写信 club@example.org。\n\n"
        "• 第一点 code\n• 第二点\n  1. 子项\n  2. 子项二\n\n"
        "> 引用 链接 <https://q.org>\n\n"
        "https://imgbed.momodel.cn/a.png\n二维码：https://x.org/q.png\n\n"
        "————\n\n"
        "    缩进代码"
    )
    assert markdown_text(None) == markdown_text("") == ""
    assert markdown_text("2 * 3 = 6, a_b_c") == "2 * 3 = 6, a_b_c"  # no emphasis: kept
    assert markdown_text("![](https://x.org/联系人.png)") == "https://x.org/联系人.png"


# --- subject, names, links ---------------------------------------------------------------------


def test_default_subject() -> None:
    assert default_subject(record(61)) == "第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性"
    assert default_subject(record(28)) == "第 28 期机器学习开发者沙龙邀请函：联邦学习专题四"
    assert default_subject(record(59)) == "第 59 期机器学习学术沙龙邀请函：知识蒸馏：FITNETS"
    assert default_subject(record(61, cancelled=True)).startswith("【已取消】第 61 期")


def test_greeting_by_name_or_neutral() -> None:
    assert greeting_for("李雷") == "李雷，你好！"
    assert greeting_for("") == "你好！"
    assert greeting_for(" \t\n ") == "你好！"
    assert greeting_for("Ann\r\nLee\x00") == "Ann Lee，你好！"
    assert clean_name("王\u3000小明") == "王 小明"


def test_recipient_links_are_canonical_and_must_be_absolute() -> None:
    assert canonical_url("https://x.org/a?b=1&c=2") == "https://x.org/a?b=1&c=2"
    assert canonical_url("https://x.org/a b\"c'<d>/名") == (
        "https://x.org/a%20b%22c%27%3Cd%3E/%E5%90%8D"
    )
    with pytest.raises(ValueError, match="absolute"):
        canonical_url("javascript:alert(1)")
    with pytest.raises(ValueError, match="absolute"):
        InvitationTemplate.build(
            record(61), [], organizer=ORGANIZER, timezone=TIMEZONE
        ).personalise(
            Recipient(
                "x",
                "/relative",
                "https://a.b/",
                "https://a.b/",
                "https://a.b/",
                "https://a.b/",
                "https://a.b/",
            )
        )


# --- render once, personalise cheaply ----------------------------------------------------------

HOSTILE_NAMES = [
    "张三",
    "",
    "<script>alert('x')</script>",
    "Tom & Jerry",
    'Ann "the hammer" O\'Neil',
    "&amp; &lt;b&gt; &#34;",
    "Zoë Ørsted 😀",
    "李\u00a0雷",
    "  王 \t 五\r\n ",
    "x</p><p onclick=alert(1)>",
    "SLOT0000X0Z",
]


@pytest.mark.parametrize("number", [61, 28])
def test_personalised_equals_full_render(number: int) -> None:
    session = record(number)
    archive = archive_before(number)
    people = [recipient(name, token=f"t{i}") for i, name in enumerate(HOSTILE_NAMES)]
    for full, compiled in full_and_compiled(session, archive, people):
        assert compiled.html == full.html
        assert compiled.text == full.text
        assert compiled == full


def test_utf8_personalisation_is_the_same_bytes() -> None:
    template = InvitationTemplate.build(
        record(61), archive_before(61), organizer=ORGANIZER, timezone=TIMEZONE
    )
    for name in HOSTILE_NAMES:
        person = recipient(name)
        as_text, as_bytes = template.personalise(person), template.personalise_utf8(person)
        assert as_bytes.subject == as_text.subject
        assert as_bytes.html == as_text.html.encode("utf-8")
        assert as_bytes.text == as_text.text.encode("utf-8")


def test_personalised_equals_full_render_for_random_names_and_odd_links() -> None:
    # Characters that HTML serializers treat specially: markup, quotes, entities' parts,
    # whitespace of all kinds, controls, non-BMP, right-to-left, combining marks.
    alphabet = "<>&\"';=#/ \t\n\r\x00\x01\x7f\x85\u00a0\u2028\u3000\u200d\u05d0\u0301😀张李aZ9"
    chooser = random.Random(20201018)
    names = [
        "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 12))) for _ in range(40)
    ]
    people = [recipient(name, token=f"r{i}") for i, name in enumerate(names)]
    people.append(
        Recipient(
            name="链接",
            rsvp_yes_url='https://salon.example.org/rsvp/a b?x="1"&y=<2>',
            rsvp_maybe_url="https://salon.example.org/rsvp/可能?x='1'",
            rsvp_no_url="https://salon.example.org/rsvp/no#frag`^{}|\\",
            calendar_url="https://salon.example.org/c/%E5%90%8D%zz.ics",
            unsubscribe_url="mailto:unsubscribe@example.org?subject=u&body=x",
            preferences_url='https://salon.example.org/preferences/偏好 x?y="1"',
        )
    )
    for full, compiled in full_and_compiled(record(61), archive_before(61)[-3:], people):
        assert compiled == full


def test_cancelled_and_minimal_records_personalise_alike() -> None:
    for session in (record(61, cancelled=True), record(1), record(31)):
        pairs = full_and_compiled(session, archive_before(session.number), [recipient("<&>")])
        assert pairs[0][0] == pairs[0][1]


def test_subject_is_the_given_one_or_the_default() -> None:
    template = InvitationTemplate.build(
        record(61), [], subject="自定义主题", organizer=ORGANIZER, timezone=TIMEZONE
    )
    assert template.subject == "自定义主题"
    assert template.personalise(recipient()).subject == "自定义主题"
    default = InvitationTemplate.build(record(61), [], organizer=ORGANIZER, timezone=TIMEZONE)
    assert default.subject == default_subject(record(61))


def test_a_mangled_sentinel_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:

    def mangling_inline(html: str) -> str:
        # What premailer does to Jinja syntax in href: percent-encoding part of the value.
        return inline_css(html).replace("SLOT", "SL%4FT", 1)

    monkeypatch.setattr("newsletter.rendering.personalise.inline_css", mangling_inline)
    with pytest.raises(RenderingError, match="placeholder"):
        InvitationTemplate.build(record(61), [], organizer=ORGANIZER, timezone=TIMEZONE)


def test_a_duplicated_or_lost_sentinel_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:

    def dropping_inline(html: str) -> str:
        out = inline_css(html)
        start = out.index("SLOT")
        return out[:start] + out[out.index("Z", start) + 1 :]

    monkeypatch.setattr("newsletter.rendering.personalise.inline_css", dropping_inline)
    with pytest.raises(RenderingError, match="times after CSS inlining"):
        InvitationTemplate.build(record(61), [], organizer=ORGANIZER, timezone=TIMEZONE)


def test_a_text_slot_inside_a_tag_is_refused() -> None:
    sentinels = [f"SLOTabcX{i}Z" for i in range(6)]
    document = f'<p title="{sentinels[0]}">x</p><a href="{sentinels[5]}">u</a>'
    with pytest.raises(RenderingError, match="greeting is text"):
        personalise_module._cut(document, sentinels, "HTML", check_context=True)


def test_personalise_costs_microseconds() -> None:
    template = InvitationTemplate.build(
        record(61), archive_before(61), organizer=ORGANIZER, timezone=TIMEZONE
    )
    people = [recipient(f"订阅者{i}", token=f"k{i}") for i in range(2000)]
    started = time.perf_counter()
    for person in people:
        template.personalise(person)
    per_message = (time.perf_counter() - started) / len(people)
    # Typically ~15 µs; the bound is loose so a busy CI machine does not fail it.
    assert per_message < 500e-6, f"{per_message * 1e6:.0f} µs per message"


# --- other mails -------------------------------------------------------------------------------


def test_render_email_template_inlines_html_and_renders_text() -> None:
    # The invitation itself is a template like any other: the helper renders both parts.
    session = record(61)
    context = invitation_context(session, [], subject="s", organizer=ORGANIZER, timezone=TIMEZONE)
    context["r"] = Slots.of(slot_values(recipient()))
    html, text = render_email_template("invitation", **context)
    assert "<style>" in html and 'class="hero' not in html
    assert "第 61 期机器学习学术沙龙邀请函" in text
    assert (TEMPLATES_DIR / "email" / "invitation.txt").is_file()
