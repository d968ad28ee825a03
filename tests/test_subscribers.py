"""Subscribers: validation of what people type, and the service rules (add, remove, unsubscribe,
suppress, purge, list) on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.errors import NewsletterError, NotFoundError
from newsletter.rsvp.models import RsvpEvent
from newsletter.sessions.models import SalonSession
from subscribers import service
from subscribers.models import Subscriber, SubscriberStatus, Tag, subscriber_tags
from subscribers.validation import (
    DEFAULT_LOCALE,
    MAX_NAME_LENGTH,
    InvalidEmail,
    InvalidLocale,
    InvalidName,
    InvalidTag,
    _validated,
    normalise_email,
    normalise_locale,
    normalise_name,
    normalise_tag,
    parse_tags,
)

# ---------------------------------------------------------------------------------------------
# Addresses


def test_addresses_fold_case_insensitively() -> None:
    assert normalise_email("Foo@Example.ORG") == normalise_email("foo@example.org")
    assert normalise_email("  Zhang.Wei@Example.ORG \n") == "zhang.wei@example.org"


def test_internationalised_domains_are_stored_in_one_form() -> None:
    assert normalise_email("user@xn--bcher-kva.example") == "user@bücher.example"
    assert normalise_email("User@Bücher.example") == "user@bücher.example"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("foo@", "something after the @-sign"),
        ("@example.org", "something before the @-sign"),
        ("foo", "must have an @-sign"),
        ("a b@example.org", "invalid characters"),
        ("someone@localhost", "should have a period"),
        ("Foo <foo@example.org>", "display name"),
        ("a@example..org", "period"),
    ],
)
def test_invalid_addresses_say_what_is_wrong(raw: str, words: str) -> None:
    with pytest.raises(InvalidEmail) as caught:
        normalise_email(raw)
    message = str(caught.value)
    assert message.startswith(f"{raw!r} is not a valid address: ")
    assert words in message
    assert isinstance(caught.value, NewsletterError)


def test_an_empty_address_is_refused() -> None:
    with pytest.raises(InvalidEmail, match="empty"):
        normalise_email("   ")


EDGE_CASES = [
    "a@example.org",
    "A.B+tag@EXAMPLE.org",
    "postmaster@Example.org",
    "first_last-x@sub.example.co.uk",
    "a@1example.org",
    "a@example.123",
    "a@-example.org",
    "a@example-.org",
    "a@exa_mple.org",
    "a@x.test",
    "a@foo.local",
    "a@example.invalid",
    "a@xn--bcher-kva.example",
    "a@xn--zz.example",
    "a.@example.org",
    ".a@example.org",
    "a..b@example.org",
    "o'brien@example.org",
    "用户@例子.广告",
    f"{'l' * 64}@example.org",
    f"{'l' * 65}@example.org",
    f"{'l' * 200}@{'d' * 40}.example.org",
    f"{'l' * 190}@{'d' * 50}.example.org",
    f"a@{'d' * 63}.org",
    f"a@{'d' * 64}.org",
    f"{'l' * 10}@{'.'.join(['d' * 60] * 4)}.org",
    f"{'l' * 10}@{'.'.join(['d' * 61] * 4)}.org",
    "a@bücher.example",
    "a@b.c",
]


def _outcome(function: object, raw: str) -> str:
    assert callable(function)
    try:
        return str(function(raw))
    except InvalidEmail as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("raw", EDGE_CASES)
def test_the_fast_path_agrees_with_email_validator(raw: str) -> None:
    assert _outcome(normalise_email, raw) == _outcome(_validated, raw)


def test_the_fast_path_agrees_on_random_addresses() -> None:
    rng = random.Random(20191205)
    alphabet = string.ascii_letters + string.digits + "._+-'@"
    for _ in range(3000):
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        domain = "".join(rng.choice(string.ascii_letters + "-.") for _ in range(rng.randint(1, 12)))
        raw = f"{local}@{domain}.{rng.choice(['org', 'com', 'cn', 'x1', 'test', 'a'])}"
        assert _outcome(normalise_email, raw) == _outcome(_validated, raw), raw


# ---------------------------------------------------------------------------------------------
# Names, locales, tags


def test_names_are_trimmed_and_spaces_collapsed() -> None:
    assert normalise_name("  张  伟\t ") == "张 伟"
    assert normalise_name("Wang\u3000Fang") == "Wang Fang"
    assert normalise_name(None) == ""
    assert normalise_name("👩\u200d💻 Ada") == "👩\u200d💻 Ada"  # a zero-width joiner is fine


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("Wang\nFang", "line break"),
        ("Wang\r\nFang", "line break"),
        ("Wang\u2028Fang", "line break"),
        ("Wang\x00Fang", "control character"),
        ("Wang\x1bFang", "control character"),
        ("evil\u202eeman", "control character"),
        ("x" * (MAX_NAME_LENGTH + 1), "at most"),
    ],
)
def test_bad_names_are_refused(raw: str, words: str) -> None:
    with pytest.raises(InvalidName, match=words):
        normalise_name(raw)


def test_locales_are_canonical() -> None:
    assert normalise_locale("zh_cn") == "zh-CN"
    assert normalise_locale("ZH-hans-cn") == "zh-Hans-CN"
    assert normalise_locale("EN") == "en"
    assert normalise_locale("es-419") == "es-419"
    assert normalise_locale("") == DEFAULT_LOCALE == "zh-CN"
    assert normalise_locale(None, default="en") == "en"


@pytest.mark.parametrize(
    "raw", ["english", "zh-CN-", "z", "zh CN", "x" * 20, "zh-CN-toolongvariant"]
)
def test_bad_locales_are_refused(raw: str) -> None:
    with pytest.raises(InvalidLocale, match="is not a locale"):
        normalise_locale(raw)


def test_tags_are_split_lowercased_and_deduplicated() -> None:
    assert parse_tags("ZJU; federated,,cv;zju ;") == ["zju", "federated", "cv"]
    assert parse_tags(["a", "B;c", "b"]) == ["a", "b", "c"]
    assert parse_tags("") == []
    assert parse_tags(None) == []
    assert normalise_tag("  Meta   Learning ") == "meta learning"


@pytest.mark.parametrize(
    ("raw", "words"),
    [("x" * 101, "longer than"), ("a\x07b", "control"), ("   ", "empty"), ("a;b", "separate")],
)
def test_bad_tags_are_refused(raw: str, words: str) -> None:
    with pytest.raises(InvalidTag, match=words):
        normalise_tag(raw)


# ---------------------------------------------------------------------------------------------
# The service


def _status(db: Session, email: str) -> tuple[str, str | None]:
    db.expire_all()
    person = db.scalars(select(Subscriber).where(Subscriber.email == email)).one()
    return person.status, person.status_reason


def test_add_stores_a_normalised_active_subscriber_with_tags(db: Session) -> None:
    added = service.add_subscriber(
        db, " Zhang.Wei@Example.ORG", name=" 张  伟 ", locale="zh_cn", tags=["ZJU;cv", "zju"]
    )
    db.commit()
    person = added.subscriber
    assert not added.resubscribed
    assert (person.email, person.name, person.locale) == ("zhang.wei@example.org", "张 伟", "zh-CN")
    assert person.status == SubscriberStatus.active
    assert sorted(t.name for t in person.tags) == ["cv", "zju"]
    assert person.created_at.tzinfo is not None


def test_add_refuses_an_existing_address_whatever_its_case(db: Session) -> None:
    service.add_subscriber(db, "foo@example.org")
    with pytest.raises(service.SubscriberExists, match="already subscribed"):
        service.add_subscriber(db, "FOO@Example.org")


def test_add_does_not_reactivate_an_unsubscribed_address_unless_asked(db: Session) -> None:
    person = service.add_subscriber(db, "foo@example.org", name="Foo").subscriber
    assert service.unsubscribe(db, person.id, "clicked the unsubscribe link")
    db.commit()
    with pytest.raises(service.SubscriberInactive) as caught:
        service.add_subscriber(db, "foo@example.org")
    assert "is unsubscribed" in str(caught.value)
    assert "clicked the unsubscribe link" in str(caught.value)
    assert caught.value.status == SubscriberStatus.unsubscribed
    db.rollback()
    assert _status(db, "foo@example.org")[0] == SubscriberStatus.unsubscribed

    again = service.add_subscriber(db, "foo@example.org", tags=["x"], resubscribe=True)
    db.commit()
    assert again.resubscribed
    assert again.subscriber.name == "Foo"  # kept: no new name was given
    assert [t.name for t in again.subscriber.tags] == ["x"]
    assert _status(db, "foo@example.org") == (
        SubscriberStatus.active,
        service.RESUBSCRIBED_BY_ORGANIZER,
    )


def test_remove_marks_unsubscribed_and_keeps_the_row(db: Session) -> None:
    service.add_subscriber(db, "foo@example.org")
    removed = service.remove_subscriber(db, "Foo@Example.org")
    db.commit()
    assert removed.changed and removed.previous_status == SubscriberStatus.active
    assert _status(db, "foo@example.org") == ("unsubscribed", "removed by organizer")
    again = service.remove_subscriber(db, "foo@example.org")
    assert not again.changed and again.previous_status == SubscriberStatus.unsubscribed


def test_remove_keeps_a_stronger_status(db: Session) -> None:
    service.suppress(db, email="foo@example.org", status=SubscriberStatus.bounced, reason="5.1.1")
    removed = service.remove_subscriber(db, "foo@example.org")
    assert not removed.changed
    assert _status(db, "foo@example.org") == ("bounced", "5.1.1")


def test_remove_of_an_unknown_address_is_not_found(db: Session) -> None:
    with pytest.raises(NotFoundError, match="not on the subscriber list"):
        service.remove_subscriber(db, "nobody@example.org")


def test_unsubscribe_is_idempotent_and_never_softens_a_bounce(db: Session) -> None:
    person = service.add_subscriber(db, "foo@example.org").subscriber
    assert service.unsubscribe(db, person.id, "one-click")
    assert not service.unsubscribe(db, person.id, "one-click again")
    assert _status(db, "foo@example.org") == ("unsubscribed", "one-click")
    assert service.suppress(
        db, subscriber_id=person.id, status=SubscriberStatus.bounced, reason="550 5.1.1"
    )
    assert not service.unsubscribe(db, person.id, "late click")
    assert _status(db, "foo@example.org") == ("bounced", "550 5.1.1")
    with pytest.raises(NotFoundError):
        service.unsubscribe(db, person.id + 1000, "unknown")


def test_suppressing_an_unknown_address_blocks_it_in_advance(db: Session) -> None:
    assert service.suppress(db, email="Spam.Trap@Example.org", reason="asked never to be mailed")
    db.commit()
    assert _status(db, "spam.trap@example.org") == ("suppressed", "asked never to be mailed")
    with pytest.raises(service.SubscriberInactive, match="suppressed"):
        service.add_subscriber(db, "spam.trap@example.org")
    assert not service.suppress(db, email="spam.trap@example.org", reason="again")


def test_suppress_refuses_to_activate(db: Session) -> None:
    with pytest.raises(ValueError, match="inactive"):
        service.suppress(db, email="a@example.org", status=SubscriberStatus.active, reason="x")


def test_purge_deletes_only_people_without_history(db: Session) -> None:
    fresh_id = service.add_subscriber(db, "fresh@example.org", tags=["zju"]).subscriber.id
    old = service.add_subscriber(db, "old@example.org").subscriber
    now = datetime(2019, 12, 5, 4, 30, tzinfo=UTC)
    salon = SalonSession(
        number=28,
        series="机器学习开发者沙龙",
        title="联邦学习",
        starts_at=now,
        ends_at=now,
        timezone="Asia/Shanghai",
        record={},
        updated_at=now,
    )
    db.add(salon)
    db.flush()
    db.add(RsvpEvent(session_id=salon.id, subscriber_id=old.id, answer="yes", at=now))
    db.commit()

    service.purge_subscriber(db, "fresh@example.org")
    db.commit()
    assert db.scalars(select(Subscriber).where(Subscriber.id == fresh_id)).first() is None
    assert db.execute(select(subscriber_tags)).all() == []
    assert db.scalars(select(Tag.name)).all() == ["zju"]  # the tag itself stays

    with pytest.raises(service.SubscriberHasHistory, match="deliveries or RSVPs"):
        service.purge_subscriber(db, "old@example.org")
    db.rollback()
    assert _status(db, "old@example.org")[0] == SubscriberStatus.active


def test_list_filters_pages_and_counts(db: Session) -> None:
    for index in range(7):
        tags = ["zju"] if index % 2 == 0 else ["cv"]
        service.add_subscriber(db, f"p{index}@example.org", tags=tags)
    service.remove_subscriber(db, "p0@example.org")
    db.commit()

    everyone = service.list_subscribers(db, limit=3)
    assert [p.email for p in everyone.items] == [f"p{i}@example.org" for i in range(3)]
    assert everyone.total == 7
    second = service.list_subscribers(db, limit=3, offset=3)
    assert [p.email for p in second.items] == [f"p{i}@example.org" for i in range(3, 6)]

    zju_active = service.list_subscribers(db, status="active", tag="ZJU")
    assert [p.email for p in zju_active.items] == [
        "p2@example.org",
        "p4@example.org",
        "p6@example.org",
    ]
    assert service.list_subscribers(db, status=SubscriberStatus.unsubscribed).total == 1
    assert service.count_active(db) == 6
    assert service.count_active(db, tag="zju") == 3
    assert service.count_active(db, tag="nobody-has-this") == 0
    assert service.status_counts(db) == {
        "pending": 0,
        "active": 6,
        "unsubscribed": 1,
        "bounced": 0,
        "suppressed": 0,
        "erased": 0,
    }
    with pytest.raises(NewsletterError, match="unknown status"):
        service.list_subscribers(db, status="gone")
