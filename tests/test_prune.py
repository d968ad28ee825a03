"""``newsletter campaign prune --older-than AGE``: the delivery rows of campaigns that ended
before the age go, in batches; the campaigns stay with their counts, shown "pruned"; campaigns
still sending are left alone; new deliveries never get a pruned delivery's id (its
Message-ID); the links in mails of a pruned campaign still work."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from newsletter.campaigns import prune as retention
from newsletter.campaigns import service
from newsletter.campaigns.models import Campaign, CampaignStatus, Delivery
from newsletter.cli import app as cli
from newsletter.db import session_scope, utcnow
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue
from tests.conftest import Configure
from tests.servers import free_port
from tests.test_campaign_counts import assert_counts_right, counted
from tests.webapp import Live, serve_live
from tests.worker import wait_for_worker


def prune(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["campaign", "prune", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def campaign(*args: str) -> Result:
    return CliRunner().invoke(cli, ["campaign", *args])


@pytest.fixture
def live(configure: Configure, db_url: str, tmp_path: Path) -> Iterator[Live]:
    """The web app on ``db_url`` (SQLite and PostgreSQL), three people, no seat limit."""
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", database_url=db_url)
    with serve_live(settings, tmp_path, people=3, capacity=None) as built:
        yield built


def _sent(live: Live) -> int:
    with session_scope(live.settings.database_url) as db:
        campaign_id = service.create_campaign(db, 95).id
    enqueue(start_campaign, campaign_id)
    wait_for_worker()
    return campaign_id


def _ids(live: Live, campaign_id: int) -> list[int]:
    with session_scope(live.settings.database_url) as db:
        return sorted(db.scalars(select(Delivery.id).where(Delivery.campaign_id == campaign_id)))


def _backdate(live: Live, campaign_id: int, **ago: timedelta) -> None:
    with session_scope(live.settings.database_url) as db:
        db.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values({name: utcnow() - age for name, age in ago.items()})
        )


def _mail(tmp_path: Path, delivery_id: int) -> email.message.EmailMessage:
    (path,) = (tmp_path / "var" / "outbox").glob(f"d{delivery_id}.*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_prune_removes_old_rows_keeps_counts_and_never_reuses_ids(
    live: Live, tmp_path: Path
) -> None:
    url = live.settings.database_url
    recent = _sent(live)
    with session_scope(url) as db:  # still sending, as if a worker were on it, and old
        going = service.create_campaign(db, 95).id
        service.start_campaign(db, going)
    old = _sent(live)  # the newest rows: the highest ids
    old_ids = _ids(live, old)
    assert len(old_ids) == 3 and old_ids[0] > max(_ids(live, going))
    _backdate(live, recent, finished_at=timedelta(days=10))
    _backdate(live, old, finished_at=timedelta(days=200))
    _backdate(live, going, created_at=timedelta(days=200))

    dry = prune("--older-than", "180d", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"campaign {old} (finished" in dry.stdout and "3 delivery rows" in dry.stdout
    assert "would remove 3 delivery rows of 1 campaigns" in dry.stdout
    assert f"campaign {going}: sending, not over: left alone" in dry.stderr
    assert _ids(live, old) == old_ids  # nothing changed

    done = prune("--older-than", "180d")
    assert done.exit_code == 0, done.output
    assert "removed 3 delivery rows of 1 campaigns" in done.stdout
    assert _ids(live, old) == [] and len(_ids(live, recent)) == len(_ids(live, going)) == 3
    assert counted(url, old)["sent"] == 0
    with session_scope(url) as db:
        kept = service.progress(db, old)
    assert (kept.status, kept.sent, kept.total) == (CampaignStatus.finished, 3, 3)
    assert kept.pruned_at is not None
    assert "finished, pruned; 3 sent" in campaign("status", str(old)).stdout
    assert "pruned" in campaign("list").stdout
    again = prune("--older-than", "180d")
    assert again.exit_code == 0 and "nothing to prune" in again.stdout

    # New deliveries never get a pruned one's id: its Message-ID (and VERP path) is taken.
    with session_scope(url) as db:
        newer = service.create_campaign(db, 95).id
    assert min(_ids(live, newer)) > max(old_ids)
    assert_counts_right(url, newer)

    # The links in a pruned campaign's mail carry no delivery id: they still work.
    message = _mail(tmp_path, old_ids[0])
    body = message.get_body(("plain",))
    assert body is not None
    rsvp = re.findall(r"https?://\S+/rsvp/\S+", body.get_content())[0]
    unsubscribe = re.findall(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))[0]
    assert live.client.get(urlsplit(rsvp).path + "?" + urlsplit(rsvp).query).status_code == 200
    assert live.client.get(urlsplit(unsubscribe).path).status_code == 200
    one_click = live.client.post(urlsplit(unsubscribe).path, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    api = httpx.get(
        f"{live.settings.base_url}/api/campaigns/{old}",
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert api.status_code == 200 and api.json()["sent"] == 3 and api.json()["pruned_at"]
    # The dashboard shows the kept counts and says the rows are gone.
    assert live.client.post("/admin/login", data={"token": "test-admin-token"}).status_code == 303
    for path in (f"/admin/campaigns/{old}", "/admin", "/admin/sessions/95"):
        page = live.client.get(path)
        assert page.status_code == 200 and "明细已清理" in page.text, path


def test_rows_go_in_batches_each_committed(live: Live) -> None:
    finished = _sent(live)
    batches: list[int] = []
    removed = retention.prune_campaign(
        live.settings.database_url, finished, on_batch=batches.append, batch_rows=2
    )
    assert (removed, batches) == (3, [2, 1])
    with session_scope(live.settings.database_url) as db:
        assert service.progress(db, finished).pruned_at is not None


@pytest.mark.parametrize("age", ["180", "-5d", "1y", "0d", "12 days", ""])
def test_a_bad_age_is_refused_in_one_line(configure: Configure, tmp_path: Path, age: str) -> None:
    configure(database_url=f"sqlite:///{tmp_path / 'prune.db'}")
    result = prune("--older-than", age)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "180d or 12h" in result.stderr


def test_ages_in_days_and_hours() -> None:
    assert retention.parse_age("180d") == timedelta(days=180)
    assert retention.parse_age("12h") == timedelta(hours=12)
    assert retention.parse_age("30D") == timedelta(days=30)
