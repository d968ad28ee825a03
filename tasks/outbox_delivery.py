"""Sending a claimed batch of an outbox (RSVP notices, subscription mails) over one connection.

Both outboxes lease rows, build each mail from the rows as they are now, and hand a batch of
:class:`~newsletter.rsvp.outbox.PreparedNotice` here; what comes back is one
:class:`~newsletter.rsvp.outbox.Outcome` per mail for the outbox to record. A mail that was
not built (its reason says why) is settled as it is; a relay that cannot be reached at all
leaves every mail not yet handed over waiting for its next back-off step.
"""

from __future__ import annotations

import logging

from newsletter.config import Settings
from newsletter.errors import DeliveryError
from newsletter.mail.transports import Transport, transport_for
from newsletter.rsvp.outbox import Outcome, PreparedNotice, after_failure

log = logging.getLogger(__name__)


def deliver(batch: list[PreparedNotice], settings: Settings, *, what: str) -> list[Outcome]:
    """Send the built mails of ``batch`` and say what to record for every row of it.

    ``what`` names the outbox in log lines ("rsvp notice", "subscription mail").
    """
    outcomes = [Outcome(p.ids, error=p.reason) for p in batch if p.message is None]
    mails = [p for p in batch if p.message is not None]
    handed_over = 0
    try:
        with transport_for(settings) as transport:
            for mail in mails:
                outcomes.append(_send(transport, mail, what))
                handed_over += 1
    except DeliveryError as exc:  # no connection at all: every mail not yet sent waits
        log.warning("%ss: the mail relay is unavailable: %s", what, exc)
        outcomes += [after_failure(mail, exc) for mail in mails[handed_over:]]
    return outcomes


def _send(transport: Transport, mail: PreparedNotice, what: str) -> Outcome:
    assert mail.message is not None, "only built mails are sent"
    try:
        transport.send(mail.message)
    except DeliveryError as exc:
        log.warning("%s for subscriber %s: %s", what, mail.subscriber_id, exc)
        return after_failure(mail, exc)
    return Outcome(mail.ids)
