"""What a returned message (or a provider's webhook event) says, before it is matched and applied.

Every way mail comes back ends as one :class:`Report`: ``newsletter inbound`` classifies a raw
message into one, the providers' webhook translates a JSON event into one, and
``newsletter.inbound.service`` matches it to a delivery and applies it, once per fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass

from newsletter.inbound.models import InboundKind


@dataclass(frozen=True, slots=True)
class Report:
    """The facts of one returned message that matching and applying need.

    Matching tries ``delivery_id`` (from the VERP return path), then ``message_id`` (of the
    original message we sent), then ``address`` (the failed or complaining recipient).
    """

    kind: InboundKind
    delivery_id: int | None = None
    message_id: str | None = None
    address: str | None = None
    status_code: str | None = None  # an enhanced status code such as "5.1.1"
    diagnostic: str | None = None  # the remote server's words, shortened
    unsubscribe_token: str | None = None  # for InboundKind.unsubscribe: the mailto's token
