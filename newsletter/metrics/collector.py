"""A Prometheus collector that reads the product's counts from the database at scrape time.

Every web process (and the separate metrics listener) reports the same numbers, since they
come from the one database: nothing is counted in memory, so nothing is lost on a restart.
When the database does not answer, the scrape still succeeds with
``newsletter_database_up 0`` instead of the counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.metrics import probes, repo
from newsletter.outages import is_unavailable

log = logging.getLogger(__name__)

# Celery's default queue: with the Redis transport, a list of that name.
CELERY_QUEUE = "celery"


class DatabaseCollector(Collector):
    """Messages by campaign and outcome, RSVP answers, queue depth; broker queue length."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        """The families, from one query each."""
        database_up = GaugeMetricFamily(
            "newsletter_database_up", "Whether the database answered this scrape (1) or not."
        )
        try:
            families = list(self._database_families())
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("metrics: the database did not answer: %s", type(error).__name__)
            database_up.add_metric([], 0)
            yield database_up
        else:
            database_up.add_metric([], 1)
            yield database_up
            yield from families
        if probes.is_redis(self._settings.broker_url):
            yield self._broker_queue()

    def _database_families(self) -> Iterator[Metric]:
        with session_scope(self._settings.database_url) as db:
            campaigns = repo.campaign_counts(db)
            answers = repo.answer_counts(db)
            queued, inflight = repo.queued_deliveries(db)
            notices = repo.pending_notices(db)
        by_outcome = {
            outcome: CounterMetricFamily(
                f"newsletter_messages_{outcome}",
                f"Messages of a campaign {outcome}"
                + (
                    " (a permanent refusal; counted in failed too)."
                    if outcome == "bounced"
                    else "."
                ),
                labels=["campaign"],
            )
            for outcome in ("sent", "failed", "bounced")
        }
        for counts in campaigns:
            label = [str(counts.campaign_id)]
            by_outcome["sent"].add_metric(label, counts.sent)
            by_outcome["failed"].add_metric(label, counts.failed)
            if counts.bounced is not None:
                by_outcome["bounced"].add_metric(label, counts.bounced)
        yield from by_outcome.values()
        rsvps = GaugeMetricFamily(
            "newsletter_rsvp_answers",
            "Current RSVP answers over every session, by answer and waitlist state.",
            labels=["answer", "waitlisted"],
        )
        for count in answers:
            rsvps.add_metric([count.answer, str(count.waitlisted).lower()], count.count)
        yield rsvps
        depth = GaugeMetricFamily(
            "newsletter_deliveries_waiting",
            "Deliveries not yet sent: queued, or claimed by a worker (inflight).",
            labels=["state"],
        )
        depth.add_metric(["queued"], queued)
        depth.add_metric(["inflight"], inflight)
        yield depth
        outbox = GaugeMetricFamily(
            "newsletter_rsvp_notices_pending",
            "RSVP confirmation and waitlist mails in the outbox, not yet sent nor given up.",
        )
        outbox.add_metric([], notices)
        yield outbox

    def _broker_queue(self) -> Metric:
        family = GaugeMetricFamily(
            "newsletter_broker_queue_length",
            "Tasks waiting in the broker's default queue (-1: the broker did not answer).",
        )
        try:
            family.add_metric([], probes.broker_queue_length(self._settings, CELERY_QUEUE))
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("metrics: the broker did not answer: %s", type(error).__name__)
            family.add_metric([], -1)
        return family
