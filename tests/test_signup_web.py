"""The sign-up pages over HTTP, on SQLite and PostgreSQL: one answer for every address, the
snippet's POST, the confirm link's GET changing nothing, bad and expired links, the per-client
limit, beat sending what nobody asked a sender for."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from itsdangerous.timed import TimestampSigner
from sqlalchemy import func, select

from newsletter.db import session_scope, utcnow
from newsletter.tokens import Purpose, sign
from newsletter.web import subscribe
from subscribers import mail_outbox
from subscribers.erased import record_erasure
from subscribers.models import Subscriber, SubscriberMail, SubscriberMailKind, SubscriberStatus
from subscribers.subscription_mails import confirm_payload
from tests.conftest import Configure, _empty_tables
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_signup import add_person, messages, person
from tests.webapp import Live, form_token, serve_live


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, configure: Configure, tmp_path: Path) -> Iterator[Live]:
    """The live app (three subscribers, session no. 95) on SQLite and on PostgreSQL."""
    base_url = f"http://127.0.0.1:{free_port()}"
    if request.param == "sqlite":
        settings = configure(base_url=base_url)
    else:
        url = str(request.getfixturevalue("postgres_url"))
        _empty_tables(url)
        settings = configure(
            base_url=base_url, database_url=url, mail_url=f"file://{tmp_path / 'outbox'}"
        )
    with serve_live(settings, tmp_path) as built:
        yield built


@pytest.fixture(autouse=True)
def _fresh_signup_throttle() -> Iterator[None]:
    subscribe.throttle.clear()
    yield
    subscribe.throttle.clear()


def post_form(live: Live, address: str, **extra: str) -> tuple[int, str]:
    token = form_token(live.client.get("/subscribe").text)
    response = live.client.post(
        "/subscribe", data={"email": address, "name": "某人", "csrf": token, **extra}
    )
    return response.status_code, response.text


def mails(live: Live) -> int:
    with session_scope(live.settings.database_url) as db:
        return int(db.scalar(select(func.count()).select_from(SubscriberMail)) or 0)


def test_the_answer_is_the_same_for_every_state_of_the_address(live: Live) -> None:
    url = live.settings.database_url
    for status in (
        SubscriberStatus.pending,
        SubscriberStatus.active,
        SubscriberStatus.unsubscribed,
        SubscriberStatus.bounced,
        SubscriberStatus.suppressed,
    ):
        add_person(url, f"{status.value}@example.org", status)
    with session_scope(url) as db:
        record_erasure(db, "erased@example.org", live.settings.secret_keys)
        limited = Subscriber(
            email="limit@example.org", status=SubscriberStatus.pending, created_at=utcnow()
        )
        db.add(limited)
        db.flush()
        db.add_all(
            SubscriberMail(subscriber_id=limited.id, kind="confirm", created_at=utcnow())
            for _ in range(3)
        )
    answers = {
        address: post_form(live, address)
        for address in (
            "brand-new@example.org",
            "pending@example.org",
            "active@example.org",
            "unsubscribed@example.org",
            "bounced@example.org",
            "suppressed@example.org",
            "erased@example.org",
            "limit@example.org",
            "w0@example.org",  # the fixture's active subscriber
        )
    }
    assert {status for status, _ in answers.values()} == {200}
    assert len({body for _, body in answers.values()}) == 1, "the page tells states apart"
    assert "请查收确认邮件" in answers["active@example.org"][1]
    # ... while what happened differs: confirmations for the new, pending, unsubscribed and
    # erased addresses only (the limited one has its three already).
    with session_scope(url) as db:
        queued = set(
            db.scalars(
                select(Subscriber.email)
                .join(SubscriberMail, SubscriberMail.subscriber_id == Subscriber.id)
                .where(SubscriberMail.kind == SubscriberMailKind.confirm)
                .group_by(Subscriber.email)
            )
        )
    assert queued == {
        "brand-new@example.org",
        "pending@example.org",
        "unsubscribed@example.org",
        "erased@example.org",
        "limit@example.org",
    }
    assert mails(live) == 4 + 3
    for address, kept in (("active@example.org", "active"), ("bounced@example.org", "bounced")):
        found = person(url, address)
        assert found is not None and found.status == kept


def test_a_post_without_our_form_token_records_nothing_and_offers_the_button(
    live: Live,
) -> None:
    """The snippet on another site: the filled-in form comes back with a token to press."""
    response = live.client.post(
        "/subscribe",
        data={"email": "from-elsewhere@example.org", "name": "<b>外站</b>", "topics": "x"},
        headers={"Origin": "https://other.example.net"},
    )
    assert response.status_code == 200
    assert "请核对下面的信息" in response.text
    assert 'value="from-elsewhere@example.org"' in response.text
    assert "&lt;b&gt;外站&lt;/b&gt;" in response.text  # autoescaped
    assert person(live.settings.database_url, "from-elsewhere@example.org") is None
    token = form_token(response.text)
    again = live.client.post(
        "/subscribe", data={"email": "from-elsewhere@example.org", "csrf": token}
    )
    assert "请查收确认邮件" in again.text
    assert person(live.settings.database_url, "from-elsewhere@example.org") is not None


def test_an_unusable_address_gets_the_form_again(live: Live) -> None:
    status, body = post_form(live, "not an address")
    assert status == 400 and "请填写有效的邮箱地址" in body
    status, body = post_form(live, "ok@example.org", name="x" * 300)
    assert status == 400 and "姓名" in body
    status, body = post_form(live, "ok@example.org", name="x" * 5000)
    assert status == 400 and "姓名" in body
    assert mails(live) == 0


def confirm_url(live: Live, subscriber_id: int, mail_id: int) -> str:
    token = sign(
        Purpose.CONFIRM,
        confirm_payload(subscriber_id=subscriber_id, mail_id=mail_id),
        live.settings.secret_keys,
    )
    return f"/subscribe/confirm/{token}"


def pending_with_mail(live: Live, address: str) -> tuple[int, int]:
    post_form(live, address)
    with session_scope(live.settings.database_url) as db:
        row = db.scalars(
            select(SubscriberMail)
            .join(Subscriber, Subscriber.id == SubscriberMail.subscriber_id)
            .where(Subscriber.email == address)
        ).one()
        return row.subscriber_id, row.id


def test_opening_the_confirm_link_changes_nothing_and_the_button_confirms(live: Live) -> None:
    sid, mail_id = pending_with_mail(live, "scanned@example.org")
    url = confirm_url(live, sid, mail_id)
    for _ in range(3):  # a mail scanner opens every link, more than once
        page = live.client.get(url)
        assert page.status_code == 200 and "确认订阅" in page.text
    assert person(live.settings.database_url, "scanned@example.org").status == "pending"  # type: ignore[union-attr]
    missing = live.client.post(url, data={})
    assert missing.status_code == 403
    done = live.client.post(url, data={"csrf": form_token(page.text)})
    assert done.status_code == 200 and "订阅成功" in done.text
    assert person(live.settings.database_url, "scanned@example.org").status == "active"  # type: ignore[union-attr]
    again = live.client.get(url)
    assert again.status_code == 200 and "你已经确认过订阅" in again.text


def test_bad_expired_and_stale_confirm_links_get_a_clear_page(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, mail_id = pending_with_mail(live, "links@example.org")
    good = confirm_url(live, sid, mail_id)
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for path in (tampered, "/subscribe/confirm/garbage", "/subscribe/confirm/" + "a" * 400):
        response = live.client.get(path)
        assert response.status_code == 400 and "这个确认链接无效" in response.text, path
        assert live.client.post(path, data={"csrf": "x"}).status_code == 400
    # Another purpose's token, with the very same ids, is not a confirm link.
    other = sign(Purpose.UNSUBSCRIBE, {"u": sid, "m": mail_id}, live.settings.secret_keys)
    assert live.client.get(f"/subscribe/confirm/{other}").status_code == 400
    # Signed longer ago than NEWSLETTER_PENDING_DAYS (7 by default): expired.
    signed_at = int(time.time()) - 8 * 24 * 3600
    with monkeypatch.context() as patched:
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: signed_at)
        expired = confirm_url(live, sid, mail_id)
    response = live.client.get(expired)
    assert response.status_code == 410 and "已过期" in response.text
    # A link to a confirmation mail that is not this person's, or to a deleted sign-up.
    assert live.client.get(confirm_url(live, live.people[0], mail_id)).status_code == 404
    assert live.client.get(confirm_url(live, sid, mail_id + 100)).status_code == 404
    assert person(live.settings.database_url, "links@example.org").status == "pending"  # type: ignore[union-attr]


def test_a_confirm_link_of_a_suppressed_address_confirms_nothing(live: Live) -> None:
    sid, mail_id = pending_with_mail(live, "blocked@example.org")
    url = confirm_url(live, sid, mail_id)
    csrf = form_token(live.client.get(url).text)
    from subscribers.service import suppress

    with session_scope(live.settings.database_url) as db:
        suppress(db, subscriber_id=sid, reason="organizer")
    assert live.client.get(url).status_code == 409
    response = live.client.post(url, data={"csrf": csrf})
    assert response.status_code == 409
    assert person(live.settings.database_url, "blocked@example.org").status == "suppressed"  # type: ignore[union-attr]


def test_one_client_may_sign_up_ten_times_an_hour(live: Live) -> None:
    for i in range(subscribe.MAX_PER_CLIENT):
        assert post_form(live, f"p{i}@example.org")[0] == 200
    token = form_token(live.client.get("/subscribe").text)
    refused = live.client.post("/subscribe", data={"email": "one-more@example.org", "csrf": token})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "请求过于频繁" in refused.text
    assert person(live.settings.database_url, "one-more@example.org") is None


def test_the_form_offers_the_configured_topics(live: Live, tmp_path: Path) -> None:
    from subscribers import repo

    with session_scope(live.settings.database_url) as db:
        repo.ensure_tags(db, ["nlp", "cv"])
    page = live.client.get("/subscribe").text
    assert re.findall(r'name="topics" value="([^"]+)"', page) == ["cv", "nlp"]
    post_form(live, "topical@example.org", topics="nlp")
    found = person(live.settings.database_url, "topical@example.org")
    assert found is not None and [t.name for t in found.tags] == ["nlp"]


def test_without_a_broker_the_web_process_sends_mails_nobody_asked_a_sender_for(
    configure: Configure, tmp_path: Path, start_smtp: Callable[..., SmtpServer]
) -> None:
    """A confirmation committed while the hand-over failed (a broker down, a crash) is sent by
    the web process's own beat (every 0.2 s here)."""
    relay = start_smtp()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        sweep_interval="0.2",
    )
    with serve_live(settings, tmp_path, people=0):
        sid = add_person(settings.database_url, "left@example.org", SubscriberStatus.pending)
        with session_scope(settings.database_url) as db:
            mail_outbox.queue(db, sid, SubscriberMailKind.confirm)  # and no send_soon()
        deadline = time.monotonic() + 60
        while not messages(relay, "left@example.org"):
            assert time.monotonic() < deadline, "beat never sent the confirmation"
            time.sleep(0.05)
    assert len(messages(relay, "left@example.org")) == 1
