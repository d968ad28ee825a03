"""The preference rules with a real relay, on SQLite and PostgreSQL: a pause and a dropped
topic stop new campaigns and deliveries already queued; unsubscribe and resubscribe and who
may not come back; the pause's dates; "send me my data" at most once a day."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Delivery, DeliveryStatus
from newsletter.campaigns.sending import send_batch
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from subscribers import preferences, repo
from subscribers.models import Subscriber, SubscriberMail, SubscriberStatus
from subscribers.preferences import PreferenceRefused
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_gdpr import live_settings, mailed, prepare, relay

__all__ = ["live_settings", "relay"]  # the fixtures


def _today(settings: Settings) -> date:
    return utcnow().astimezone(ZoneInfo(settings.timezone)).date()


def _save(settings: Settings, person: int, **changes: object) -> None:
    with session_scope(settings.database_url) as db:
        shown = preferences.load(db, settings, person)
        values: dict[str, object] = {
            "name": shown.name,
            "topics": [t.name for t in shown.topics if t.chosen],
            "paused_until": shown.paused_until,
        }
        values.update(changes)
        preferences.save(db, settings, person, **values)  # type: ignore[arg-type]


def _create(settings: Settings, **options: object) -> int:
    with session_scope(settings.database_url) as db:
        return campaigns.create_campaign(db, 61, past=True, **options).id  # type: ignore[arg-type]


def _send(settings: Settings, campaign_id: int) -> None:
    with session_scope(settings.database_url) as db:
        campaigns.start_campaign(db, campaign_id)
    while send_batch(settings, campaign_id).more:
        pass


def _statuses(settings: Settings, campaign_id: int) -> dict[int, str]:
    with session_scope(settings.database_url) as db:
        rows = db.execute(
            select(Delivery.subscriber_id, Delivery.status).where(
                Delivery.campaign_id == campaign_id
            )
        )
        return {row[0]: row[1] for row in rows}


@pytest.mark.smtp
def test_a_pause_skips_queued_deliveries_and_new_campaigns_until_lifted(
    live_settings: Settings, relay: SmtpServer
) -> None:
    p0, p1, p2 = prepare(live_settings)
    queued = _create(live_settings)  # all three queued before the pause
    _save(live_settings, p1, paused_until=_today(live_settings) + timedelta(days=10))
    while_paused = _create(live_settings)
    _send(live_settings, queued)
    assert mailed(relay) == ["p0@example.org", "p2@example.org"]
    assert _statuses(live_settings, queued) == {
        p0: DeliveryStatus.sent,
        p1: DeliveryStatus.skipped,
        p2: DeliveryStatus.sent,
    }
    assert set(_statuses(live_settings, while_paused)) == {p0, p2}  # not even queued
    with session_scope(live_settings.database_url) as db:
        skipped = db.scalars(
            select(Delivery).where(Delivery.campaign_id == queued, Delivery.subscriber_id == p1)
        ).one()
        assert skipped.last_error and "paused" in skipped.last_error
    with session_scope(live_settings.database_url) as db:
        progress = campaigns.progress(db, queued)
        assert (progress.sent, progress.skipped) == (2, 1)
    _save(live_settings, p1, paused_until=None)  # lifted: the next campaign reaches them
    assert set(_statuses(live_settings, _create(live_settings))) == {p0, p1, p2}


@pytest.mark.smtp
def test_a_pause_ends_on_its_day(live_settings: Settings) -> None:
    _p0, p1, _ = prepare(live_settings)
    _save(live_settings, p1, paused_until=_today(live_settings) + timedelta(days=3))
    with session_scope(live_settings.database_url) as db:  # three days later
        db.execute(
            update(Subscriber)
            .where(Subscriber.id == p1)
            .values(paused_until=utcnow() - timedelta(minutes=1))
        )
    assert p1 in _statuses(live_settings, _create(live_settings))
    with session_scope(live_settings.database_url) as db:
        assert preferences.load(db, live_settings, p1).paused_until is None


@pytest.mark.smtp
def test_a_dropped_topic_stops_queued_deliveries_of_that_topics_campaign(
    live_settings: Settings, relay: SmtpServer
) -> None:
    _p0, p1, _p2 = prepare(live_settings)  # p1 has 读书会 and 编程马拉松, the others 读书会
    for_topic = _create(live_settings, tag="编程马拉松")
    for_everyone = _create(live_settings)
    assert set(_statuses(live_settings, for_topic)) == {p1}
    _save(live_settings, p1, topics=["读书会"])
    _send(live_settings, for_topic)
    assert _statuses(live_settings, for_topic) == {p1: DeliveryStatus.skipped}
    assert mailed(relay) == []
    _send(live_settings, for_everyone)  # other campaigns still reach them
    assert mailed(relay) == ["p0@example.org", "p1@example.org", "p2@example.org"]
    with session_scope(live_settings.database_url) as db:
        person = db.get(Subscriber, p1)
        assert person is not None and [t.name for t in person.tags] == ["读书会"]


@pytest.mark.smtp
def test_unsubscribe_stops_queued_mail_and_resubscribe_brings_it_back(
    live_settings: Settings, relay: SmtpServer
) -> None:
    _p0, _p1, p2 = prepare(live_settings)
    queued = _create(live_settings)
    with session_scope(live_settings.database_url) as db:
        assert preferences.leave(db, p2) is True
    with session_scope(live_settings.database_url) as db:
        assert preferences.leave(db, p2) is False  # idempotent
        shown = preferences.load(db, live_settings, p2)
        assert shown.status == "unsubscribed" and shown.can_resubscribe
    _send(live_settings, queued)
    assert mailed(relay) == ["p0@example.org", "p1@example.org"]
    with session_scope(live_settings.database_url) as db:
        assert preferences.come_back(db, p2) is True
    assert p2 in _statuses(live_settings, _create(live_settings))


@pytest.mark.smtp
@pytest.mark.parametrize(
    "status", [SubscriberStatus.bounced, SubscriberStatus.suppressed, SubscriberStatus.pending]
)
def test_who_may_not_come_back_from_the_page_is_told_why(
    live_settings: Settings, status: SubscriberStatus
) -> None:
    p0, *_ = prepare(live_settings)
    with session_scope(live_settings.database_url) as db:
        db.execute(update(Subscriber).where(Subscriber.id == p0).values(status=status.value))
    with session_scope(live_settings.database_url) as db:
        shown = preferences.load(db, live_settings, p0)
        assert not shown.can_resubscribe and shown.no_comeback
        with pytest.raises(PreferenceRefused) as refused:
            preferences.come_back(db, p0)
        assert str(refused.value) == shown.no_comeback
    with session_scope(live_settings.database_url) as db:
        assert db.get(Subscriber, p0).status == status.value  # type: ignore[union-attr]


@pytest.mark.smtp
def test_pause_dates_are_checked(live_settings: Settings) -> None:
    p0, *_ = prepare(live_settings)
    today = _today(live_settings)
    for day, message in [
        (today, "晚于今天"),
        (today - timedelta(days=30), "晚于今天"),
        (today + timedelta(days=preferences.MAX_PAUSE_DAYS + 1), "最多可以暂停"),
    ]:
        with pytest.raises(PreferenceRefused, match=message):
            _save(live_settings, p0, paused_until=day)
    _save(live_settings, p0, paused_until=today + timedelta(days=preferences.MAX_PAUSE_DAYS))
    with session_scope(live_settings.database_url) as db:
        person = db.get(Subscriber, p0)
        assert person is not None and person.paused_until is not None
        # Mail resumes at the start of the chosen day in the club's zone.
        local = person.paused_until.astimezone(ZoneInfo(live_settings.timezone))
        assert (local.date(), local.hour, local.minute) == (
            today + timedelta(days=preferences.MAX_PAUSE_DAYS),
            0,
            0,
        )


def test_topics_not_offered_are_left_alone(configure: Configure, db_url: str) -> None:
    settings = configure(database_url=db_url, topics="读书会,编程马拉松")
    p0, *_ = prepare(settings)
    with session_scope(settings.database_url) as db:
        ids = repo.ensure_tags(db, ["vip"])
        repo.link_tags(db, [(p0, ids["vip"])])
    with session_scope(settings.database_url) as db:
        shown = preferences.load(db, settings, p0)
        assert [(t.name, t.chosen) for t in shown.topics] == [
            ("读书会", True),
            ("编程马拉松", False),
        ]
    _save(settings, p0, topics=["编程马拉松", "vip-forged", "vip"])
    with session_scope(settings.database_url) as db:
        person = db.get(Subscriber, p0)
        assert person is not None
        assert sorted(t.name for t in person.tags) == ["vip", "编程马拉松"]


@pytest.mark.smtp
def test_names_that_would_break_a_header_are_refused(live_settings: Settings) -> None:
    p0, *_ = prepare(live_settings)
    with pytest.raises(PreferenceRefused, match="换行"):
        _save(live_settings, p0, name="Ann\r\nBcc: x@example.org")
    _save(live_settings, p0, name="  Ann   O'Neil ")
    with session_scope(live_settings.database_url) as db:
        assert db.get(Subscriber, p0).name == "Ann O'Neil"  # type: ignore[union-attr]


@pytest.mark.smtp
def test_send_me_my_data_at_most_once_a_day(live_settings: Settings) -> None:
    p0, p1, _ = prepare(live_settings)
    with session_scope(live_settings.database_url) as db:
        assert preferences.ask_for_export(db, p0) is True
    with session_scope(live_settings.database_url) as db:
        assert preferences.ask_for_export(db, p0) is False  # the same day
        assert preferences.ask_for_export(db, p1) is True  # per person
        assert preferences.load(db, live_settings, p0).export_asked_at is not None
    with session_scope(live_settings.database_url) as db:
        db.execute(
            update(SubscriberMail)
            .where(SubscriberMail.subscriber_id == p0)
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    with session_scope(live_settings.database_url) as db:
        assert preferences.ask_for_export(db, p0) is True  # a day later
        rows = db.scalars(select(SubscriberMail).where(SubscriberMail.subscriber_id == p0))
        assert [m.kind for m in rows] == ["export", "export"]
