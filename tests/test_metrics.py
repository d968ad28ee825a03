"""Prometheus /metrics over HTTP: the admin token or a separate address, and numbers that
match the database after a campaign and some answers."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from newsletter.campaigns import repo as campaigns_repo
from newsletter.campaigns import service as campaigns
from newsletter.db import session_scope
from subscribers.models import Subscriber, SubscriberStatus
from tests.conftest import Configure
from tests.servers import free_port
from tests.webapp import Live, form_token, live, newsletter_serve

__all__ = ["live"]

ADMIN = {"Authorization": "Bearer test-admin-token"}


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _answer(live: Live, person: int, answer: str) -> None:
    rsvp, _ = live.links(person)
    csrf = form_token(live.client.get(rsvp).text)
    assert live.client.post(rsvp, data={"answer": answer, "csrf": csrf}).status_code == 200


def test_metrics_need_the_admin_token(live: Live) -> None:
    assert live.client.get("/metrics").status_code == 401
    wrong = live.client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401


def _answers_timed(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    """Confirmed answers in the latency histogram (the process's, over every test so far)."""
    labels = (("method", "POST"), ("route", "/rsvp/{token}"), ("status", "200"))
    return samples.get(("newsletter_http_request_duration_seconds_count", labels), 0)


def test_metrics_count_a_campaign_and_the_answers(live: Live) -> None:
    before = _answers_timed(_samples(live.client.get("/metrics", headers=ADMIN).text))
    _answer(live, 0, "yes")  # the one seat
    _answer(live, 1, "yes")  # waitlisted
    _answer(live, 2, "no")
    with session_scope(live.settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    # The outcomes a worker records, through the same repo calls: one sent, one refused for
    # good (the address bounced), one still queued.
    first, second, _ = live.people
    with session_scope(live.settings.database_url) as db:
        claimed = {
            row.subscriber_id: row.delivery_id
            for row in campaigns_repo.claim_batch(db, campaign_id, worker="w", limit=2)
        }
        campaigns_repo.mark_sent(db, [claimed[first]], worker="w")
        campaigns_repo.mark_failed(
            db, [claimed[second]], "550 no such user", worker="w", answered=True
        )
        db.execute(
            update(Subscriber)
            .where(Subscriber.id == second)
            .values(status=SubscriberStatus.bounced)
        )
    response = live.client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    campaign = (("campaign", str(campaign_id)),)
    assert samples[("newsletter_messages_sent_total", campaign)] == 1
    assert samples[("newsletter_messages_failed_total", campaign)] == 1
    assert samples[("newsletter_messages_bounced_total", campaign)] == 1
    yes, no = ("answer", "yes"), ("answer", "no")
    assert samples[("newsletter_rsvp_answers", (yes, ("waitlisted", "false")))] == 1
    assert samples[("newsletter_rsvp_answers", (yes, ("waitlisted", "true")))] == 1
    assert samples[("newsletter_rsvp_answers", (no, ("waitlisted", "false")))] == 1
    assert samples[("newsletter_deliveries_waiting", (("state", "queued"),))] == 1
    assert samples[("newsletter_database_up", ())] == 1
    assert samples[("newsletter_rsvp_notices_pending", ())] >= 0  # the outbox, shown
    # Latency by route template: the three answers, and never a token in a label.
    assert _answers_timed(samples) - before == 3
    rsvp, _ = live.links(0)
    assert rsvp.rsplit("/", 1)[1] not in response.text


def test_a_metrics_address_serves_them_without_token_and_only_there(
    configure: Configure, tmp_path: Path
) -> None:
    metrics_port = free_port()
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{metrics_port}"
    )
    with newsletter_serve(settings, tmp_path, "--workers", "2"):
        for _ in range(5):
            assert httpx.get(f"{settings.base_url}/healthz").status_code == 200
        public = httpx.get(f"{settings.base_url}/metrics", headers=ADMIN)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert public.status_code == 404
    assert scraped.status_code == 200
    samples = _samples(scraped.text)
    assert samples[("newsletter_database_up", ())] == 1
    # Both worker processes' requests, summed through prometheus-client's multiprocess files.
    healthz = [
        value
        for (name, labels), value in samples.items()
        if name == "newsletter_http_request_duration_seconds_count"
        and ("route", "/healthz") in labels
    ]
    assert sum(healthz) >= 5
