"""Bounce and complaint rates of a campaign, and when they call for a warning.

The denominator is the campaign's **sent** deliveries (``Campaign.sent_count``: messages a
relay accepted; failed, skipped, unconfirmed and queued ones are left out), the numerators
the distinct deliveries that bounced for good and the abuse reports, as counted on the
campaign row by :mod:`newsletter.inbound.service`. The thresholds are the ones mailbox
providers publish for bulk senders: above 2 % bounces or 0.1 % complaints, deliverability
suffers (Gmail's and Yahoo's sender guidelines name 0.1 % and insist on staying below 0.3 %).
One home for the rule: the dashboard, ``newsletter campaign status`` and the API use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from newsletter.campaigns.models import Campaign

BOUNCE_WARNING = 0.02  # more than this share of sent mail bounced for good: warn
COMPLAINT_WARNING = 0.001  # more than this share of sent mail reported as abuse: warn


@dataclass(frozen=True, slots=True)
class ReturnedRates:
    """A campaign's returned-mail figures."""

    sent: int
    bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float | None:
        """Hard bounces per sent delivery; None before anything was sent."""
        return self.bounces / self.sent if self.sent else None

    @property
    def complaint_rate(self) -> float | None:
        """Abuse reports per sent delivery; None before anything was sent."""
        return self.complaints / self.sent if self.sent else None

    @property
    def bounce_warning(self) -> bool:
        """Whether the bounce rate is above :data:`BOUNCE_WARNING`."""
        rate = self.bounce_rate
        return rate is not None and rate > BOUNCE_WARNING

    @property
    def complaint_warning(self) -> bool:
        """Whether the complaint rate is above :data:`COMPLAINT_WARNING`."""
        rate = self.complaint_rate
        return rate is not None and rate > COMPLAINT_WARNING


def rates_of(campaign: Campaign) -> ReturnedRates:
    """The returned-mail figures of a campaign row already read (no query)."""
    return ReturnedRates(
        sent=campaign.sent_count or 0,
        bounces=campaign.bounce_count or 0,
        complaints=campaign.complaint_count or 0,
    )


def percent(rate: float | None) -> str:
    """A rate as people read it: ``2.5 %``, ``0.08 %``, ``-`` before anything was sent."""
    if rate is None:
        return "-"
    value = rate * 100
    return f"{value:.2f} %" if value < 1 else f"{value:.1f} %"
