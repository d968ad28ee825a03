"""What the invitation says and how it is built, checked on the real sessions no. 28 and 61.

These are the facts a subscriber relies on (who, when, where, what, how to answer) and the
rules that keep the mail readable in Outlook, Gmail and on a phone.
"""

from __future__ import annotations

import re
from functools import lru_cache

import lxml.html
import pytest
from lxml.html import HtmlElement

from newsletter.config import Settings
from newsletter.mail.message import MessageFactory
from newsletter.rendering import RenderedInvitation, render_invitation
from newsletter.rendering.inline import MEDIA_QUERY_CLASSES
from tests.test_rendering import (
    ORGANIZER,
    TIMEZONE,
    archive_before,
    load_records,
    recipient,
    record,
)


@lru_cache(maxsize=8)
def invitation(number: int, name: str = "张三") -> RenderedInvitation:
    """The invitation of an example session for one recipient, rendered in full."""
    return render_invitation(
        record(number),
        archive_before(number),
        recipient(name),
        organizer=ORGANIZER,
        timezone=TIMEZONE,
    )


def parse(html: str) -> HtmlElement:
    return lxml.html.document_fromstring(html)


def visible_text(element: HtmlElement) -> str:
    """Text of an element with whitespace collapsed, as a reader sees it."""
    return " ".join(element.text_content().split())


def facts(doc: HtmlElement) -> dict[str, str]:
    """The key-facts table (活动主题, 活动时间, …) as label → value."""
    (table,) = doc.xpath("//table[tr/td[1][.='活动时间']]")
    return {
        visible_text(row[0]): visible_text(row[1]) for row in table.xpath("tr") if len(row) == 2
    }


def section_after(doc: HtmlElement, heading: str) -> list[HtmlElement]:
    """The elements following the ``<h2>`` with this text, up to the next ``<h2>``."""
    (h2,) = doc.xpath(f"//h2[normalize-space(.)='{heading}']")
    following: list[HtmlElement] = []
    for element in h2.itersiblings():
        if element.tag == "h2":
            break
        following.append(element)
    return following


# --- no. 28: offline, two talks ----------------------------------------------------------------


def test_no_28_heading_sentence_and_facts() -> None:
    doc = parse(invitation(28).html)
    text = visible_text(doc.body)
    assert visible_text(doc.xpath("//h1")[0]) == "第 28 期机器学习开发者沙龙邀请函"
    assert "联邦学习专题四" in text
    assert (
        "Mo 人工智能俱乐部正式向感兴趣的小伙伴们发出诚挚的邀请！12月05日（周四），"
        "我们将在杭州举办第 28 期机器学习开发者沙龙 - 联邦学习专题四。" in text
    )
    assert "12月05日（周四）12:30–14:30" in text
    assert "浙江大学紫金港校区蒙民伟楼348室（杭州）" in text
    assert facts(doc) == {
        "活动主题": "联邦学习背景下的MAML与域适应方法；联邦学习框架—fate",
        "活动时间": "12月05日（周四）12:30–14:30",
        "活动方式": "线下",
        "活动地点": "浙江大学紫金港校区蒙民伟楼348室（杭州）",
        "主办方": "Mo 人工智能俱乐部",
    }
    assert "张三，你好！" in text


def test_no_28_both_talks_with_slots_papers_and_outlines() -> None:
    doc = parse(invitation(28).html)
    talks = [visible_text(e) for e in section_after(doc, "活动内容") if e.tag == "table"]
    assert len(talks) == 2
    first, second = talks
    assert "12:30–13:15" in first and "贾鑫康" in first
    assert "联邦学习背景下的MAML与域适应方法" in first
    # Each paper followed by its own outline, in order.
    assert re.search(
        r"Federated Adversarial Domain Adaptation 背景 联邦域适应 联邦对抗域适应 实验 总结 "
        r"Improving Federated Learning Personalization via MAML "
        r"背景 FL as MAML FEDAVG的定制化 总结",
        first,
    ), first
    assert "13:25–14:10" in second and "赵春玲" in second
    assert "联邦学习框架—fate" in second
    assert "框架基本结构介绍 框架流程及使用 联邦学习框架与区块链 总结" in second
    ordered = doc.xpath("//ol")
    assert [len(ol.xpath("li")) for ol in ordered] == [5, 4, 4]


def test_no_28_intro_audience_highlights_notes_registration_about() -> None:
    rendered = invitation(28)
    doc = parse(rendered.html)
    text = visible_text(doc.body)
    # The intro's Markdown bold arrives as bold.
    assert doc.xpath("//strong[starts-with(., '本次分享会为联邦学习专题')]")
    assert "形式：由浙江大学吴超研究员分布式AI团队为大家解读主题相关论文。" in text
    assert "适合人群：针对有机器学习基础" in text
    highlights = " ".join(visible_text(e) for e in section_after(doc, "活动亮点"))
    for title in ("机器学习的系统性研习", "理论与实战结合", "交流与分享"):
        assert title in highlights
    notes = " ".join(visible_text(e) for e in section_after(doc, "活动须知"))
    assert "本系列活动完全免费" in notes and "请携带笔记本电脑" in notes
    assert doc.xpath("//a[@href='https://www.wjx.top/jq/51354240.aspx']")
    about = " ".join(visible_text(e) for e in section_after(doc, "关于我们"))
    assert "Mo 人工智能俱乐部是由人工智能在线建模平台" in about
    assert "https://www.wjx.top/jq/51354240.aspx" in rendered.text


def test_no_28_archive_has_27_rows() -> None:
    doc = parse(invitation(28).html)
    rows = doc.xpath("//h2[.='沙龙回顾']/following-sibling::table[1]/tr[td]")
    assert [int(row.xpath("td")[0].text_content()) for row in rows] == list(range(1, 28))


# --- no. 61: online, streams, the long archive -------------------------------------------------


def test_no_61_streams_qr_speaker() -> None:
    doc = parse(invitation(61).html)
    text = visible_text(doc.body)
    assert facts(doc) == {
        "活动主题": "联邦学习的鲁棒性",
        "活动时间": "10月18日（周日）19:30–20:30",
        "活动方式": "线上（Mo平台直播、钉钉直播）",
        "主办方": "Mo人工智能俱乐部",
    }
    assert "叶寅（浙江大学-在校研究生-软件学院-硕士生-2020）" in text
    assert "Analyzing Federated Learning through an Adversarial Lens" in text
    assert "联邦学习系统比较容易受到各种错误的影响" in text
    streams = " ".join(visible_text(e) for e in section_after(doc, "观看方式"))
    assert "Mo平台直播：https://momodel.cn/" in streams
    assert "钉钉扫码，加入直播群！" in streams
    assert doc.xpath("//a[@href='https://momodel.cn/']")
    (qr,) = doc.xpath("//img[@src='https://imgbed.momodel.cn/20200516143605.png']")
    assert qr.get("alt") == "钉钉直播二维码"
    assert qr.get("width") == "160"
    # The club profile of the record, with its image.
    assert doc.xpath("//img[contains(@src, 'imgbed.momodel.cn/')]")


def test_no_61_archive_table_one_row_per_earlier_session() -> None:
    doc = parse(invitation(61).html)
    (table,) = doc.xpath("//h2[.='沙龙回顾']/following-sibling::table[1]")
    header = [visible_text(th) for th in table.xpath("tr/th")]
    assert header == ["期数", "时间", "内容", "链接"]
    rows = table.xpath("tr[td]")
    assert len(rows) == 57
    numbers = [int(row.xpath("td")[0].text_content()) for row in rows]
    assert numbers == [*range(1, 29), *range(31, 60)]
    records = load_records()
    for row, number in zip(rows, numbers, strict=True):
        cells = row.xpath("td")
        past = records[number]
        links = [(a.text_content(), a.get("href")) for a in cells[3].xpath(".//a")]
        assert links == [(link.title, str(link.url)) for link in past.links], number
    first = [visible_text(cell) for cell in rows[0].xpath("td")]
    assert first[:3] == ["1", "19.03.16", "【机器学习】初识机器学习；单变量线性回归"]
    fourth = rows[3].xpath("td")[2]
    assert [line.strip() for line in fourth.itertext()] == [
        "【论文分享】Google Vizier；Metalearning；Block Federated Learning",
        "【机器学习】线性代数回顾；多变量线性回归",
    ]
    assert visible_text(rows[-1].xpath("td")[1]) == "20.09.27"


def test_no_61_personal_part_buttons_calendar_unsubscribe() -> None:
    doc = parse(invitation(61).html)
    person = recipient("张三")
    for url, label in (
        (person.rsvp_yes_url, "是"),
        (person.rsvp_maybe_url, "可能"),
        (person.rsvp_no_url, "否"),
    ):
        (link,) = doc.xpath(f"//a[@href='{url}']")
        assert link.text_content() == label
        cell = link.getparent()
        # Bulletproof button: the colour is on the table cell (bgcolor works in Outlook).
        assert cell.tag == "td" and cell.get("bgcolor")
    (calendar,) = doc.xpath(f"//a[@href='{person.calendar_url}']")
    assert "添加到日历" in calendar.text_content()
    (unsubscribe,) = doc.xpath(f"//a[@href='{person.unsubscribe_url}']")
    assert unsubscribe.text_content() == "退订"
    assert "你收到这封邮件，是因为你订阅了Mo人工智能俱乐部的沙龙活动通知。" in visible_text(
        doc.body
    )


def test_neutral_greeting_without_a_name() -> None:
    rendered = invitation(61, "")
    assert rendered.text.startswith("你好！\n")
    assert parse(rendered.html).xpath("//p[.='你好！']")
    assert "，你好！" not in rendered.html


# --- the mail as a mail: email-safe HTML -------------------------------------------------------


@pytest.mark.parametrize("number", [28, 61])
def test_html_is_email_safe(number: int) -> None:
    html = invitation(number).html
    doc = parse(html)
    assert doc.get("lang") == "zh-CN"
    assert doc.xpath("//meta[@charset='utf-8']")
    styles = [element.get("style") for element in doc.xpath("//*[@style]")]
    css = " ".join(styles) + " ".join(s.text or "" for s in doc.xpath("//style"))
    assert not re.search(r"(?<![-\w])(float|position|display:\s*(flex|grid))\s*:", css)
    assert not re.search(r"display\s*:\s*(flex|grid)", css)
    assert not re.search(r"margin[^;]*\bauto\b", css)
    (container,) = doc.xpath("//table[@width='600']")
    assert container.get("align") == "center"
    assert "max-width:600px" in container.get("style").replace(" ", "")
    assert "width:100%" in container.get("style").replace(" ", "")
    # Every font size readable on a phone.
    sizes = [int(size) for size in re.findall(r"font-size:\s*(\d+)px", css)]
    assert sizes and min(sizes) >= 14


@pytest.mark.parametrize("number", [28, 61])
def test_all_css_inlined_except_the_phone_media_query(number: int) -> None:
    doc = parse(invitation(number).html)
    (style,) = doc.xpath("//style")
    css = style.text or ""
    assert css.lstrip().startswith("@media") and css.count("@media") == 1
    used = {name for element in doc.xpath("//*[@class]") for name in element.get("class").split()}
    assert used <= MEDIA_QUERY_CLASSES
    for name in used:
        assert f".{name}" in css
    # Everything else is styled inline.
    assert doc.xpath("//h1")[0].get("style")
    assert all(td.get("style") for td in doc.xpath("//table[@width='600']/tr/td"))


def test_hidden_preheader_comes_first() -> None:
    doc = parse(invitation(61).html)
    first = doc.body[0]
    assert first.tag == "div"
    assert "display:none" in first.get("style").replace(" ", "")
    assert visible_text(first).startswith("10月18日（周日）19:30–20:30")


@pytest.mark.parametrize("number", [28, 61])
def test_lines_fit_8bit_mime(number: int) -> None:
    rendered = invitation(number)
    for part in (rendered.html, rendered.text):
        longest = max(len(line.encode("utf-8")) for line in part.split("\n"))
        assert longest <= 998, longest


def test_no_61_is_well_under_100_kb(capsys: pytest.CaptureFixture[str]) -> None:
    rendered = invitation(61)
    html_bytes = len(rendered.html.encode("utf-8"))
    text_bytes = len(rendered.text.encode("utf-8"))
    with capsys.disabled():
        print(f"\nno. 61: HTML {html_bytes:,} B + text {text_bytes:,} B")
    # Gmail clips past 102 KB; base64 adds a third, headers a little more.
    assert html_bytes + text_bytes < 60_000


def test_no_61_finished_message_is_under_100_kb() -> None:
    rendered = invitation(61)
    settings = Settings(
        secret_key="test-secret",
        base_url="https://salon.example.org",
        from_address="Mo 人工智能俱乐部 <salon@example.org>",
    )
    factory = MessageFactory.for_settings(
        settings,
        subject=rendered.subject,
        list_name="机器学习学术沙龙",
        installation="0123456789abcdef",
    )
    message = factory.build(
        delivery_id=1,
        recipient_name="张三",
        recipient_address="zhangsan@example.org",
        html=rendered.html,
        text=rendered.text,
        unsubscribe_url=recipient().unsubscribe_url,
    )
    assert len(message.data) < 100_000, len(message.data)


# --- escaping ----------------------------------------------------------------------------------


def test_script_in_a_title_or_name_arrives_as_text() -> None:
    evil = '<script>alert("x")</script>'
    session = record(61, title=f"联邦学习 {evil}", theme=f"主题 {evil}")
    person = recipient(f"Eve {evil} & co")
    rendered = render_invitation(session, [], person, organizer=ORGANIZER, timezone=TIMEZONE)
    doc = parse(rendered.html)
    assert doc.xpath("//script") == []
    assert "<script" not in rendered.html
    assert f"联邦学习 {evil}" in visible_text(doc.body)
    assert f"Eve {evil} & co，你好！" in visible_text(doc.body)
    assert f"Eve {evil} & co，你好！" in rendered.text
    assert f"活动主题：联邦学习 {evil}" in rendered.text
    assert rendered.subject == f"第 61 期机器学习学术沙龙邀请函：主题 {evil}"


def test_raw_html_in_markdown_fields_is_escaped() -> None:
    session = record(28, intro="<img src=x onerror=alert(1)> **粗体** [链接](https://a.example/)")
    doc = parse(
        render_invitation(session, [], recipient(), organizer=ORGANIZER, timezone=TIMEZONE).html
    )
    assert not doc.xpath("//img[@onerror]")
    assert "<img src=x onerror=alert(1)>" in visible_text(doc.body)
    assert doc.xpath("//a[@href='https://a.example/']")


# --- the text part -----------------------------------------------------------------------------


def test_text_part_is_its_own_template_not_stripped_html() -> None:
    rendered = invitation(61)
    text = rendered.text
    # No markup at all: the only "<" are those of links written as "text <url>".
    assert re.findall(r"<(?!https?://|mailto:)", text.replace("<script>", "")) == []
    assert (
        "\n第 59 期（20.09.27）\n  【论文分享】知识蒸馏：FITNETS\n  FITNETS：https://b23.tv/BV1154y1k7NC\n"
        in text
    )
    assert text.count("\n第 ") >= 57
    person = recipient("张三")
    for url in (person.rsvp_yes_url, person.rsvp_maybe_url, person.rsvp_no_url):
        assert url in text  # full URLs, & unescaped
    assert f"退订：{person.unsubscribe_url}" in text
    assert "二维码：https://imgbed.momodel.cn/20200516143605.png" in text
    assert "https://imgbed.momodel.cn/联系人.png" in text  # image shown as its URL
    assert "![](" not in text


def test_text_part_of_no_28_carries_the_talks() -> None:
    text = invitation(28).text
    assert (
        "--- 【论文分享】12:30–13:15 ---\n主题：联邦学习背景下的MAML与域适应方法\n分享人：贾鑫康\n"
        in text
    )
    assert "论文：Federated Adversarial Domain Adaptation\n  1. 背景\n  2. 联邦域适应\n" in text
    assert "--- 【论文分享】13:25–14:10 ---" in text
    assert "+ 活动时间：12月05日（周四）12:30–14:30" in text
    assert "+ 活动地点：浙江大学紫金港校区蒙民伟楼348室（杭州）" in text


# --- variants: cancelled, seats, hybrid, default profile ---------------------------------------


def test_cancelled_session_shows_a_banner_and_no_rsvp() -> None:
    person = recipient()
    session = record(61, cancelled=True)
    rendered = render_invitation(session, [], person, organizer=ORGANIZER, timezone=TIMEZONE)
    doc = parse(rendered.html)
    assert "本期活动已取消" in visible_text(doc.body)
    assert rendered.text.startswith("【本期活动已取消】")
    for url in (
        person.rsvp_yes_url,
        person.rsvp_maybe_url,
        person.rsvp_no_url,
        person.calendar_url,
    ):
        assert url not in rendered.html and url not in rendered.text
    assert person.unsubscribe_url in rendered.text
    assert doc.xpath(f"//a[@href='{person.unsubscribe_url}']")
    assert rendered.subject.startswith("【已取消】")


def test_capacity_and_deadline() -> None:
    session = record(
        28,
        registration={
            "capacity": 60,
            "deadline": "2019-12-05T10:00:00+08:00",
            "url": "https://www.wjx.top/jq/51354240.aspx",
        },
    )
    rendered = render_invitation(session, [], recipient(), organizer=ORGANIZER, timezone=TIMEZONE)
    assert "名额 60 人，报名截止 12月05日 10:00" in visible_text(parse(rendered.html).body)
    assert "+ 报名：名额 60 人，报名截止 12月05日 10:00" in rendered.text


def test_hybrid_venue_shows_room_and_streams() -> None:
    session = record(
        28,
        venue={
            "mode": "hybrid",
            "name": "蒙民伟楼348室",
            "address": "杭州",
            "streams": [{"name": "B站直播", "url": "https://live.bilibili.com/1"}],
        },
    )
    rendered = render_invitation(session, [], recipient(), organizer=ORGANIZER, timezone=TIMEZONE)
    text = visible_text(parse(rendered.html).body)
    assert "线下 + 线上（B站直播）" in text
    assert "蒙民伟楼348室（杭州）" in text
    assert "B站直播：https://live.bilibili.com/1" in text


def test_default_club_profile_and_organizer() -> None:
    session = record(31)  # an archive-only record: no about, no organizer, no venue
    rendered = render_invitation(session, [], recipient(), organizer="某俱乐部", timezone=TIMEZONE)
    text = visible_text(parse(rendered.html).body)
    assert "Mo 人工智能俱乐部是由人工智能在线建模平台" in text
    assert "某俱乐部正式向感兴趣的小伙伴们发出诚挚的邀请" in text
    assert "沙龙回顾" not in text  # no earlier sessions given
