"""Sign-up with double opt-in, the rules under the pages: what each address gets, one
confirmation mail through a real SMTP relay, confirming, one welcome ever, the daily limit,
expiry, erased addresses, and that pending people get nothing else (SQLite and PostgreSQL)."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Delivery
from newsletter.campaigns.sending import send_batch
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.tokens import Purpose, verify
from subscribers import repo
from subscribers.erased import is_erased, record_erasure
from subscribers.models import (
    Subscriber,
    SubscriberMail,
    SubscriberMailKind,
    SubscriberStatus,
)
from subscribers.service import suppress, unsubscribe
from subscribers.signup import MAX_CONFIRMS_PER_DAY, Confirmed, SignUp, confirm, sign_up
from tasks.subscribers import expire_pending_signups, send_subscriber_mails
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.webapp import seed

StartSmtp = Callable[..., SmtpServer]
CONFIRM_LINK = re.compile(r"https?://[^/\s]+(/subscribe/confirm/[A-Za-z0-9_.\-]+)")


# --- helpers shared by the sign-up test modules ------------------------------------------------


def messages(relay: SmtpServer, to: str | None = None) -> list[EmailMessage]:
    """What the relay accepted (for ``to`` only, when given), oldest first."""
    found = []
    for received in relay.handler.received:
        if to is None or to in received.rcpt_tos:
            parsed = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found.append(parsed)
    return found


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def confirm_path(message: EmailMessage) -> str:
    """The confirm link's path in a confirmation mail (text and HTML parts agree)."""
    text_links = CONFIRM_LINK.findall(text_of(message))
    html = message.get_body(("html",))
    assert html is not None
    html_links = CONFIRM_LINK.findall(str(html.get_content()))
    assert len(set(text_links)) == 1 and set(text_links) == set(html_links)
    return str(text_links[0])


def kinds_of(url: str, subscriber_id: int) -> list[str]:
    with session_scope(url) as db:
        return list(
            db.scalars(
                select(SubscriberMail.kind)
                .where(SubscriberMail.subscriber_id == subscriber_id)
                .order_by(SubscriberMail.id)
            )
        )


def person(url: str, address: str) -> Subscriber | None:
    with session_scope(url) as db:
        found = repo.get_by_email(db, address)
        if found is not None:
            db.expunge(found)
        return found


def add_person(url: str, address: str, status: SubscriberStatus) -> int:
    with session_scope(url) as db:
        row = Subscriber(email=address, name="", status=status, created_at=utcnow())
        db.add(row)
        db.flush()
        return row.id


def do_sign_up(
    settings: Settings, address: str, name: str = "", topics: list[str] | None = None
) -> SignUp:
    with session_scope(settings.database_url) as db:
        return sign_up(db, settings, address, name, topics or [])


def press(settings: Settings, path: str) -> Confirmed:
    """What the confirm page's button does, for the ids of a link."""
    ids = verify(Purpose.CONFIRM, path.rsplit("/", 1)[1], settings.secret_keys)
    with session_scope(settings.database_url) as db:
        return confirm(db, settings, ids["u"], ids["m"])


@pytest.fixture
def relay_settings(
    db_url: str, configure: Configure, start_smtp: StartSmtp
) -> tuple[Settings, SmtpServer]:
    relay = start_smtp()
    settings = configure(database_url=db_url, mail_url=f"smtp://127.0.0.1:{relay.port}")
    return settings, relay


# --- tests -------------------------------------------------------------------------------------


def test_one_confirmation_then_active_and_one_welcome_naming_the_next_session(
    relay_settings: tuple[Settings, SmtpServer], tmp_path: Path
) -> None:
    settings, relay = relay_settings
    seed(settings, tmp_path, people=0)  # session no. 95, a week ahead
    with session_scope(settings.database_url) as db:
        repo.ensure_tags(db, ["nlp", "cv"])
    done = do_sign_up(settings, "New.Person@Example.org", "新朋友", ["nlp", "not-offered"])
    assert done.queued
    send_subscriber_mails()
    address = "new.person@example.org"
    mails = messages(relay, address)
    assert len(mails) == 1
    path = confirm_path(mails[0])
    assert "example.org" not in path and "new.person" not in path  # ids only
    joined = person(settings.database_url, address)
    assert joined is not None
    assert (joined.status, joined.source, joined.confirmed_at) == ("pending", "signup", None)
    assert [tag.name for tag in joined.tags] == ["nlp"]

    assert press(settings, path) is Confirmed.confirmed
    send_subscriber_mails()
    confirmed = person(settings.database_url, address)
    assert confirmed is not None and confirmed.status == SubscriberStatus.active
    assert confirmed.confirmed_at is not None and confirmed.welcomed_at is not None
    mails = messages(relay, address)
    assert len(mails) == 2
    welcome = text_of(mails[1])
    assert "第 95 期" in welcome and "/rsvp/" in welcome and "新朋友" in welcome

    # Again: signing up while active sends nothing, the button again changes nothing.
    assert not do_sign_up(settings, address).queued
    assert press(settings, path) is Confirmed.already
    send_subscriber_mails()
    assert len(messages(relay, address)) == 2
    assert kinds_of(settings.database_url, confirmed.id) == ["confirm", "welcome"]


def test_welcome_says_when_no_session_is_scheduled(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    do_sign_up(settings, "alone@example.org")
    send_subscriber_mails()
    press(settings, confirm_path(messages(relay)[0]))
    send_subscriber_mails()
    welcome = text_of(messages(relay)[1])
    assert "目前还没有安排下一期沙龙" in welcome and "/rsvp/" not in welcome


def test_two_confirmations_of_two_mails_give_one_welcome(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    do_sign_up(settings, "twice@example.org")
    do_sign_up(settings, "twice@example.org")  # still pending: a second confirmation mail
    send_subscriber_mails()
    first, second = (confirm_path(m) for m in messages(relay))
    assert first != second
    assert press(settings, second) is Confirmed.confirmed
    assert press(settings, first) is Confirmed.already
    send_subscriber_mails()
    found = person(settings.database_url, "twice@example.org")
    assert found is not None
    assert kinds_of(settings.database_url, found.id) == ["confirm", "confirm", "welcome"]
    assert len(messages(relay)) == 3


@pytest.mark.parametrize(
    ("status", "queued"),
    [
        (SubscriberStatus.pending, True),
        (SubscriberStatus.unsubscribed, True),
        (SubscriberStatus.active, False),
        (SubscriberStatus.bounced, False),
        (SubscriberStatus.suppressed, False),
    ],
)
def test_what_a_sign_up_of_a_known_address_does(
    db_url: str, configure: Configure, status: SubscriberStatus, queued: bool
) -> None:
    settings = configure(database_url=db_url)
    sid = add_person(db_url, "known@example.org", status)
    done = do_sign_up(settings, "KNOWN@example.org", "改名", [])
    assert (done.subscriber_id, done.queued) == (sid, queued)
    after = person(db_url, "known@example.org")
    assert after is not None and after.status == status  # a sign-up alone never changes it
    assert after.name == ("改名" if status is SubscriberStatus.pending else "")
    assert kinds_of(db_url, sid) == (["confirm"] if queued else [])


def test_an_unsubscribed_person_comes_back_by_confirming_and_a_bounce_meanwhile_wins(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    back = add_person(settings.database_url, "back@example.org", SubscriberStatus.active)
    gone = add_person(settings.database_url, "gone@example.org", SubscriberStatus.active)
    with session_scope(settings.database_url) as db:
        unsubscribe(db, back, "test")
        unsubscribe(db, gone, "test")
    do_sign_up(settings, "back@example.org")
    do_sign_up(settings, "gone@example.org")
    send_subscriber_mails()
    assert press(settings, confirm_path(messages(relay, "back@example.org")[0])) is (
        Confirmed.confirmed
    )
    with session_scope(settings.database_url) as db:
        suppress(db, subscriber_id=gone, status=SubscriberStatus.bounced, reason="5.1.1")
    assert press(settings, confirm_path(messages(relay, "gone@example.org")[0])) is (
        Confirmed.refused
    )
    assert person(settings.database_url, "back@example.org").status == "active"  # type: ignore[union-attr]
    assert person(settings.database_url, "gone@example.org").status == "bounced"  # type: ignore[union-attr]


def test_a_confirmation_is_not_sent_to_someone_suppressed_before_it_went_out(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    done = do_sign_up(settings, "late@example.org")
    with session_scope(settings.database_url) as db:
        suppress(db, subscriber_id=done.subscriber_id, reason="organizer")
    send_subscriber_mails()
    assert messages(relay) == []
    with session_scope(settings.database_url) as db:
        row = db.scalars(select(SubscriberMail)).one()
        assert (row.due_at, row.sent_at, row.error) == (
            None,
            None,
            "not sent: subscriber suppressed",
        )


def test_at_most_three_confirmations_per_address_a_day(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    results = [do_sign_up(settings, "many@example.org").queued for _ in range(5)]
    assert results == [True] * MAX_CONFIRMS_PER_DAY + [False, False]
    send_subscriber_mails()
    assert len(messages(relay)) == MAX_CONFIRMS_PER_DAY
    with session_scope(settings.database_url) as db:  # a day later the count starts again
        db.execute(
            update(SubscriberMail).values(created_at=utcnow() - timedelta(hours=24, minutes=1))
        )
    again = [do_sign_up(settings, "many@example.org").queued for _ in range(4)]
    assert again == [True] * MAX_CONFIRMS_PER_DAY + [False]
    assert do_sign_up(settings, "other@example.org").queued  # a count per address


def test_unconfirmed_sign_ups_are_deleted_after_the_pending_days(
    db_url: str, configure: Configure
) -> None:
    settings = configure(database_url=db_url, pending_days="7")
    old = do_sign_up(settings, "old@example.org", topics=[]).subscriber_id
    renewed = do_sign_up(settings, "renewed@example.org").subscriber_id
    fresh = do_sign_up(settings, "fresh@example.org").subscriber_id
    quit_ = add_person(db_url, "quit@example.org", SubscriberStatus.unsubscribed)
    eight_days = utcnow() - timedelta(days=8)
    with session_scope(db_url) as db:
        for sid in (old, renewed, quit_):
            db.execute(update(Subscriber).where(Subscriber.id == sid).values(created_at=eight_days))
        db.execute(
            update(SubscriberMail)
            .where(SubscriberMail.subscriber_id == old)
            .values(created_at=eight_days)
        )
    # renewed signed up 8 days ago and again today: today's mail keeps its link alive
    expire_pending_signups()
    assert person(db_url, "old@example.org") is None
    assert kinds_of(db_url, old) == []  # its outbox rows went with it
    for address in ("renewed@example.org", "fresh@example.org", "quit@example.org"):
        assert person(db_url, address) is not None, address
    assert fresh and renewed


def test_an_erased_address_can_sign_up_again_and_confirming_lifts_the_erasure(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    with session_scope(settings.database_url) as db:
        record_erasure(db, "erased@example.org", settings.secret_keys)
    assert do_sign_up(settings, "erased@example.org").queued
    send_subscriber_mails()
    with session_scope(settings.database_url) as db:
        assert is_erased(db, "erased@example.org", settings.secret_keys)  # not before confirming
    assert press(settings, confirm_path(messages(relay)[0])) is Confirmed.confirmed
    with session_scope(settings.database_url) as db:
        assert not is_erased(db, "erased@example.org", settings.secret_keys)


def test_a_pending_person_is_not_a_campaign_recipient(
    db_url: str, configure: Configure, tmp_path: Path
) -> None:
    settings = configure(database_url=db_url, mail_url="memory://pending-skipped")
    seed(settings, tmp_path, people=1)
    pending = do_sign_up(settings, "pending@example.org").subscriber_id
    with session_scope(db_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
        campaigns.start_campaign(db, campaign_id)
    send_batch(settings, campaign_id)
    with session_scope(db_url) as db:
        recipients = set(db.scalars(select(Delivery.subscriber_id)))
        assert pending not in recipients and len(recipients) == 1
        assert db.scalar(select(func.count()).select_from(Delivery)) == 1


def test_temporary_refusal_waits_for_a_retry_and_a_permanent_one_is_given_up(
    relay_settings: tuple[Settings, SmtpServer],
) -> None:
    settings, relay = relay_settings
    relay.handler.refuse_rcpt["busy@example.org"] = "451 4.3.0 try later"
    relay.handler.refuse_rcpt["nobody@example.org"] = "550 5.1.1 no such user"
    busy = do_sign_up(settings, "busy@example.org").subscriber_id
    nobody = do_sign_up(settings, "nobody@example.org").subscriber_id
    send_subscriber_mails()
    with session_scope(settings.database_url) as db:
        rows = {r.subscriber_id: r for r in db.scalars(select(SubscriberMail))}
        retry_at = rows[busy].due_at
        assert retry_at is not None and retry_at > utcnow()
        assert rows[busy].attempts == 1 and "451" in (rows[busy].error or "")
        assert rows[nobody].due_at is None and rows[nobody].sent_at is None
        assert (rows[nobody].error or "").startswith("not sent:")
    relay.handler.refuse_rcpt.clear()
    with session_scope(settings.database_url) as db:  # the back-off is over
        db.execute(
            update(SubscriberMail)
            .where(SubscriberMail.subscriber_id == busy)
            .values(due_at=utcnow())
        )
    send_subscriber_mails()
    assert [m["To"] for m in messages(relay)] == ["busy@example.org"]
    with session_scope(settings.database_url) as db:
        row = db.scalars(select(SubscriberMail).where(SubscriberMail.subscriber_id == busy)).one()
        assert row.sent_at is not None and row.due_at is None and row.error is None
    assert kinds_of(settings.database_url, busy) == [SubscriberMailKind.confirm]


def test_sign_ups_of_one_address_at_once_send_at_most_three_confirmations(
    db_url: str, configure: Configure
) -> None:
    """Eight sign-ups of one new address in eight transactions at once: one person, three
    confirmation mails (the row lock makes them count one after the other)."""
    import threading

    settings = configure(database_url=db_url)
    barrier = threading.Barrier(8)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            outcomes.append(do_sign_up(settings, "rush@example.org").queued)
        except BaseException as exc:  # reported below, with the test's own assertion
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(outcomes) == [False] * 5 + [True] * 3
    found = person(db_url, "rush@example.org")
    assert found is not None
    assert kinds_of(db_url, found.id) == ["confirm"] * MAX_CONFIRMS_PER_DAY
