"""The finished message bytes: headers (RFC 5322/2047), MIME structure, identity, injection.

Golden files in ``tests/golden/`` pin the serialized bytes; regenerate them only after
checking a change by eye, with ``NEWSLETTER_UPDATE_GOLDEN=1 pytest tests/test_message.py``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import random
import re
import socket
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail import MessageFactory, OutgoingMessage
from newsletter.mail.headers import (
    MAX_ENCODED_WORD,
    MAX_LINE,
    addr_spec,
    address_header,
    encoded_words,
    unstructured,
)
from newsletter.mail.message import (
    base64_lines,
    canonical_body,
    delivery_id_from_message_id,
    format_message_id,
)
from newsletter.rendering import InvitationTemplate
from tests.test_rendering import (
    HOSTILE_NAMES,
    ORGANIZER,
    TIMEZONE,
    archive_before,
    recipient,
    record,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("NEWSLETTER_UPDATE_GOLDEN") == "1"

LONG_SUBJECT = (
    "第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性——Analyzing Federated Learning"
    " through an Adversarial Lens 论文分享与讨论"
)
MIXED_SUBJECT = "Salon #28 · 联邦学习专题四: MAML & FATE (Dec 5, 12:30)"
FIXED_DATE = datetime(2019, 12, 3, 9, 30, tzinfo=timezone(timedelta(hours=8)))
UNSUBSCRIBE_URL = (
    "https://salon.example.org/unsubscribe/"
    "eyJ1Ijo0MiwiYyI6N30.Zg1Hbw.6zT0Jp2J5m3Gk0bZfJxX6qkqz1w8S8m0bqYl1b7Qw9E"
)
UNSUBSCRIBE_MAILTO = (
    "mailto:unsubscribe@example.org?subject=unsubscribe%20"
    "eyJ1Ijo0MiwiYyI6N30.Zg1Hbw.6zT0Jp2J5m3Gk0bZfJxX6qkqz1w8S8m0bqYl1b7Qw9E"
)
HTML = (
    '<!DOCTYPE html>\n<html lang="zh-CN"><body><table align="center" width="600">\n'
    "<tr><td>张三，您好！诚邀您参加第 61 期机器学习学术沙龙。</td></tr>\n"
    '<tr><td><a href="https://salon.example.org/rsvp/t?answer=yes">我会参加</a></td></tr>\n'
    "</table></body></html>\n"
)
TEXT = "张三，您好！\n\n诚邀您参加第 61 期机器学习学术沙龙。\n我会参加: https://salon.example.org/rsvp/t?answer=yes\n"


# The installation id of the golden files: what migration 0004 would make, but fixed.
INSTALLATION = "5a1f0e2d3c4b6a79"


def check_golden(name: str, data: bytes) -> None:
    """Compare ``data`` with ``tests/golden/{name}`` byte for byte."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.read_bytes() == data, f"{name} differs from the golden file"


def make_factory(**overrides: str) -> MessageFactory:
    options = {
        "from_name": "Mo 人工智能俱乐部",
        "from_address": "salon@example.org",
        "subject": LONG_SUBJECT,
        "mail_domain": "example.org",
        "installation": INSTALLATION,
        "bounce_address": "bounces@example.org",
        **overrides,
    }
    return MessageFactory(**options)


def build(
    factory: MessageFactory | None = None,
    *,
    name: str = "张三",
    address: str = "zhang.san@example.com",
    html: str | bytes = HTML,
    text: str | bytes = TEXT,
    delivery_id: int = 42,
    date: datetime | None = FIXED_DATE,
    message_id: str | None = None,
) -> OutgoingMessage:
    return (factory or make_factory()).build(
        delivery_id=delivery_id,
        recipient_name=name,
        recipient_address=address,
        html=html,
        text=text,
        unsubscribe_url=UNSUBSCRIBE_URL,
        unsubscribe_mailto=UNSUBSCRIBE_MAILTO,
        date=date,
        message_id=message_id,
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def assert_well_formed(data: bytes) -> None:
    """CRLF only; header lines ≤ 78 unless one unbreakable token (a URL) makes it longer."""
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    assert data.isascii()
    for line in header_block(data).split(b"\r\n"):
        if len(line) > MAX_LINE:
            # Only a single token, e.g. "<https://…>," may overflow: it cannot be folded.
            assert len(line.strip().split(b" ")) <= 2, line
            assert len(line) <= 998, line


# --- golden files -------------------------------------------------------------------------


def test_long_chinese_subject_matches_golden_and_decodes() -> None:
    header = unstructured("Subject", LONG_SUBJECT) + "\r\n"
    check_golden("subject_long_chinese.txt", header.encode("ascii"))
    lines = header.split("\r\n")[:-1]
    assert len(lines) > 1, "a subject this long must be folded"
    assert all(len(line) <= MAX_LINE for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    parsed = parse(header.encode() + b"\r\n")
    assert parsed["Subject"] == LONG_SUBJECT


def test_chinese_display_name_from_matches_golden() -> None:
    header = address_header("From", "Mo 人工智能俱乐部", "salon@example.org") + "\r\n"
    check_golden("from_chinese_display_name.txt", header.encode("ascii"))
    address = parse(header.encode() + b"\r\n")["From"].addresses[0]
    assert (address.display_name, address.addr_spec) == ("Mo 人工智能俱乐部", "salon@example.org")


def test_mixed_ascii_cjk_subject_matches_golden() -> None:
    header = unstructured("Subject", MIXED_SUBJECT) + "\r\n"
    check_golden("subject_mixed.txt", header.encode("ascii"))
    assert parse(header.encode() + b"\r\n")["Subject"] == MIXED_SUBJECT


def test_whole_message_matches_golden() -> None:
    message = build()
    check_golden("invitation.eml", message.data)
    assert_well_formed(message.data)


# --- round trip through the standard library's parser --------------------------------------


def test_round_trip_headers_and_parts() -> None:
    message = build()
    parsed = parse(message.data)
    assert parsed.defects == []
    assert parsed["Subject"] == LONG_SUBJECT
    sender = parsed["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [
        ("Mo 人工智能俱乐部", "salon@example.org")
    ]
    recipients = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in recipients] == [
        ("张三", "zhang.san@example.com")
    ]
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part, body in zip(parts, (TEXT, HTML), strict=True):
        assert isinstance(part, EmailMessage)
        assert part.defects == []
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_content_charset() == "utf-8"
        # Text bodies travel in canonical form (CRLF line ends, RFC 2045 6.8).
        assert part.get_content() == body.replace("\n", "\r\n")
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Date"].datetime == FIXED_DATE
    assert_well_formed(message.data)


def test_body_lines_are_base64_of_76_characters() -> None:
    html = "<p>联邦学习 Federated Learning</p>\n" * 2000
    message = build(html=html, text="纯文本\n" * 500)
    body = message.data.split(b"\r\n\r\n", 1)[1]
    encoded = [
        line for line in body.split(b"\r\n") if line and not line.startswith((b"--", b"Content-"))
    ]
    assert len(encoded) > 500
    assert all(len(line) <= 76 for line in encoded)
    assert sum(len(line) == 76 for line in encoded) >= len(encoded) - 2  # only last lines shorter
    html_part = list(parse(message.data).iter_parts())[1]
    assert html_part.get_content() == html.replace("\n", "\r\n")


@pytest.mark.parametrize(
    "size", [0, 1, 2, 3, 56, 57, 58, 114, 57 * 255, 57 * 256, 57 * 256 + 1, 99_999]
)
def test_base64_lines_equal_the_standard_encoding(size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = base64.encodebytes(data).split(b"\n")[:-1]
    assert base64_lines(data) == expected


def test_canonical_body_makes_crlf_line_ends() -> None:
    assert canonical_body("a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"
    assert canonical_body("一\n二") == "一\r\n二".encode()
    assert canonical_body(b"x\r\n") == b"x\r\n"


def test_bytes_bodies_give_the_same_message_as_str() -> None:
    assert build(html=HTML.encode(), text=TEXT.encode()).data == build().data


def test_the_campaign_path_with_crlf_chunks_builds_the_same_bytes() -> None:
    # What a campaign sends: the template's chunks converted to CRLF once, the message built
    # without a second pass; byte for byte what converting each rendered part gives, also for
    # names that hold line breaks (those take the slow path).
    template = InvitationTemplate.build(
        record(61), archive_before(61), organizer=ORGANIZER, timezone=TIMEZONE
    )
    factory = make_factory()
    for name in [*HOSTILE_NAMES, "a\r", "\nb", "", "张三"]:
        person = recipient(name)
        plain, crlf = template.personalise(person), template.personalise_utf8(person, crlf=True)
        assert crlf.html == canonical_body(plain.html)
        assert crlf.text == canonical_body(plain.text)
        expected = build(factory, html=plain.html, text=plain.text)
        fast = factory.build(
            delivery_id=42,
            recipient_name="张三",
            recipient_address="zhang.san@example.com",
            html=crlf.html,
            text=crlf.text,
            unsubscribe_url=UNSUBSCRIBE_URL,
            unsubscribe_mailto=UNSUBSCRIBE_MAILTO,
            date=FIXED_DATE,
            canonical=True,
        )
        assert fast.data == expected.data


def test_ascii_values_stay_plain_and_fold_at_spaces() -> None:
    subject = "Invitation to the 61st machine learning salon: " * 4
    header = unstructured("Subject", subject)
    assert "=?" not in header
    assert all(len(line) <= MAX_LINE for line in header.split("\r\n"))
    assert parse(header.encode() + b"\r\n\r\n")["Subject"] == subject.strip()
    assert address_header("To", "Ada Lovelace", "ada@example.org") == (
        "To: Ada Lovelace <ada@example.org>"
    )


def test_ascii_text_that_looks_encoded_is_encoded() -> None:
    # Left plain, "=?utf-8?b?...?=" would be decoded by readers: a way to spoof a subject.
    header = unstructured("Subject", "=?utf-8?b?5L2g5aW9?= hello")
    assert parse(header.encode() + b"\r\n\r\n")["Subject"] == "=?utf-8?b?5L2g5aW9?= hello"


def test_display_names_with_specials_are_quoted() -> None:
    assert address_header("To", "Doe, John", "j@example.org") == 'To: "Doe, John" <j@example.org>'
    header = address_header("To", 'Bob "the builder" \\o/', "b@example.org")
    assert header == 'To: "Bob \\"the builder\\" \\\\o/" <b@example.org>'
    parsed = parse(header.encode() + b"\r\n\r\n")["To"].addresses[0]
    assert parsed.display_name == 'Bob "the builder" \\o/'


@pytest.mark.parametrize(
    "text",
    [
        "联邦学习" * 40,
        "𝔉𝔢𝔡𝔢𝔯𝔞𝔱𝔢𝔡 🤖🧠 " * 12,  # 4-byte characters
        "é" * 100,
        "a联b邦c学d习" * 20,
    ],
)
def test_encoded_words_are_short_and_never_split_a_character(text: str) -> None:
    for first_room in (69, 72, 40, 16, 5):
        words = encoded_words(text, first_room)
        decoded = ""
        for index, word in enumerate(words):
            assert len(word) <= MAX_ENCODED_WORD
            if index == 0 and first_room >= 20:  # room for a 4-byte character
                assert len(word) <= first_room
            found = re.fullmatch(r"=\?utf-8\?b\?([A-Za-z0-9+/=]+)\?=", word)
            assert found, word
            decoded += base64.b64decode(found.group(1)).decode("utf-8")  # whole characters
        assert decoded == text


def test_random_names_and_subjects_round_trip() -> None:
    rng = random.Random(61)
    alphabet = "张三李四联邦学习 abc,.\"'<>@:;()[]\\é𝔉🤖-_=?"
    for _ in range(300):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90))).strip()
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 150))).strip()
        message = build(make_factory(subject=subject), name=name)
        assert_well_formed(message.data)
        parsed = parse(message.data)
        assert parsed["Subject"] == subject
        to = parsed["To"].addresses
        assert len(to) == 1
        assert to[0].addr_spec == "zhang.san@example.com"
        assert rfc2047_display_name(message.data) == re.sub(" +", " ", name)


def rfc2047_display_name(data: bytes) -> str:
    """The To display name decoded by RFC 2047 6.2's rule.

    Not ``policy.default``'s ``display_name``: CPython's structured-header parser keeps the
    space between two adjacent encoded-words of a display name ("张三张 三张三" for a name
    long enough to need two words), against RFC 2047 6.2, which its own ``decode_header``
    and mail clients follow.
    """
    raw = email.message_from_bytes(data, policy=email.policy.compat32)["To"]
    name, _ = parseaddr(str(raw).replace("\r\n", ""))
    return str(make_header(decode_header(name)))


def test_short_cjk_names_are_one_encoded_word() -> None:
    # Fifteen CJK characters fit one word, so even CPython's parser reads such names right.
    name = "欧阳" * 7 + "娜"
    header = address_header("To", name, "o@example.org")
    assert header.count("=?utf-8?b?") == 1
    assert parse(header.encode() + b"\r\n\r\n")["To"].addresses[0].display_name == name


# --- header injection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Eve\r\nBcc: victim@example.com",
        "Eve\nBcc: victim@example.com",
        "Eve\rBcc: victim@example.com",
        "Eve\u2028Bcc: victim@example.com",
        "Eve\x85Bcc: victim@example.com",
        "伊娃\r\nBcc: victim@example.com",
        'Eve" <evil@example.com>, "x',
        "Eve <evil@example.com>",
        "Eve\r\n\r\n<html>body</html>",
    ],
)
def test_recipient_names_cannot_inject_headers_or_addresses(name: str) -> None:
    message = build(name=name)
    assert_well_formed(message.data)
    parsed = parse(message.data)
    assert parsed["Bcc"] is None
    assert parsed.defects == []
    to = parsed["To"].addresses
    assert [a.addr_spec for a in to] == ["zhang.san@example.com"]
    headers = [k for k, _ in parsed.items()]
    assert headers == [k for k, _ in parse(build(name="Eve").data).items()]
    assert message.recipient == "zhang.san@example.com"


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.com\r\nBcc: other@example.com",
        "victim@example.com>, <other@example.com",
        "victim@example.com other@example.com",
        '"quoted local"@example.com',
        "no-at-sign.example.com",
        "@example.com",
        "张\u2028三@example.com",
        "victim@exa mple.com",
    ],
)
def test_unusable_recipient_addresses_fail_permanently_without_naming_them(address: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        build(address=address)
    assert caught.value.permanent is True
    assert "example.com" not in str(caught.value)  # error texts reach logs: no address there


def test_a_non_ascii_local_part_builds_an_smtputf8_message() -> None:
    message = build(address="欧阳.娜娜@example.net")
    assert message.smtputf8 and message.recipient == "欧阳.娜娜@example.net"
    head = message.data.partition(b"\r\n\r\n")[0].decode("utf-8")  # RFC 6532: UTF-8 headers
    assert "\r\nTo: =?utf-8?b?" in head and "<欧阳.娜娜@example.net>\r\n" in head
    assert build().smtputf8 is False


def test_international_domains_are_idna_encoded() -> None:
    message = build(address="li@例子.测试")
    assert message.recipient == "li@xn--fsqu00a.xn--0zwm56d"
    assert parse(message.data)["To"].addresses[0].domain == "xn--fsqu00a.xn--0zwm56d"
    assert addr_spec(" Ada@Example.org ") == "Ada@Example.org"


# --- identity, envelope, list headers ------------------------------------------------------


def test_message_id_is_stable_per_delivery_and_uses_the_mail_domain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_host_lookup() -> str:
        raise AssertionError("the host name must never be looked up")

    monkeypatch.setattr(socket, "getfqdn", no_host_lookup)
    monkeypatch.setattr(socket, "gethostname", no_host_lookup)
    first = build(delivery_id=7)
    again = build(make_factory(subject="another campaign, same delivery"), delivery_id=7)
    other = build(delivery_id=8)
    assert first.message_id == again.message_id == format_message_id(7, "example.org", INSTALLATION)
    assert first.message_id != other.message_id
    assert first.message_id == f"<d7.{INSTALLATION}@example.org>"
    assert parse(first.data)["Message-ID"] == first.message_id
    assert format_message_id(7, "Example.ORG", INSTALLATION) == first.message_id


def test_another_installation_never_makes_the_same_message_id() -> None:
    ours = build(delivery_id=1)
    theirs = build(make_factory(installation="9f8e7d6c5b4a3210"), delivery_id=1)
    assert ours.message_id != theirs.message_id
    assert delivery_id_from_message_id(ours.message_id, "example.org", INSTALLATION) == 1
    assert delivery_id_from_message_id(theirs.message_id, "example.org", INSTALLATION) is None


def test_a_preview_message_id_is_fresh_and_never_a_deliverys() -> None:
    factory = make_factory()
    first, second = factory.preview_message_id(), factory.preview_message_id()
    assert first != second
    assert re.fullmatch(rf"<p[0-9a-f]{{16}}\.{INSTALLATION}@example\.org>", first)
    assert delivery_id_from_message_id(first, "example.org", INSTALLATION) is None
    message = build(factory, delivery_id=0, message_id=first)
    assert message.message_id == first and parse(message.data)["Message-ID"] == first


def test_a_resent_delivery_is_the_same_bytes() -> None:
    assert build(delivery_id=9).data == build(delivery_id=9).data


def test_delivery_id_can_be_read_back_from_the_message_id() -> None:
    message_id = format_message_id(123456, "example.org", INSTALLATION)
    assert delivery_id_from_message_id(message_id, "example.org") == 123456
    assert delivery_id_from_message_id(message_id, "example.org", INSTALLATION) == 123456
    assert delivery_id_from_message_id(message_id, "example.net") is None
    # Mail sent before installation ids (a digest of the domain) still finds its delivery.
    assert delivery_id_from_message_id("<d12.bfabc374@example.org>", "example.org") == 12
    assert (
        delivery_id_from_message_id("<d12.bfabc374@example.org>", "example.org", INSTALLATION) == 12
    )
    assert delivery_id_from_message_id("<d12@example.org>", "example.org") is None
    assert delivery_id_from_message_id("<CAF+x@mail.gmail.com>", "example.org") is None


def test_envelope_sender_is_verp_when_a_bounce_address_is_configured() -> None:
    assert build(delivery_id=123).envelope_from == "bounces+123@example.org"
    plain = build(make_factory(bounce_address=""), delivery_id=123)
    assert plain.envelope_from == "salon@example.org"
    assert b"Return-Path" not in plain.data  # the receiving MTA writes it, never us


def test_list_headers() -> None:
    parsed = parse(build().data)
    assert parsed["List-Id"] == "Mo 人工智能俱乐部 <salon.example.org>"
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>, <{UNSUBSCRIBE_MAILTO}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Precedence"] == "bulk"
    only_https = make_factory().build(
        delivery_id=1,
        recipient_name="",
        recipient_address="a@example.com",
        html="",
        text="",
        unsubscribe_url=UNSUBSCRIBE_URL,
    )
    parsed = parse(only_https.data)
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert parsed["To"] == "a@example.com"


def test_unsubscribe_urls_cannot_break_the_header() -> None:
    with pytest.raises(ValueError):
        make_factory().build(
            delivery_id=1,
            recipient_name="",
            recipient_address="a@example.com",
            html="",
            text="",
            unsubscribe_url="https://x.example/u>\r\nBcc: a@example.com",
        )


def test_default_date_is_now() -> None:
    message = build(date=None)
    sent = parsedate_to_datetime(parse(message.data)["Date"])
    assert abs(sent - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match="timezone"):
        build(date=datetime(2019, 12, 3, 9, 30))


def test_factory_from_settings(settings: Settings) -> None:
    factory = MessageFactory.for_settings(settings, subject="第 28 期", installation=INSTALLATION)
    message = build(factory)
    parsed = parse(message.data)
    assert parsed["From"].addresses[0].display_name == "Mo 人工智能俱乐部"
    assert message.envelope_from == "salon@example.org"
    assert message.message_id.endswith("@example.org>")
    assert parsed["Subject"] == "第 28 期"


def test_from_address_may_carry_its_display_name() -> None:
    factory = MessageFactory(
        from_address="Mo 人工智能俱乐部 <salon@example.org>",
        subject="第 28 期",
        mail_domain="example.org",
        installation=INSTALLATION,
    )
    sender = parse(build(factory).data)["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Mo 人工智能俱乐部", "salon@example.org")


def test_bad_configuration_fails_when_the_factory_is_made() -> None:
    with pytest.raises(ConfigurationError, match="From address"):
        make_factory(from_address="salon at example.org")
    with pytest.raises(ConfigurationError, match="mail domain"):
        make_factory(mail_domain="not a domain")
    with pytest.raises(ConfigurationError, match="bounce address"):
        make_factory(bounce_address="bounces@")


def test_repr_leaks_neither_address_nor_body() -> None:
    text = repr(build())
    assert "zhang" not in text
    assert "42" in text


def test_delivery_id_must_be_an_integer() -> None:
    with pytest.raises(TypeError):
        build(delivery_id="1\r\nBcc: victim@example.com")  # type: ignore[arg-type]


def test_built_messages_never_start_a_line_with_a_dot() -> None:
    """SMTP skips dot-stuffing for messages marked dot_safe: the mark must be true."""
    factory = MessageFactory(
        from_address="Mo 人工智能俱乐部 <salon@example.org>",
        subject=".开头的主题 " * 12,
        mail_domain="example.org",
        installation=INSTALLATION,
    )
    message = factory.build(
        delivery_id=5,
        recipient_name=".点开头的名字 " * 8,
        recipient_address="a@example.org",
        html=".\n" * 500 + "<p>.</p>",
        text="\n.".join(["."] * 300),
        unsubscribe_url="https://salon.example.org/unsubscribe/t",
    )
    assert message.dot_safe
    assert not message.data.startswith(b".")
    assert b"\n." not in message.data
